"""cocotb benchmark of the top-k engine: cycles per run over a sweep of n and k/n.

Reads ``SPATTN_TOPK_SWEEP`` (a JSON list of [n, k] pairs) and writes one JSON line per pair to the
file named by ``SPATTN_BENCH_OUT``: the cycles from command to last index beat, averaged over a
few random score sets, with free-flowing streams. Every run is still checked against the golden
model, so a benchmark of a broken engine fails instead of printing numbers.
"""

import json
import os
import random

import cocotb

from spattn.sim.benches.topk_bench import SEED, random_scores, setup


@cocotb.test()
async def sweep(dut):
    bench, cfg, _ = await setup(dut)
    rng = random.Random(SEED)
    trials = int(os.environ.get("SPATTN_BENCH_TRIALS", "5"))
    with open(os.environ["SPATTN_BENCH_OUT"], "w") as out:
        for n, k in json.loads(os.environ["SPATTN_TOPK_SWEEP"]):
            cycles = []
            for _ in range(trials):
                bench.submit(n, k, random_scores(cfg, rng, n, "full"))
                await bench.drain(max_cycles=10 * cfg.score_bits * n + 1000)
                cycles.append(bench.finished[-1][2])
            out.write(json.dumps({"n": n, "k": k, "cycles": sum(cycles) / len(cycles),
                                  "max_cycles": max(cycles)}) + "\n")
