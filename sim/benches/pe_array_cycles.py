"""cocotb benchmark of the PE array: cycles, counters and utilization over a sweep of shapes and sparsity.

Reads ``SPATTN_PE_SWEEP`` (a JSON list of ``[m, k, n, sparsity]``) and writes one JSON line per
entry to the file named by ``SPATTN_BENCH_OUT``. A is uniform over the act format and the DynaTran
threshold is the magnitude quantile that prunes the asked fraction of it; B is uniform. Streams
never stall. Every run is still checked beat by beat against the golden model and its counters
against :func:`spattn.sim.golden.matmul.tile_stats`, so a benchmark of a broken array fails
instead of printing numbers.
"""

import json
import os
import random

import cocotb

from spattn.sim.benches.pe_array_bench import SEED, random_matrix, setup


def threshold_for(a, sparsity, cfg):
    """The smallest threshold that prunes at least ``sparsity`` of ``a`` (0 for dense)."""
    if sparsity <= 0:
        return 0
    magnitudes = sorted(abs(x) for row in a for x in row)
    index = min(len(magnitudes) - 1, int(sparsity * len(magnitudes)))
    return min(magnitudes[index], (1 << cfg.act_bits) - 1)


@cocotb.test()
async def sweep(dut):
    bench, cfg, _ = await setup(dut)
    rng = random.Random(SEED)
    with open(os.environ["SPATTN_BENCH_OUT"], "w") as out:
        for m, k, n, sparsity in json.loads(os.environ["SPATTN_PE_SWEEP"]):
            a, b = random_matrix(cfg, rng, m, k), random_matrix(cfg, rng, k, n)
            threshold = threshold_for(a, sparsity, cfg)
            bench.submit(a, b, threshold)
            await bench.drain(max_cycles=4 * m * k * n + 100_000)
            run = bench.finished[-1]
            pruned = sum(abs(x) < threshold for row in a for x in row) / (m * k)
            out.write(json.dumps({
                "m": m, "k": k, "n": n, "target_sparsity": sparsity, "sparsity": pruned,
                "threshold": threshold, "cycles": run["cycles"], "busy_cycles": run["busy_cycles"],
                "load_cycles": run["load_cycles"], "macs": run["macs"],
                "skipped_tiles": run["skipped_tiles"], "zero_tiles": run["stats"].zero_tiles,
                "mac_cycles": run["stats"].mac_cycles,
            }) + "\n")
