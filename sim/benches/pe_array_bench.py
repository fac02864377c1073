"""cocotb bench of the tiled PE array: every result beat and every counter against the golden model.

Driver -> monitor -> model -> in-order checker: runs are submitted as (A, B, threshold); the
sources drive the command, A-panel and B-panel streams (padding lanes filled with random values,
which the array must ignore), the sink takes result beats, and the checker compares each beat
with the next one the golden model (:func:`spattn.sim.golden.matmul.matmul_int`) predicts, in
order. At a run's last beat the counters are compared with :func:`tile_stats`.

Environment: ``SPATTN_MANIFEST`` (set by :func:`spattn.sim.runner.run_bench`) names the design;
``SPATTN_PE_RUNS`` is how many random runs the random test checks (default 60);
``SPATTN_PE_VECTORS`` optionally names an ``.npz`` of real MiniLM Q/K/V tensors
(:mod:`spattn.sim.vectors`) for the MiniLM test.
"""

import collections
import os
import random

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.triggers import Event, FallingEdge, RisingEdge

from spattn.config import ConfigError, check_matmul_run, pe_buffer_depths
from spattn.hw.pe_array import (PE_ARRAY_VARIANTS, a_beat_layout, b_beat_layout, matmul_command_layout,
                                result_layout)
from spattn.sim.benches.streams import CycleCounter, StreamSink, StreamSource, wait_for
from spattn.sim.golden.matmul import matmul_int, tile_stats
from spattn.sim.runner import load_manifest

SEED = int(os.environ.get("SPATTN_SEED", "20261125"))


class PEArrayBench:
    """Drives one PE array; ``submit`` queues runs, ``drain`` waits until all are checked."""

    def __init__(self, dut, cfg, params, rng, in_stall=0.0, out_stall=0.0):
        self.dut, self.cfg, self.params, self.rng = dut, cfg, params, rng
        Clock(dut.clk, 10, unit="ns").start()
        dut.rst.value = 0
        self.counter = CycleCounter(dut.clk)
        self.cmd = StreamSource(dut, "cmd", matmul_command_layout(cfg), dut.clk, self.counter,
                                in_stall, random.Random(rng.random()))
        self.a = StreamSource(dut, "a", a_beat_layout(cfg), dut.clk, self.counter,
                              in_stall, random.Random(rng.random()))
        self.b = StreamSource(dut, "b", b_beat_layout(cfg), dut.clk, self.counter,
                              in_stall, random.Random(rng.random()))
        self.result = StreamSink(dut, "result", result_layout(cfg), dut.clk, self.counter,
                                 self._check_beat, out_stall, random.Random(rng.random()))
        self.expected = collections.deque()    # per run: dict with its expected beats
        self.finished = []                     # per checked run: dict of shape, counters, cycles
        self.failures = []
        self.all_done = Event()
        self.all_done.set()

    def set_stalls(self, in_stall, out_stall):
        self.cmd.stall_probability = self.a.stall_probability = self.b.stall_probability = in_stall
        self.result.stall_probability = out_stall

    def _pad(self):
        return self.rng.randint(self.cfg.act_format.min, self.cfg.act_format.max)

    def submit(self, a, b, threshold):
        """Queue one run of ``A @ B`` (lists of lists of stored integers) with ``threshold``."""
        cfg, rows, cols = self.cfg, self.cfg.pe_rows, self.cfg.pe_cols
        m, k, n = len(a), len(b), len(b[0])
        check_matmul_run(cfg, m, k, n, threshold)
        golden = matmul_int(a, b, threshold, cfg, self.params["overflow"]).tolist()
        dataflow = self.params["dataflow"]
        stats = tile_stats(torch.tensor(a), n, threshold, cfg, self.params["k_tile"], dataflow)
        self.cmd.send({"m": m, "k": k, "n": n, "threshold": threshold})
        if dataflow == "output_stationary":       # row panels of A, column by column
            for m0 in range(0, m, rows):
                for j in range(k):
                    self.a.send([a[m0 + r][j] if m0 + r < m else self._pad() for r in range(rows)])
        else:                                      # column panels of A, row by row
            for k0 in range(0, k, rows):
                for i in range(m):
                    self.a.send([a[i][k0 + r] if k0 + r < k else self._pad() for r in range(rows)])
        for n0 in range(0, n, cols):
            for j in range(k):
                self.b.send([b[j][n0 + c] if n0 + c < n else self._pad() for c in range(cols)])

        def row(i, n0):
            return [golden[i][n0 + c] if n0 + c < n else 0 for c in range(cols)]
        if dataflow == "output_stationary":       # tile by tile, row panels outer
            beats = [row(m0 + r, n0) for m0 in range(0, m, rows) for n0 in range(0, n, cols)
                     for r in range(min(rows, m - m0))]
        else:                                      # column panel by column panel, every row
            beats = [row(i, n0) for n0 in range(0, n, cols) for i in range(m)]
        self.expected.append({"shape": (m, k, n), "threshold": threshold, "beats": collections.deque(beats),
                              "total": len(beats), "stats": stats,
                              "cmd_number": len(self.cmd.transfers) + len(self.cmd.queue) - 1})
        self.all_done.clear()

    def _fail(self, message):
        self.failures.append(message)
        self.all_done.set()

    def _check_beat(self, beat, cycle):
        if self.dut.rst.value == 1:
            return      # the synchronous reset overrides the handshake: not a transfer
        if not self.expected:
            return self._fail(f"cycle {cycle}: a result beat with no run outstanding")
        run = self.expected[0]
        what = f"run {run['shape']} threshold {run['threshold']}"
        index = run["total"] - len(run["beats"])
        want = run["beats"].popleft()
        got = [beat.data[c] for c in range(self.cfg.pe_cols)]
        if got != want:
            return self._fail(f"{what}: beat {index} is {got}, golden model says {want}")
        if bool(beat.last) != (not run["beats"]):
            return self._fail(f"{what}: beat {index} of {run['total']} has last={beat.last}")
        if run["beats"]:
            return
        stats = run["stats"]
        counters = {name: int(getattr(self.dut, name).value)
                    for name in ("skipped_tiles", "macs", "busy_cycles", "load_cycles")}
        if counters["skipped_tiles"] != stats.skipped_tiles or counters["macs"] != stats.macs:
            return self._fail(f"{what}: counters {counters}, golden model says {stats}")
        if counters["busy_cycles"] < stats.mac_cycles:
            return self._fail(f"{what}: {counters['busy_cycles']} busy cycles for {stats.mac_cycles} "
                              f"cycles of multiply-accumulate")
        self.expected.popleft()
        self.finished.append({"shape": run["shape"], "threshold": run["threshold"], "stats": stats,
                              "cycles": cycle - self.cmd.transfers[run["cmd_number"]], **counters})
        if not self.expected:
            self.all_done.set()

    async def drain(self, max_cycles=400_000):
        await wait_for(self.all_done, self.dut.clk, max_cycles, f"{len(self.expected)} outstanding runs")
        assert not self.failures, self.failures[0]

    async def reset(self, cycles=3):
        """Reset the DUT in the middle of whatever it does and forget all outstanding work."""
        await FallingEdge(self.dut.clk)
        self.dut.rst.value = 1
        for source in (self.cmd, self.a, self.b):
            source.clear()
        self.expected.clear()
        for _ in range(cycles):
            await RisingEdge(self.dut.clk)
        await FallingEdge(self.dut.clk)
        self.dut.rst.value = 0
        self.all_done.set()


def random_matrix(cfg, rng, rows, cols, kind="full"):
    fmt = cfg.act_format
    if kind == "full":
        return [[rng.randint(fmt.min, fmt.max) for _ in range(cols)] for _ in range(rows)]
    if kind == "extreme":
        return [[rng.choice([fmt.min, fmt.max, fmt.min + 1, -1, 0, 1]) for _ in range(cols)]
                for _ in range(rows)]
    if kind == "sparse":     # mostly small values, so a threshold prunes most of them
        return [[rng.randint(fmt.min, fmt.max) if rng.random() < 0.1 else rng.randint(-3, 3)
                 for _ in range(cols)] for _ in range(rows)]
    if kind == "blocks":     # whole row-panel columns of zeros, so tiles are skipped without a threshold
        live = [rng.random() < 0.4 for _ in range(cols)]
        return [[rng.randint(fmt.min, fmt.max) if live[j] else 0 for j in range(cols)] for _ in range(rows)]
    raise ValueError(kind)


def random_shape(cfg, rng):
    """``(m, k, n)`` within the buffers, often a multiple of the tile size, often not."""
    rows, cols, top = cfg.pe_rows, cfg.pe_cols, min(cfg.max_tokens, 40)
    while True:
        m = rng.choice([rows * rng.randint(1, 4), rng.randint(1, top)])
        n = rng.choice([cols * rng.randint(1, 4), rng.randint(1, top)])
        k = rng.choice([rng.randint(1, 8), rng.randint(1, top), cfg.pe_rows * rng.randint(1, 3)])
        try:
            check_matmul_run(cfg, m, k, n)
        except ConfigError:
            continue
        return m, k, n


def random_threshold(cfg, rng):
    fmt = cfg.act_format
    return rng.choice([0, 0, 1, 2, 4, rng.randint(0, fmt.max + 1), fmt.max, fmt.max + 2,
                       (1 << cfg.act_bits) - 1])


async def setup(dut, in_stall=0.0, out_stall=0.0, seed_offset=0):
    manifest, cfg = load_manifest()
    rng = random.Random(SEED + seed_offset)
    bench = PEArrayBench(dut, cfg, PE_ARRAY_VARIANTS[manifest["block"]], rng, in_stall, out_stall)
    await bench.reset()
    return bench, cfg, rng


@cocotb.test()
async def edge_cases(dut):
    """Tiny and largest shapes, extreme operands (overflow included), thresholds 0 and above all."""
    bench, cfg, rng = await setup(dut)
    fmt = cfg.act_format
    a_depth, b_depth = pe_buffer_depths(cfg)
    k_max = min(cfg.max_tokens, a_depth, b_depth)
    runs = [
        ([[fmt.min]], [[fmt.min]], 0), ([[fmt.max]], [[fmt.min]], 0), ([[5]], [[-7]], 6),
        ([[5]], [[-7]], 5),
        # k = max: min * min summed over k overflows a minimal accumulator.
        ([[fmt.min] * k_max], [[fmt.min]] * k_max, 0),
        ([[fmt.max] * k_max], [[fmt.min]] * k_max, 0),
        ([[fmt.min] * k_max] * cfg.pe_rows, [[fmt.min] * cfg.pe_cols] * k_max, 0),
    ]
    for threshold in (0, 1, fmt.max, fmt.max + 1, fmt.max + 2, (1 << cfg.act_bits) - 1):
        m, k, n = cfg.pe_rows + 1, 5, cfg.pe_cols + 1
        runs.append((random_matrix(cfg, rng, m, k, "extreme"), random_matrix(cfg, rng, k, n, "extreme"),
                     threshold))
    r, c = cfg.pe_rows, cfg.pe_cols
    for m, k, n in [(1, 1, 7), (7, 1, 1), (r, 1, c), (2 * r, 3, 2 * c), (1, k_max, 1)]:
        runs.append((random_matrix(cfg, rng, m, k), random_matrix(cfg, rng, k, n), 0))
    # Back-to-back use of one row: every other chunk of R columns keeps only the last row live, so
    # the weight-stationary schedule issues that row in two consecutive cycles.
    for m in (1, 2, 3, 5):
        k = min(4 * r, k_max)
        a = [[rng.randint(1, fmt.max) if (j // r) % 2 == 0 or i == m - 1 else 0 for j in range(k)]
             for i in range(m)]
        runs.append((a, random_matrix(cfg, rng, k, c + 1), 0))
    for stalls in [(0.0, 0.0), (0.5, 0.0), (0.0, 0.7), (0.4, 0.4)]:
        bench.set_stalls(*stalls)
        for a, b, threshold in runs:
            bench.submit(a, b, threshold)
        await bench.drain()


@cocotb.test()
async def random_runs(dut):
    """Random shapes, operands and thresholds under random valid gaps and back-pressure."""
    bench, cfg, rng = await setup(dut, seed_offset=1)
    target = int(os.environ.get("SPATTN_PE_RUNS", "60"))
    stall_levels = [0.0, 0.2, 0.6]
    while len(bench.finished) < target:
        bench.set_stalls(rng.choice(stall_levels), rng.choice(stall_levels))
        for _ in range(8):
            m, k, n = random_shape(cfg, rng)
            kind = rng.choice(["full", "extreme", "sparse", "blocks"])
            bench.submit(random_matrix(cfg, rng, m, k, kind), random_matrix(cfg, rng, k, n),
                         random_threshold(cfg, rng))
        await bench.drain()
    skipped = sum(run["skipped_tiles"] for run in bench.finished)
    dut._log.info("checked %d runs, %d result beats, %d tile passes skipped", len(bench.finished),
                  bench.result.beats, skipped)
    assert skipped > 0 and len(bench.finished) >= target


@cocotb.test()
async def skipping_saves_cycles(dut):
    """A threshold above every activation skips every tile; compute cycles then fall to the drain."""
    bench, cfg, rng = await setup(dut, seed_offset=2)
    rows, cols = cfg.pe_rows, cfg.pe_cols
    m, k, n = 2 * rows, min(16, cfg.max_tokens), 2 * cols
    a = [[x or 1 for x in row] for row in random_matrix(cfg, rng, m, k)]   # no zero: nothing skipped
    b = random_matrix(cfg, rng, k, n)
    for threshold in (0, (1 << cfg.act_bits) - 1):
        bench.submit(a, b, threshold)
        await bench.drain()
    dense, empty = bench.finished[-2], bench.finished[-1]
    tiles = (m // rows) * (n // cols)
    assert empty["macs"] == 0 and empty["skipped_tiles"] == empty["stats"].skipped_tiles > 0
    assert dense["macs"] == m * k * n and dense["skipped_tiles"] == 0
    # Dense: every column of k for every output tile, and little more (the documented throughput);
    # empty: only the rows of zero results, one per beat, and a cycle per k-chunk and column panel.
    assert dense["busy_cycles"] >= tiles * k
    if bench.params["dataflow"] == "output_stationary":
        bound = tiles * max(k, rows + 2) + rows + 6
    else:
        chunks, panels = -(-k // rows), n // cols
        bound = panels * (1 + chunks * max(m, rows)) + rows + m + 8
    assert dense["busy_cycles"] <= bound, (dense, bound)
    assert empty["busy_cycles"] <= tiles * (rows + 4) + 2 * -(-k // rows) + 8, empty


@cocotb.test()
async def reset_mid_run(dut):
    """A reset at any point of a run drops it cleanly; the next runs are correct."""
    bench, cfg, rng = await setup(dut, 0.2, 0.2, seed_offset=3)
    for delay in [0, 1, 2, 5, 9, 17, 30, 50, 80, 120]:
        m, k, n = random_shape(cfg, rng)
        bench.submit(random_matrix(cfg, rng, m, k), random_matrix(cfg, rng, k, n), random_threshold(cfg, rng))
        for _ in range(delay):
            await RisingEdge(dut.clk)
        await bench.reset(cycles=rng.randint(1, 4))
        for _ in range(3):
            m, k, n = random_shape(cfg, rng)
            bench.submit(random_matrix(cfg, rng, m, k, "sparse"), random_matrix(cfg, rng, k, n),
                         random_threshold(cfg, rng))
        await bench.drain()


@cocotb.test(skip="SPATTN_PE_VECTORS" not in os.environ)
async def minilm_tiles(dut):
    """Real MiniLM Q·Kᵀ of every head, dense and with a DynaTran threshold, under back-pressure.

    ``SPATTN_PE_VECTORS`` names an ``.npz`` of :mod:`spattn.sim.vectors` for this preset; a summary
    goes to ``SPATTN_PE_VECTORS_REPORT`` when set. The dense product must also equal the integer
    attention path's own ``q @ kᵀ`` (the sum its scores are scaled from).
    """
    import json

    import numpy as np

    from spattn.formats import dynatran_threshold_int

    bench, cfg, _ = await setup(dut, 0.2, 0.3, seed_offset=5)
    with np.load(os.environ["SPATTN_PE_VECTORS"]) as data:
        q, k = torch.from_numpy(data["q"]), torch.from_numpy(data["k"])
    heads, tokens, _ = q.shape
    threshold = dynatran_threshold_int(0.25, cfg.act_format)
    for h in range(heads):
        a, b = q[h], k[h].T
        assert torch.equal(matmul_int(a, b, 0, cfg, bench.params["overflow"]), a @ b)
        for t in (0, threshold):
            bench.submit(a.tolist(), b.tolist(), t)
    await bench.drain()
    summary = {"heads": heads, "tokens": tokens, "runs": len(bench.finished), "beats": bench.result.beats,
               "threshold": threshold,
               "pruned": float((q.abs() < threshold).double().mean()),
               "skipped_tiles": sum(run["skipped_tiles"] for run in bench.finished)}
    dut._log.info("MiniLM Q·Kᵀ: %s", summary)
    if "SPATTN_PE_VECTORS_REPORT" in os.environ:
        with open(os.environ["SPATTN_PE_VECTORS_REPORT"], "w") as out:
            json.dump(summary, out)
