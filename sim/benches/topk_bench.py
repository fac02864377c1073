"""cocotb bench of the top-k engine: every output beat compared with the golden model.

Driver -> monitor -> model -> in-order checker: runs are submitted as (n, k, scores); the sources
drive the command and score streams, the sink takes index beats, and the checker assembles each
run's indices and compares them with :func:`spattn.sim.golden.topk.topk_indices`, in order.

Environment: ``SPATTN_MANIFEST`` (set by :func:`spattn.sim.runner.run_bench`) names the design;
``SPATTN_TOPK_BEATS`` is how many output beats the random test must check (default 10000).
"""

import collections
import os
import random
import typing

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import Event, FallingEdge, RisingEdge

from spattn.hw.topk import TopKEngine, topk_command_layout, topk_indices_layout, topk_scores_layout
from spattn.sim.benches.streams import CycleCounter, StreamSink, StreamSource, wait_for
from spattn.sim.golden.topk import topk_indices
from spattn.sim.runner import load_manifest

SEED = int(os.environ.get("SPATTN_SEED", "20261125"))


class FinishedRun(typing.NamedTuple):
    """One checked run: ``cycles`` from its accepted command to its last index beat, and the bench's
    cycle numbers of three of its beats."""
    n: int
    k: int
    cycles: int
    ended: int                  # the last index beat's cycle
    first_beat: int             # the first index beat's cycle
    last_score: int | None      # the run's last score beat's cycle (None when n = 0)


class TopKBench:
    """Drives one top-k engine; ``submit`` queues runs, ``drain`` waits until all are checked."""

    def __init__(self, dut, cfg, rng, in_stall=0.0, out_stall=0.0):
        self.dut, self.cfg, self.rng = dut, cfg, rng
        Clock(dut.clk, 10, unit="ns").start()
        dut.rst.value = 0
        self.counter = CycleCounter(dut.clk)
        self.cmd = StreamSource(dut, "cmd", topk_command_layout(cfg), dut.clk, self.counter,
                                in_stall, random.Random(rng.random()))
        self.scores = StreamSource(dut, "scores", topk_scores_layout(cfg), dut.clk, self.counter,
                                   in_stall, random.Random(rng.random()))
        self.indices = StreamSink(dut, "indices", topk_indices_layout(cfg), dut.clk, self.counter,
                                  self._check_beat, out_stall, random.Random(rng.random()))
        self.expected = collections.deque()
        self.beats_sent = 0         # score beats submitted since the last reset
        self.beats_before = 0       # score transfers before the last reset
        self.collected = []
        self.first_beat = None      # cycle of the current run's first index beat
        self.finished = []          # a FinishedRun per run
        self.failures = []
        self.resetting = False
        self.all_done = Event()
        self.all_done.set()

    def set_stalls(self, in_stall, out_stall):
        self.cmd.stall_probability = self.scores.stall_probability = in_stall
        self.indices.stall_probability = out_stall

    def submit(self, n, k, scores, expected=None):
        """Queue one run; ``expected`` overrides the golden model (for out-of-range commands)."""
        lanes, fmt = self.cfg.topk_stream_lanes, self.cfg.score_format
        if expected is None:
            expected = topk_indices(scores, k, self.cfg)
        self.cmd.send({"n": n, "k": k})
        for start in range(0, n, lanes):
            beat = list(scores[start:start + lanes])
            # Lanes past n carry random scores: the engine must ignore them.
            self.scores.send(beat + [self.rng.randint(fmt.min, fmt.max) for _ in range(lanes - len(beat))])
            self.beats_sent += 1
        self.expected.append((n, k, expected, len(self.cmd.transfers) + len(self.cmd.queue) - 1,
                              self.beats_sent))
        self.all_done.clear()

    def _fail(self, message):
        self.failures.append(message)
        self.all_done.set()

    def _check_beat(self, beat, cycle):
        if self.resetting:
            return  # taken at the reset edge: it belongs to the run the reset aborts
        if not self.expected:
            return self._fail(f"cycle {cycle}: an index beat with no run outstanding")
        n, k, expected, cmd_number, beats_through = self.expected[0]
        count = beat.count
        if count > self.cfg.topk_comparators:
            return self._fail(f"n={n} k={k}: beat count {count} exceeds {self.cfg.topk_comparators} lanes")
        if count == 0 and not (beat.last and not expected and not self.collected):
            return self._fail(f"n={n} k={k}: an empty beat that is not the lone end beat of a run "
                              f"that keeps nothing")
        if self.first_beat is None:
            self.first_beat = cycle
        self.collected += [beat.index[lane] for lane in range(count)]
        if not beat.last:
            if len(self.collected) >= len(expected):
                self._fail(f"n={n} k={k}: {len(self.collected)} indices and still no last beat")
            return
        if self.collected != expected:
            return self._fail(f"n={n} k={k}: got {self.collected}, golden model says {expected}")
        taken = len(self.scores.transfers) - self.beats_before
        if taken < beats_through:
            return self._fail(f"n={n} k={k}: last index beat with {beats_through - taken} of the run's "
                              f"score beats not taken")
        self.expected.popleft()
        self.collected = []
        last_score = self.scores.transfers[self.beats_before + beats_through - 1] if n else None
        self.finished.append(FinishedRun(n, k, cycle - self.cmd.transfers[cmd_number], cycle,
                                         self.first_beat, last_score))
        self.first_beat = None
        if not self.expected:
            self.all_done.set()

    async def drain(self, max_cycles=200_000):
        await wait_for(self.all_done, self.dut.clk, max_cycles, f"{len(self.expected)} outstanding runs")
        assert not self.failures, self.failures[0]

    async def finish(self, quiet_cycles=64):
        """After the last run: no stray index beat follows, every input beat was taken, not busy."""
        await self.drain()
        for _ in range(quiet_cycles):
            await RisingEdge(self.dut.clk)
        assert not self.failures, self.failures[0]
        assert self.cmd.idle and self.scores.idle, "command or score beats left untaken"
        assert len(self.scores.transfers) - self.beats_before == self.beats_sent, "score beats unaccounted"
        assert self.dut.busy.value == 0, "busy after every run has ended"

    async def reset(self, cycles=3):
        """Reset the DUT in the middle of whatever it does and forget all outstanding work."""
        await FallingEdge(self.dut.clk)
        self.resetting = True
        self.dut.rst.value = 1
        self.cmd.clear()
        self.scores.clear()
        self.expected.clear()
        self.beats_sent = 0
        self.collected = []
        self.first_beat = None
        for _ in range(cycles):
            await RisingEdge(self.dut.clk)
        await FallingEdge(self.dut.clk)
        self.dut.rst.value = 0
        self.beats_before = len(self.scores.transfers)
        self.resetting = False
        self.all_done.set()


def random_scores(cfg, rng, n, kind):
    fmt = cfg.score_format
    if kind == "full":
        return [rng.randint(fmt.min, fmt.max) for _ in range(n)]
    if kind == "ties":       # a handful of distinct values: ties at the k-th value nearly always
        values = [rng.randint(fmt.min, fmt.max) for _ in range(rng.randint(1, 4))]
        return [rng.choice(values) for _ in range(n)]
    if kind == "narrow":
        centre = rng.randint(fmt.min + 8, fmt.max - 8)
        return [centre + rng.randint(-8, 8) for _ in range(n)]
    raise ValueError(kind)


def adversarial_cases(cfg, n):
    """Input orders and value patterns that stress the selection rounds."""
    fmt = cfg.score_format
    ladder = [0] + [1 << bit for bit in range(cfg.score_bits - 1)]   # each round splits off one value
    return {
        "sorted": sorted((i * 7919) % (fmt.max + 1) for i in range(n)),
        "reversed": sorted(((i * 7919) % (fmt.max + 1) for i in range(n)), reverse=True),
        "all_equal": [-5] * n,
        "all_max": [fmt.max] * n,
        "all_min": [fmt.min] * n,
        "min_max": [fmt.min if i % 2 else fmt.max for i in range(n)],
        "ladder": [ladder[i % len(ladder)] - (fmt.max + 1) // 2 * (i % 2) for i in range(n)],
        "ladder_sorted": sorted(ladder[i % len(ladder)] for i in range(n)),
    }


def edge_runs(cfg):
    """(n, k, scores) runs of every edge case named in the brief."""
    nmax, lanes = cfg.max_tokens, cfg.topk_stream_lanes
    runs = [(1, 0, [3]), (1, 1, [cfg.score_format.min]), (1, 1, [cfg.score_format.max])]
    for n in sorted({2, lanes - 1, lanes, lanes + 1, nmax - 1, nmax} - {0}):
        for name, scores in adversarial_cases(cfg, n).items():
            for k in sorted({0, 1, n // 2, n - 1, n} & set(range(n + 1))):
                runs.append((n, k, scores))
    ties = [5, 5, 9, 5, 9, 5, 1, 5] * (nmax // 8 + 1)
    for k in range(0, min(nmax, 12) + 1):
        runs.append((min(nmax, len(ties)), k, ties[:nmax]))
    return runs


async def setup(dut, in_stall=0.0, out_stall=0.0, seed_offset=0):
    _, cfg = load_manifest()
    rng = random.Random(SEED + seed_offset)
    bench = TopKBench(dut, cfg, rng, in_stall, out_stall)
    await bench.reset()
    return bench, cfg, rng


@cocotb.test()
async def edge_cases(dut):
    """Every edge case, first with free-flowing streams, then with heavy random stalls."""
    bench, cfg, _ = await setup(dut)
    for stalls in [(0.0, 0.0), (0.5, 0.0), (0.0, 0.6), (0.4, 0.4)]:
        bench.set_stalls(*stalls)
        for n, k, scores in edge_runs(cfg):
            bench.submit(n, k, scores)
        await bench.drain()
    await bench.finish()


@cocotb.test()
async def out_of_range_commands(dut):
    """``k > n`` is taken as ``n``; ``n = 0`` takes no scores and answers with the lone end beat."""
    bench, cfg, rng = await setup(dut, 0.3, 0.3, seed_offset=1)
    limit = (1 << cfg.count_bits) - 1
    for n in [1, 5, cfg.max_tokens]:
        scores = random_scores(cfg, rng, n, "ties")
        for k in [n + 1, limit]:
            if k <= limit:
                bench.submit(n, k, scores, expected=topk_indices(scores, n))
    bench.submit(0, 0, [], expected=[])
    bench.submit(0, 3, [], expected=[])
    bench.submit(4, 2, [1, 2, 3, 4])
    await bench.finish()


@cocotb.test()
async def random_runs(dut):
    """Random runs under random valid gaps and back-pressure, until enough beats are checked."""
    bench, cfg, rng = await setup(dut, seed_offset=2)
    target = int(os.environ.get("SPATTN_TOPK_BEATS", "10000"))
    stall_levels = [0.0, 0.2, 0.6]
    while bench.indices.beats < target:
        bench.set_stalls(rng.choice(stall_levels), rng.choice(stall_levels))
        for _ in range(16):
            n = rng.randint(1, cfg.max_tokens)
            k = rng.choice([rng.randint(0, n), n, 0, 1, n - 1 if n > 1 else 1])
            bench.submit(n, k, random_scores(cfg, rng, n, rng.choice(["full", "ties", "narrow"])))
        await bench.drain()
    await bench.finish()
    dut._log.info("checked %d runs, %d index beats", len(bench.finished), bench.indices.beats)
    assert bench.indices.beats >= target


@cocotb.test()
async def cycle_bound(dut):
    """Adversarial orders stay within the documented worst case, on the longest runs and on the
    longest that are ranked by all pairs."""
    bench, cfg, _ = await setup(dut, seed_offset=3)
    for n in sorted({cfg.max_tokens, TopKEngine.pair_tokens(cfg)} - {0}):
        for name, scores in adversarial_cases(cfg, n).items():
            for k in sorted({1, n // 10, n // 2, n - n // 10, n - 1, n} - {0}):
                bench.submit(n, k, scores)
                await bench.drain()
                cycles = bench.finished[-1].cycles
                bound = TopKEngine.worst_case_cycles(cfg, n)
                assert cycles <= bound, f"n={n} {name} k={k}: {cycles} cycles, over the bound {bound}"
    await bench.finish()


@cocotb.test()
async def reset_mid_run(dut):
    """A reset at any point of a run drops it cleanly; the next runs are correct."""
    bench, cfg, rng = await setup(dut, 0.2, 0.2, seed_offset=4)
    # Every other reset hits a run ranked by all pairs, where the engine has them.
    lengths = [cfg.max_tokens, TopKEngine.pair_tokens(cfg) or cfg.max_tokens]
    for number, delay in enumerate([0, 1, 2, 5, 9, 17, 30, 50, 80, 120, 3, 6]):
        n = lengths[number % 2]
        bench.submit(n, n // 3, random_scores(cfg, rng, n, "full"))
        for _ in range(delay):
            await RisingEdge(dut.clk)
        await bench.reset(cycles=rng.randint(1, 4))
        for _ in range(3):
            m = rng.randint(1, n)
            bench.submit(m, rng.randint(0, m), random_scores(cfg, rng, m, "ties"))
        await bench.drain()
    await bench.finish()
