"""cocotb bench of the attention core: every output beat, every memory request and every counter
against the golden model (:func:`spattn.sim.golden.attention_core.attention_head`).

Driver -> monitor -> model -> in-order checker, one head at a time: the bench computes the golden
head, loads Q, K, V into the memory model, sends the command (and the mask rows), and checks each
``probs`` and ``out`` beat against the next one the golden model predicts, in order. The memory
model behind ``mem_req``/``mem_resp`` takes requests under random back-pressure and answers each
after a random latency, strictly in request order, several in flight, with random valid gaps; it
records every request. When the last ``out`` beat is in and ``busy`` has fallen, the bench checks
that no plane row was requested twice, that the requested rows are the golden model's, that every
response was taken, and compares the counters with the golden model.

Environment: ``SPATTN_MANIFEST`` (set by :func:`spattn.sim.runner.run_bench`) names the design;
``SPATTN_ATTN_WORK`` bounds the heads the tests run, in cycles of one Q·Kᵀ pass
``n² · head_dim / (pe_rows · pe_cols)`` (default 2500: n up to 70 on ``default`` and ``minilm``,
25 on ``tiny``; ``spattn check --preset default`` then simulates for about five minutes, after a
Verilator build of about ten); ``SPATTN_ATTN_LARGEST_WORK`` (default twice that) bounds the one
largest random head (n = 100 on ``default``); ``SPATTN_ATTN_MAX_N`` caps ``n``
outright; ``SPATTN_ATTN_RANDOM_HEADS`` is how many heads of random size, data, flags and stalls
:func:`random_heads` adds (default 8); ``SPATTN_ATTN_SENTENCE`` picks the MiniLM sentence
(default 42, 63 tokens);
``SPATTN_ATTN_BENCH`` (JSON, see :func:`benchmark`) selects the benchmark, which writes one JSON
line per head to ``SPATTN_BENCH_OUT``.
"""

import collections
import functools
import json
import os
import random

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Event, FallingEdge, First, RisingEdge, Timer

from spattn.formats import (VALUE_KEEP_FRAC, AttentionFormats, dynatran_threshold_int, plane_row_bytes,
                            recompute_threshold_int, split_planes, value_keep_int)
from spattn.hw.attention import (PLANE_LSB, PLANE_MSB, TENSOR_K, TENSOR_Q, TENSOR_V,
                                 attention_command_layout, mask_layout, mask_request_layout,
                                 mem_request_layout, mem_response_layout, out_layout, probs_layout)
from spattn.sim.benches.streams import CycleCounter, StreamGroup, StreamSink, StreamSource
from spattn.sim.golden.attention_core import attention_head
from spattn.sim.golden.core_schedule import core_schedule, ideal_cycles
from spattn.sim.runner import load_manifest

SEED = int(os.environ.get("SPATTN_SEED", "20261125"))
TENSORS = {TENSOR_Q: "q", TENSOR_K: "k", TENSOR_V: "v"}
PLANES = {PLANE_MSB: "msb", PLANE_LSB: "lsb"}
FULL = 1 << VALUE_KEEP_FRAC
CLOCK_NS = 10
#: Cycles ``busy`` may stay high after the last ``out`` beat (the scheduler sees the block done).
BUSY_TAIL = 4
COUNTERS = ("busy_cycles", "bytes_fetched", "rows_recomputed", "pe_busy_cycles", "pe_macs")


class Stalls:
    """Random stall probabilities of every stream and the memory latency range, in one place.

    ``source``: valid gaps of ``cmd`` and ``mask``; ``sink``: back-pressure on ``probs`` and ``out``;
    ``mem_req``: back-pressure on requests; ``mem_resp``: valid gaps of responses; ``latency``:
    ``(low, high)`` cycles from a request to its response (uniform).
    """

    def __init__(self, source=0.0, sink=0.0, mem_req=0.0, mem_resp=0.0, latency=(0, 0)):
        self.source, self.sink, self.mem_req, self.mem_resp, self.latency = (
            source, sink, mem_req, mem_resp, tuple(latency))

    @classmethod
    def random(cls, rng, heavy=False):
        levels = [0.0, 0.2, 0.5, 0.7] if heavy else [0.0, 0.1, 0.3]
        high = rng.choice([20, 40] if heavy else [0, 5, 20])
        return cls(rng.choice(levels), rng.choice(levels), rng.choice(levels), rng.choice(levels),
                   (rng.randint(0, high // 2), high))

    def __repr__(self):
        return (f"stalls(source={self.source}, sink={self.sink}, mem_req={self.mem_req}, "
                f"mem_resp={self.mem_resp}, latency={self.latency[0]}..{self.latency[1]})")


class DelayedSource(StreamSource):
    """A stream source whose beats each wait for a cycle: ``send_at(cycle, value)`` offers ``value``
    no earlier than the falling edge after rising edge ``cycle``, and never before the beats queued
    earlier (first in, first out), with random valid gaps on top."""

    def send_at(self, cycle, value):
        self.queue.append((cycle, value))

    def _drive(self):
        if (self.current is None and self.queue and self.queue[0][0] <= self.counter.now
                and not self.stalls()):
            self.current = self.queue.popleft()[1]
            self.payload.value = self.layout.const(self.current).as_bits()
        valid = int(self.current is not None)
        if valid != self._valid:
            self.valid.value = self._valid = valid


class Memory:
    """The head's Q, K, V planes behind ``mem_req``/``mem_resp``: in-order responses after a random
    latency, pipelined; every request is recorded (``requests``: (tensor, plane, row, cycle))."""

    def __init__(self, bench, rng):
        dut, cfg, counter = bench.dut, bench.cfg, bench.counter
        self.bench, self.cfg, self.rng = bench, cfg, rng
        self.req = StreamSink(dut, "mem_req", mem_request_layout(cfg), dut.clk, counter, self._request,
                              0.0, random.Random(rng.random()), start=False)
        self.resp = DelayedSource(dut, "mem_resp", mem_response_layout(cfg), dut.clk, counter, 0.0,
                                  random.Random(rng.random()), start=False)
        self.latency = (0, 0)
        self.rows = {}
        self.requests = []
        self.zero_row = {"data": [0] * cfg.head_dim}

    def load(self, q, k, v):
        """Hold a new head's tensors (``(n, head_dim)`` stored integers) and forget old requests."""
        cfg = self.cfg
        widths = {"msb": cfg.act_msb_bits, "lsb": cfg.act_lsb_bits}
        self.rows = {}
        for name, tensor in (("q", q), ("k", k), ("v", v)):
            for plane, values in zip(("msb", "lsb"), split_planes(tensor, cfg.act_lsb_bits), strict=True):
                lanes = (values & ((1 << widths[plane]) - 1)).tolist()
                self.rows[name, plane] = [{"data": row} for row in lanes]
        self.requests = []

    def clear(self):
        self.resp.clear()

    def summary(self, limit=24):
        """The head's requests so far as ``tensor.plane[row]@cycle``, the first ``limit`` of them."""
        text = [f"{TENSORS.get(t, t)}.{PLANES.get(p, p)}[{row}]@{cycle}"
                for t, p, row, cycle in self.requests[:limit]]
        return "[" + " ".join(text) + (" ...]" if len(self.requests) > limit else "]")

    @property
    def idle(self):
        return self.resp.idle

    def _request(self, beat, cycle):
        if self.bench.dut.rst.value == 1:
            return      # the synchronous reset overrides the handshake: not a transfer
        tensor, plane, row = int(beat.tensor), int(beat.plane), int(beat.row)
        if self.bench.head is None:
            self.bench.fail(f"cycle {cycle}: memory request tensor={tensor} plane={plane} row={row} "
                            f"with no head running")
        self.requests.append((tensor, plane, row, cycle))
        key = (TENSORS.get(tensor), PLANES.get(plane))
        rows = self.rows.get(key)
        if rows is None or row >= len(rows):
            self.bench.fail(f"cycle {cycle}: memory request tensor={tensor} plane={plane} row={row} "
                            f"outside the head's Q, K, V planes (n={len(self.rows.get(('q', 'msb'), []))})")
            data = self.zero_row
        else:
            data = rows[row]
        self.resp.send_at(cycle + self.rng.randint(*self.latency), data)


class Head:
    """One head in flight: its description, golden result and the beats still expected.

    ``probs``: ``{(row, key): probability}`` of every probability the core must send (the keys
    ``0 .. n_keys - 1`` of the block in which the row is final, :func:`core_schedule`); ``out``:
    ``{row: (data, magnitude, full_precision)}``. Beats may come in any order of rows (the two
    streams are independent), but each ``(row, key)`` and each row exactly once.
    """

    def __init__(self, name, cfg, n, causal, mask, progressive, threshold, value_keep, dynatran, golden):
        self.name, self.n, self.golden = name, n, golden
        self.causal, self.mask = causal, mask
        self.progressive, self.threshold, self.value_keep, self.dynatran = (
            progressive, threshold, value_keep, dynatran)
        self.blocks, self.steps, self.macs = core_schedule(
            cfg, n, causal, progressive, golden.full_precision.tolist(), golden.kept.tolist())
        probs = golden.probs.tolist()
        self.probs = {}
        for block in self.blocks:
            for i in block.final:
                for j in range(block.n_keys):
                    self.probs[i, j] = probs[i][j]
        out, magnitude = golden.out.tolist(), golden.magnitude.tolist()
        full = golden.full_precision.tolist()
        self.out = {i: (out[i], int(magnitude[i]), int(bool(full[i]))) for i in range(n)}
        self.probs_total, self.out_total = len(self.probs), len(self.out)
        self.cmd_number = None
        self.mask_requested = []
        self.last_cycle = None
        self.done = Event()

    def describe(self):
        mask = "none" if self.mask is None else f"{int(self.mask.sum())} of {self.n * self.n} keys"
        return (f"{self.name}: n={self.n} causal={int(self.causal)} mask={mask} "
                f"progressive={int(self.progressive)} threshold={self.threshold} "
                f"value_keep={self.value_keep} dynatran={self.dynatran}")


class AttentionBench:
    """Drives one attention core; :meth:`run_head` runs and checks one head."""

    def __init__(self, dut, cfg, rng):
        self.dut, self.cfg, self.rng = dut, cfg, rng
        self.fmt = AttentionFormats.of(cfg)
        Clock(dut.clk, CLOCK_NS, unit="ns").start()
        dut.rst.value = 0
        self.counter = CycleCounter(dut.clk)
        clk = dut.clk
        self.cmd = StreamSource(dut, "cmd", attention_command_layout(cfg), clk, self.counter, 0.0,
                                random.Random(rng.random()), start=False)
        self.mask = StreamSource(dut, "mask", mask_layout(cfg), clk, self.counter, 0.0,
                                 random.Random(rng.random()), start=False)
        self.mask_req = StreamSink(dut, "mask_req", mask_request_layout(cfg), clk, self.counter,
                                   self._mask_request, 0.0, random.Random(rng.random()), start=False)
        self.memory = Memory(self, random.Random(rng.random()))
        self.probs = StreamSink(dut, "probs", probs_layout(cfg), clk, self.counter, self._probs_beat,
                                0.0, random.Random(rng.random()), start=False)
        self.out = StreamSink(dut, "out", out_layout(cfg), clk, self.counter, self._out_beat,
                              0.0, random.Random(rng.random()), start=False)
        # one coroutine for all six streams: a head takes many thousands of cycles
        StreamGroup(clk, [self.cmd, self.mask, self.mask_req, self.memory.req, self.memory.resp,
                          self.probs, self.out])
        self.head = None
        self.failures = []
        self.results = []     # per checked head: a dict of its figures

    # --- stimulus ------------------------------------------------------------------------------

    def set_stalls(self, stalls: Stalls):
        self.stalls = stalls
        self.cmd.stall_probability = self.mask.stall_probability = stalls.source
        self.mask_req.stall_probability = stalls.sink
        self.probs.stall_probability = self.out.stall_probability = stalls.sink
        self.memory.req.stall_probability = stalls.mem_req
        self.memory.resp.stall_probability = stalls.mem_resp
        self.memory.latency = stalls.latency

    def start_head(self, name, q, k, v, *, causal=False, mask=None, progressive=True, threshold=0,
                   value_keep=FULL, dynatran=0):
        """Queue one head (``q, k, v``: ``(n, head_dim)`` int64 stored integers; ``mask``: ``(n, n)``
        bool, True = key present, or None) and return its :class:`Head`."""
        cfg = self.cfg
        n = q.shape[0]
        assert not self.failures, self.failures[0]
        assert 1 <= n <= cfg.max_tokens and q.shape[1] == cfg.head_dim, (n, q.shape)
        golden = attention_head(cfg, q, k, v, causal=causal, mask=mask, progressive=progressive,
                                threshold=threshold, value_keep=value_keep, dynatran=dynatran)
        head = Head(f"{cfg.name} seed {SEED} {name}", cfg, n, causal, mask, progressive, threshold,
                    value_keep, dynatran, golden)
        self.memory.load(q, k, v)
        self.head = head
        self.cmd.send({"n": n, "causal": int(causal), "masked": int(mask is not None),
                       "progressive": int(progressive), "threshold": threshold, "value_keep": value_keep,
                       "dynatran": dynatran})
        head.cmd_number = len(self.cmd.transfers) + len(self.cmd.queue) - 1
        head.mask_rows = None if mask is None else [
            sum(1 << j for j, present in enumerate(row) if present) for row in mask.tolist()]
        return head

    def cycle_budget(self, n):
        """Cycles after which a head counts as hung: several times any sane schedule."""
        cfg = self.cfg
        r, c, d = cfg.pe_rows, cfg.pe_cols, cfg.head_dim
        qk = -(-n // r) * -(-n // c) * d
        pv = -(-n // r) * -(-d // c) * n
        beats = n * -(-n // c) + n
        memory = 6 * n * (self.stalls.latency[1] + 2)
        slack = 1 / (1 - max(self.stalls.source, self.stalls.sink, self.stalls.mem_req,
                             self.stalls.mem_resp))
        return int(6 * slack * (2 * qk + pv + beats + memory) + 2000)

    async def run_head(self, name, q, k, v, **flags):
        """Run one head to its end and check everything; returns its figures (a dict)."""
        head = self.start_head(name, q, k, v, **flags)
        await self.finish_head(head)
        return self.results[-1]

    async def finish_head(self, head):
        dut = self.dut
        budget = self.cycle_budget(head.n)
        await First(head.done.wait(), Timer(budget * CLOCK_NS, unit="ns"))
        assert not self.failures, self.failures[0]
        assert head.done.is_set(), (
            f"{head.describe()}: timed out after {budget} cycles with {len(head.probs)} of "
            f"{head.probs_total} probs and {len(head.out)} of {head.out_total} out beats missing; command "
            f"{'taken' if len(self.cmd.transfers) > head.cmd_number else 'not taken'}, "
            f"{len(head.mask_requested)} mask requests, "
            f"{len(self.mask.queue) + (self.mask.current is not None)} mask beats not taken, "
            f"{len(self.memory.requests)} memory requests {self.memory.summary()}, "
            f"{len(self.memory.resp.queue) + (self.memory.resp.current is not None)} responses not taken, "
            f"busy={dut.busy.value}")
        # busy falls once the last out beat is taken.
        for _ in range(8):
            await FallingEdge(dut.clk)
            if dut.busy.value == 0:
                break
        assert dut.busy.value == 0, f"{head.describe()}: busy still high 8 cycles after the last out beat"
        counters = {name: int(getattr(dut, name).value) for name in COUNTERS}
        await ClockCycles(dut.clk, 6)       # nothing more may come out
        assert not self.failures, self.failures[0]
        self.head = None
        self._check_head(head, counters)
        return self.results[-1]

    # --- checks --------------------------------------------------------------------------------

    def fail(self, message):
        self.failures.append(message)
        if self.head is not None:
            self.head.done.set()

    def _mask_request(self, beat, cycle):
        if self.dut.rst.value == 1:
            return
        head, row = self.head, int(beat.row)
        if head is None or head.mask_rows is None or row >= head.n:
            return self.fail(f"cycle {cycle}: a mask request for row {row}" +
                             (f" in {head.describe()}" if head else " with no head running"))
        head.mask_requested.append(row)
        self.mask.send({"keys": head.mask_rows[row]})

    def _probs_beat(self, beat, cycle):
        if self.dut.rst.value == 1:
            return
        head = self.head
        key = int(beat.key)
        if head is None:
            return self.fail(f"cycle {cycle}: a probs beat (key {key}) with no head running")
        rows = [int(beat.rows[r]) for r in range(self.cfg.pe_rows)]
        final = int(beat.final)
        for r in range(self.cfg.pe_rows):
            got = int(beat.data[r])
            if not final >> r & 1:
                if got != 0:
                    return self.fail(f"{head.describe()}: probs beat (cycle {cycle}) key {key} lane {r} "
                                     f"is not final but holds {got}")
                continue
            where = (rows[r], key)
            if where not in head.probs:
                return self.fail(f"{head.describe()}: probs beat (cycle {cycle}) has row {rows[r]} key "
                                 f"{key}, which the golden model does not expect (again, or never)")
            want = head.probs.pop(where)
            if got != want:
                return self.fail(f"{head.describe()}: probability of row {rows[r]} key {key} (cycle "
                                 f"{cycle}) is {got}; golden model says {want}")
        self._maybe_done(head, cycle)

    def _out_beat(self, beat, cycle):
        if self.dut.rst.value == 1:
            return
        head = self.head
        row = int(beat.row)
        if head is None or row not in head.out:
            return self.fail(f"cycle {cycle}: an out beat (row {row}) not expected (again, or never)"
                             + (f" in {head.describe()}" if head else ""))
        data, magnitude, full = want = head.out.pop(row)
        got = ([beat.data[c] for c in range(self.cfg.head_dim)], int(beat.magnitude),
               int(beat.full_precision))
        if got != want:
            return self.fail(f"{head.describe()}: out beat of row {row} (cycle {cycle}) is data={got[0]} "
                             f"magnitude={got[1]} full_precision={got[2]}; golden model says "
                             f"data={data} magnitude={magnitude} full_precision={full}")
        self._maybe_done(head, cycle)

    def _maybe_done(self, head, cycle):
        if not head.probs and not head.out:
            head.last_cycle = cycle
            head.done.set()

    def _check_head(self, head, counters):
        cfg, golden = self.cfg, head.golden
        what = head.describe()
        # memory requests: each plane row at most once, exactly the golden model's rows
        seen, fetched = set(), collections.defaultdict(set)
        for tensor, plane, row, cycle in self.memory.requests:
            key = (TENSORS[tensor], PLANES[plane], row)
            assert key not in seen, f"{what}: {key} requested twice (again at cycle {cycle})"
            seen.add(key)
            fetched[key[:2]].add(row)
        for key in sorted(set(fetched) | set(golden.fetched)):
            want = set(golden.fetched.get(key, ()))
            assert fetched.get(key, set()) == want, (
                f"{what}: {key[0]} {key[1]} rows requested {sorted(fetched.get(key, ()))}, golden model "
                f"fetches {sorted(want)} (missing {sorted(want - fetched.get(key, set()))}, extra "
                f"{sorted(fetched.get(key, set()) - want)})")
        assert self.memory.idle, f"{what}: {len(self.memory.resp.queue)} memory responses never taken"
        assert self.cmd.idle, f"{what}: the command was never taken"
        assert self.mask.idle, f"{what}: {len(self.mask.queue) + 1} mask beats never taken"
        mask_rows = sorted(head.mask_requested)
        want_rows = [] if head.mask is None else sorted(
            i for block in head.blocks for i in block.rows)
        assert mask_rows == want_rows, (
            f"{what}: mask rows requested {mask_rows}, the core's blocks compute {want_rows}")
        widths = {"msb": cfg.act_msb_bits, "lsb": cfg.act_lsb_bits}
        requested_bytes = sum(plane_row_bytes(cfg.head_dim, widths[PLANES[p]])
                              for _, p, _, _ in self.memory.requests)
        # counters
        assert requested_bytes == golden.bytes_fetched, (
            f"{what}: the requested rows make {requested_bytes} bytes, golden model says "
            f"{golden.bytes_fetched}")
        assert counters["bytes_fetched"] == golden.bytes_fetched, (
            f"{what}: bytes_fetched counter {counters['bytes_fetched']}, golden model "
            f"{golden.bytes_fetched}")
        assert counters["rows_recomputed"] == golden.rows_recomputed, (
            f"{what}: rows_recomputed counter {counters['rows_recomputed']}, golden model "
            f"{golden.rows_recomputed}")
        span = head.last_cycle - self.cmd.transfers[head.cmd_number]
        assert 0 <= counters["busy_cycles"] - span <= BUSY_TAIL, (
            f"{what}: busy_cycles counter {counters['busy_cycles']}, but {span} cycles from the command "
            f"to the last out beat")
        assert (counters["pe_busy_cycles"], counters["pe_macs"]) == (head.steps, head.macs), (
            f"{what}: pe_busy_cycles {counters['pe_busy_cycles']} and pe_macs {counters['pe_macs']}; the "
            f"core's schedule (golden) gives {head.steps} and {head.macs}")
        assert counters["pe_busy_cycles"] <= counters["busy_cycles"], (what, counters)
        self.results.append({
            "name": head.name, "n": head.n, "causal": head.causal, "masked": head.mask is not None,
            "progressive": head.progressive, "threshold": head.threshold, "value_keep": head.value_keep,
            "dynatran": head.dynatran,
            **counters, "requests": len(self.memory.requests), "probs_beats": head.probs_total,
            "out_beats": head.out_total, "cycles": span,
        })

    # --- reset ---------------------------------------------------------------------------------

    async def reset(self, cycles=3):
        """Reset the DUT in the middle of whatever it does and forget all outstanding work."""
        await FallingEdge(self.dut.clk)
        self.dut.rst.value = 1
        self.cmd.clear()
        self.mask.clear()
        self.memory.clear()
        self.head = None
        for _ in range(cycles):
            await RisingEdge(self.dut.clk)
        await FallingEdge(self.dut.clk)
        self.dut.rst.value = 0
        assert self.dut.busy.value == 0, "busy high after a reset"


# --- test data ------------------------------------------------------------------------------------

def work(cfg, n):
    """Cycles of one Q·Kᵀ pass over ``n`` tokens on the PE array (the size measure of a head)."""
    return n * n * cfg.head_dim / (cfg.pe_rows * cfg.pe_cols)


def fitting(cfg, budget):
    """The largest ``n`` (up to ``max_tokens`` and ``SPATTN_ATTN_MAX_N``) with ``work <= budget``."""
    n = min(cfg.max_tokens, int(os.environ.get("SPATTN_ATTN_MAX_N", cfg.max_tokens)))
    while n > 1 and work(cfg, n) > budget:
        n -= 1
    return n


def work_budget():
    return float(os.environ.get("SPATTN_ATTN_WORK", "2500"))


def sizes(cfg):
    """``(small, medium, big)`` head sizes for ``cfg``: several blocks and chunks, never a multiple
    of both; big is ``max_tokens`` unless the work budget (``SPATTN_ATTN_WORK``) caps it."""
    big = fitting(cfg, work_budget())
    tile = max(cfg.pe_rows, cfg.pe_cols)
    small = min(big, 2 * tile + 3)
    medium = min(big, max(3 * tile + 1, big // 2))
    return small, medium, big


def largest(cfg):
    """The size of the one largest head (in :func:`random_heads`): ``max_tokens`` unless
    ``SPATTN_ATTN_LARGEST_WORK`` (default twice ``SPATTN_ATTN_WORK``) caps it."""
    return fitting(cfg, float(os.environ.get("SPATTN_ATTN_LARGEST_WORK", 2 * work_budget())))


def random_qkv(cfg, seed, n, kind="full"):
    """Q, K, V ``(n, head_dim)`` stored integers. ``full``: uniform over the act range; ``extreme``:
    only the extreme values (saturating scores and outputs); ``small``: a narrow range (close scores,
    so low maximum probabilities and recomputed rows); ``flat``: every Q row and every K row equal
    (one score in each row: a flat distribution); ``zero``: Q = K = 0; ``peaked``: one key per
    head with a huge score against every query, the rest small."""
    fmt = cfg.act_format
    g = torch.Generator().manual_seed(seed)
    shape = (n, cfg.head_dim)

    def full():
        return fmt.random(shape, generator=g)

    if kind == "full":
        return full(), full(), full()
    if kind == "extreme":
        choice = torch.tensor([fmt.min, fmt.max, fmt.min + 1, fmt.max - 1])
        pick = [choice[torch.randint(0, 4, shape, generator=g)] for _ in range(3)]
        return tuple(pick)
    if kind == "small":
        return tuple(torch.randint(-3, 4, shape, generator=g) for _ in range(2)) + (full(),)
    if kind == "flat":
        q_row, k_row = fmt.random((1, cfg.head_dim), generator=g), fmt.random((1, cfg.head_dim), generator=g)
        return q_row.expand(shape).clone(), k_row.expand(shape).clone(), full()
    if kind == "zero":
        return torch.zeros(shape, dtype=torch.int64), torch.zeros(shape, dtype=torch.int64), full()
    if kind == "peaked":
        star = int(torch.randint(0, n, (1,), generator=g))
        q = torch.full(shape, fmt.max, dtype=torch.int64)
        k = torch.randint(-2, 3, shape, generator=g)
        k[star] = fmt.max
        return q, k, full()
    raise ValueError(kind)


def random_mask(n, rng, density, causal=False):
    """A random ``(n, n)`` static mask where every row keeps at least one key (with ``causal``,
    one key ``j <= i``)."""
    rows = []
    for i in range(n):
        row = [rng.random() < density for _ in range(n)]
        row[rng.randint(0, i if causal else n - 1)] = True
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool)


@functools.lru_cache(maxsize=8)
def minilm_qkv(cfg, sentence, layer):
    """Real all-MiniLM-L6-v2 Q, K, V of ``layer`` for evaluation sentence ``sentence``, quantized to
    the act format and shaped ``(heads, tokens, head_dim)`` for ``cfg``: the first ``max_tokens``
    tokens, ``heads`` heads and ``head_dim`` channels of each (the vectors of
    :mod:`spattn.sim.vectors`); a head wider than MiniLM's takes consecutive channels of the hidden
    vector instead (several MiniLM heads side by side)."""
    from spattn.sim.golden.bert import embed_tokens, finish_layer, float_attention, project_qkv
    from spattn.sim.golden.corpus import eval_sentences
    from spattn.sim.golden.minilm import load_minilm

    torch.set_num_threads(1)
    model = load_minilm()
    fmt = AttentionFormats.of(cfg)
    with torch.no_grad():
        # sentence -1: the whole corpus run together, cut to max_tokens (the longest head there is)
        text = " ".join(eval_sentences()) if sentence < 0 else eval_sentences()[sentence]
        ids = model.encode(text)[:cfg.max_tokens]
        x = embed_tokens(model, ids)
        for index in range(layer + 1):
            q, k, v = project_qkv(model, index, x)
            if index < layer:
                x = finish_layer(model, index, x, float_attention(q, k, v))
    tensors = []
    for t in (q, k, v):
        if cfg.head_dim <= model.head_dim:
            t = t[:cfg.heads, :, :cfg.head_dim]
        else:
            flat = t.transpose(0, 1).reshape(t.shape[1], -1)
            heads = min(cfg.heads, flat.shape[1] // cfg.head_dim)
            t = flat[:, :heads * cfg.head_dim].reshape(t.shape[1], heads, cfg.head_dim).transpose(0, 1)
        tensors.append(fmt.act.quantize(t.contiguous()))
    return tuple(tensors)


async def setup(dut, seed_offset=0, stalls=None):
    _, cfg = load_manifest()
    rng = random.Random(SEED + seed_offset)
    bench = AttentionBench(dut, cfg, rng)
    bench.set_stalls(stalls or Stalls())
    await bench.reset()
    return bench, cfg, rng


def none_maxima(cfg, q, k, v):
    """Each row's maximum probability from the MSB planes (the first pass of progressive
    quantization), from the golden model."""
    return attention_head(cfg, q, k, v, threshold=0).probs.amax(dim=-1).tolist()


def prob_threshold(bench, ratio):
    return recompute_threshold_int(ratio, bench.fmt.prob)


# --- tests ------------------------------------------------------------------------------------------

@cocotb.test()
async def random_heads(dut):
    """Uniformly random Q, K, V over the whole act range at n = 1, 2, a block plus one, small, medium,
    big and the largest (``max_tokens`` unless capped), with random flags, random stalls and random
    memory latency; then ``SPATTN_ATTN_RANDOM_HEADS`` heads where everything is random."""
    bench, cfg, rng = await setup(dut, seed_offset=0)
    small, medium, big = sizes(cfg)
    top = 1 << bench.fmt.prob.bits
    ns = sorted({1, 2, min(big, cfg.pe_rows + 1), min(big, cfg.pe_cols + 1), small, medium, big,
                 largest(cfg)})
    for index, n in enumerate(ns):
        bench.set_stalls(Stalls.random(rng))
        flags = {"causal": rng.random() < 0.3, "progressive": rng.random() < 0.8,
                 "threshold": rng.choice([0, top, rng.randint(0, top), prob_threshold(bench, 0.5)]),
                 "value_keep": rng.choice([FULL, value_keep_int(0.5), rng.randint(1, FULL)])}
        if rng.random() < 0.3:
            flags["mask"] = random_mask(n, rng, rng.random(), flags["causal"])
        q, k, v = random_qkv(cfg, SEED + index, n)
        await bench.run_head(f"random_heads[{index}] {bench.stalls}", q, k, v, **flags)
    # then random everything: size, kind of data, flags, mask, stalls
    for index in range(len(ns), len(ns) + int(os.environ.get("SPATTN_ATTN_RANDOM_HEADS", "8"))):
        bench.set_stalls(Stalls.random(rng, heavy=rng.random() < 0.3))
        n = rng.randint(1, big)
        flags = {"causal": rng.random() < 0.3, "progressive": rng.random() < 0.8,
                 "threshold": rng.randint(0, top), "value_keep": rng.randint(1, FULL)}
        if rng.random() < 0.3:
            flags["mask"] = random_mask(n, rng, rng.random(), flags["causal"])
        kind = rng.choice(["full", "small", "extreme", "flat", "peaked"])
        q, k, v = random_qkv(cfg, SEED + index, n, kind)
        await bench.run_head(f"random_heads[{index}] {kind} {bench.stalls}", q, k, v, **flags)
    dut._log.info("random heads (n, cycles, recomputed): %s",
                  [(r["n"], r["busy_cycles"], r["rows_recomputed"]) for r in bench.results])


@cocotb.test()
async def minilm_heads(dut):
    """Real MiniLM Q, K, V (two layers of one sentence), up to four heads of each: dense and with
    progressive quantization (threshold 0.1) and value pruning (0.5), in turn."""
    bench, cfg, rng = await setup(dut, seed_offset=1, stalls=Stalls(0.1, 0.2, 0.2, 0.2, (0, 12)))
    _, medium, big = sizes(cfg)
    sentence = int(os.environ.get("SPATTN_ATTN_SENTENCE", "42"))
    settings = [("dense", {"progressive": False, "value_keep": FULL}),
                ("sparse", {"progressive": True, "threshold": prob_threshold(bench, 0.1),
                            "value_keep": value_keep_int(0.5)})]
    for layer, n_cap in ((0, big), (5, medium)):
        q, k, v = minilm_qkv(cfg, sentence, layer)
        n = min(q.shape[1], n_cap)
        for h in range(min(4, q.shape[0])):
            name, flags = settings[(h + layer) % 2]
            await bench.run_head(f"minilm s{sentence} l{layer} h{h} {name}", q[h, :n], k[h, :n],
                                 v[h, :n], **flags)
    dut._log.info("MiniLM heads: %s", [(r["name"], r["n"], r["busy_cycles"], r["rows_recomputed"],
                                         r["bytes_fetched"]) for r in bench.results])
    assert len(bench.results) >= 2


@cocotb.test()
async def thresholds(dut):
    """Progressive quantization with threshold 0 (no row recomputed), ``2**prob.bits`` (every row
    recomputed) and in between, and progressive quantization off (every row once, at full precision)."""
    bench, cfg, rng = await setup(dut, seed_offset=2, stalls=Stalls(0.2, 0.2, 0.2, 0.2, (0, 10)))
    small, medium, _ = sizes(cfg)
    top = 1 << bench.fmt.prob.bits
    for kind, n in (("full", medium), ("small", small)):
        q, k, v = random_qkv(cfg, SEED + 100 + n, n, kind)
        none = await bench.run_head(f"thresholds {kind} none", q, k, v, threshold=0)
        assert none["rows_recomputed"] == 0, none
        every = await bench.run_head(f"thresholds {kind} every", q, k, v, threshold=top)
        assert every["rows_recomputed"] == n, every
        assert every["bytes_fetched"] > none["bytes_fetched"], (every, none)
        await bench.run_head(f"thresholds {kind} half", q, k, v, threshold=prob_threshold(bench, 0.5),
                             value_keep=value_keep_int(0.75))
        off = await bench.run_head(f"thresholds {kind} off", q, k, v, progressive=False)
        assert off["rows_recomputed"] == 0, off
        # At the boundary: a row whose MSB-pass maximum equals the threshold is not recomputed,
        # one below it is (``p < threshold``). With threshold 0 the final probabilities are the
        # MSB pass's.
        maxima = sorted(set(none_maxima(cfg, q, k, v)))
        edge = maxima[len(maxima) // 2]
        for threshold in (edge, edge + 1):
            result = await bench.run_head(f"thresholds {kind} edge {threshold}", q, k, v,
                                          threshold=threshold)
            assert result["rows_recomputed"] == sum(m < threshold for m in none_maxima(cfg, q, k, v))


@cocotb.test()
async def distributions(dut):
    """Flat rows (all-equal Q and K, and Q = K = 0: every key ties), peaked rows (one key with a
    huge score) and extreme values (saturated scores and outputs), under each kind of setting."""
    bench, cfg, rng = await setup(dut, seed_offset=3, stalls=Stalls(0.2, 0.3, 0.1, 0.3, (2, 15)))
    small, medium, _ = sizes(cfg)
    top = 1 << bench.fmt.prob.bits
    settings = [{"progressive": False},
                {"threshold": prob_threshold(bench, 0.5), "value_keep": value_keep_int(0.5)},
                {"threshold": top, "value_keep": 1, "causal": True}]
    for index, kind in enumerate(("flat", "zero", "peaked", "extreme")):
        for number, flags in enumerate(settings):
            n = medium if number == 1 else small
            q, k, v = random_qkv(cfg, SEED + 200 + index, n, kind)
            await bench.run_head(f"distributions {kind} {number}", q, k, v, **flags)


@cocotb.test()
async def causal_heads(dut):
    """Causal heads: key blocks that end inside the head, n below, at and above a multiple of
    ``pe_rows``, with and without progressive quantization and value pruning."""
    bench, cfg, rng = await setup(dut, seed_offset=4, stalls=Stalls(0.2, 0.2, 0.2, 0.2, (0, 20)))
    small, medium, big = sizes(cfg)
    ns = sorted({min(big, 2 * cfg.pe_rows), min(big, 2 * cfg.pe_rows + 1), small, big})
    for index, n in enumerate(ns):
        q, k, v = random_qkv(cfg, SEED + 300 + index, n, rng.choice(["full", "small"]))
        flags = [{"progressive": False}, {"threshold": prob_threshold(bench, 0.3)},
                 {"threshold": prob_threshold(bench, 0.5), "value_keep": value_keep_int(0.5)}][index % 3]
        await bench.run_head(f"causal[{index}]", q, k, v, causal=True, **flags)


@cocotb.test()
async def static_mask(dut):
    """Random static masks (every row keeps at least one key): sparse, dense, one key per row, all
    keys, and a mask combined with causal."""
    bench, cfg, rng = await setup(dut, seed_offset=5, stalls=Stalls(0.3, 0.2, 0.2, 0.2, (0, 20)))
    small, medium, big = sizes(cfg)
    cases = [(medium, 0.3, False, {"threshold": prob_threshold(bench, 0.3)}),
             (small, 0.8, False, {"progressive": False, "value_keep": value_keep_int(0.5)}),
             (small, 0.0, False, {"threshold": prob_threshold(bench, 0.9)}),
             (small, 1.0, False, {"value_keep": value_keep_int(0.25)}),
             (medium, 0.4, True, {"threshold": prob_threshold(bench, 0.2),
                                  "value_keep": value_keep_int(0.5)})]
    for index, (n, density, is_causal, flags) in enumerate(cases):
        q, k, v = random_qkv(cfg, SEED + 400 + index, n, "small" if index % 2 else "full")
        mask = random_mask(n, rng, density, is_causal)
        await bench.run_head(f"static_mask[{index}] density {density}", q, k, v, mask=mask,
                             causal=is_causal, **flags)


@cocotb.test()
async def value_pruning(dut):
    """Local value pruning: keep 1.0, 0.5 and the smallest ratio (one V row per query), with ties."""
    bench, cfg, rng = await setup(dut, seed_offset=6, stalls=Stalls(0.2, 0.2, 0.2, 0.2, (0, 10)))
    small, medium, _ = sizes(cfg)
    for kind, n in (("full", medium), ("flat", small)):
        q, k, v = random_qkv(cfg, SEED + 500 + n, n, kind)
        requested = {}
        for ratio, keep in (("1.0", FULL), ("0.5", value_keep_int(0.5)), ("tiny", 1)):
            result = await bench.run_head(f"value_keep {kind} {ratio}", q, k, v, threshold=0,
                                          value_keep=keep)
            requested[ratio] = result["requests"]
        assert requested["tiny"] <= requested["0.5"] <= requested["1.0"], requested


@cocotb.test()
async def stream_stress(dut):
    """Heavy random back-pressure and valid gaps on every stream with long memory latency, then
    free-flowing streams with an immediate memory."""
    bench, cfg, rng = await setup(dut, seed_offset=7)
    small, medium, _ = sizes(cfg)
    heavy = [Stalls(0.6, 0.7, 0.7, 0.6, (0, 40)), Stalls(0.0, 0.8, 0.0, 0.0, (30, 40)),
             Stalls(0.7, 0.0, 0.5, 0.8, (0, 3))]
    for index, stalls in enumerate(heavy + [Stalls()]):
        bench.set_stalls(stalls)
        n = small if index < len(heavy) else medium
        q, k, v = random_qkv(cfg, SEED + 600 + index, n, "small")
        await bench.run_head(f"stream_stress[{index}] {stalls}", q, k, v, causal=index == 1,
                             threshold=prob_threshold(bench, 0.5), value_keep=value_keep_int(0.5))


@cocotb.test()
async def reset_mid_head(dut):
    """A reset at any point of a head drops it cleanly; a full head after it is correct."""
    bench, cfg, rng = await setup(dut, seed_offset=8, stalls=Stalls(0.2, 0.2, 0.2, 0.2, (0, 10)))
    small, medium, _ = sizes(cfg)
    q, k, v = random_qkv(cfg, SEED + 700, medium, "small")
    flags = {"threshold": prob_threshold(bench, 0.5), "value_keep": value_keep_int(0.5)}
    reference = await bench.run_head("reset_mid_head reference", q, k, v, **flags)
    length = reference["cycles"]
    for index, delay in enumerate([0, 1, 3, 10, length // 4, length // 2, length - 5]):
        mask = random_mask(medium, rng, 0.5) if index % 3 == 2 else None
        bench.start_head(f"reset_mid_head aborted at {delay}", q, k, v, mask=mask, **flags)
        for _ in range(max(0, delay)):
            await RisingEdge(dut.clk)
        await bench.reset(cycles=rng.randint(1, 4))
        m = rng.choice([small, medium])
        q2, k2, v2 = random_qkv(cfg, SEED + 710 + index, m, "small")
        await bench.run_head(f"reset_mid_head after reset {index}", q2, k2, v2, causal=index % 2 == 1,
                             **flags)
    after = await bench.run_head("reset_mid_head reference again", q, k, v, **flags)
    same = ("bytes_fetched", "rows_recomputed", "pe_macs")
    assert {key: after[key] for key in same} == {key: reference[key] for key in same}, (reference, after)


@cocotb.test()
async def dynatran(dut):
    """DynaTran inside the core: threshold 0 (nothing pruned), a quarter of the value range, one that
    prunes every value, on random heads with and without progressive quantization and value
    pruning, and on a real MiniLM head at the calibrated threshold 0.1."""
    bench, cfg, rng = await setup(dut, seed_offset=9, stalls=Stalls(0.2, 0.2, 0.2, 0.2, (0, 10)))
    small, medium, big = sizes(cfg)
    everything = (1 << (cfg.act_bits - 1)) + 1
    q, k, v = random_qkv(cfg, SEED + 800, medium, "full")
    results = {}
    for tau in (0, bench.fmt.act.max // 4, everything):
        for number, flags in enumerate([{"progressive": False},
                                        {"threshold": prob_threshold(bench, 0.5),
                                         "value_keep": value_keep_int(0.5)}]):
            results[tau, number] = await bench.run_head(f"dynatran {tau} {number}", q, k, v, dynatran=tau,
                                                        **flags)
    assert results[everything, 0]["bytes_fetched"] == results[0, 0]["bytes_fetched"]
    real_q, real_k, real_v = minilm_qkv(cfg, int(os.environ.get("SPATTN_ATTN_SENTENCE", "42")), 0)
    n = min(real_q.shape[1], big)
    await bench.run_head("dynatran minilm 0.1", real_q[0, :n], real_k[0, :n], real_v[0, :n],
                         dynatran=dynatran_threshold_int(0.1, bench.fmt.act), progressive=False)


@cocotb.test()
async def longest_heads(dut):
    """The largest heads (``max_tokens`` unless ``SPATTN_ATTN_LARGEST_WORK`` or ``SPATTN_ATTN_MAX_N``
    cap them): random Q, K, V dense, and a real MiniLM head (the corpus run together) with
    progressive quantization, value pruning and DynaTran, under random stalls."""
    bench, cfg, rng = await setup(dut, seed_offset=10, stalls=Stalls(0.1, 0.1, 0.1, 0.1, (0, 8)))
    n = largest(cfg)
    q, k, v = random_qkv(cfg, SEED + 900, n, "full")
    await bench.run_head(f"longest random n={n}", q, k, v, progressive=False)
    real_q, real_k, real_v = minilm_qkv(cfg, -1, 1)
    n = min(n, real_q.shape[1])
    await bench.run_head(f"longest minilm n={n}", real_q[1, :n], real_k[1, :n], real_v[1, :n],
                         threshold=prob_threshold(bench, 0.1), value_keep=value_keep_int(0.5),
                         dynatran=dynatran_threshold_int(0.1, bench.fmt.act))


# --- benchmark ----------------------------------------------------------------------------------------

@cocotb.test(skip="SPATTN_ATTN_BENCH" not in os.environ)
async def benchmark(dut):
    """Real MiniLM heads at given settings on free-flowing streams and a fixed memory latency.

    ``SPATTN_ATTN_BENCH`` is JSON: ``{"latency": cycles, "sentences": [...] (-1: the corpus run
    together to max_tokens), "layers": [...], "heads": [...] or null (all), "settings": [{"name",
    "progressive", "threshold", "value_keep", "dynatran"}, ...]}``. Every head is still checked beat by beat; one JSON line per head goes to
    ``SPATTN_BENCH_OUT``.
    """
    spec = json.loads(os.environ["SPATTN_ATTN_BENCH"])
    latency = int(spec.get("latency", 4))
    bench, cfg, _ = await setup(dut, stalls=Stalls(latency=(latency, latency)))
    dense_bytes_per_row = cfg.head_dim * cfg.act_bits / 8
    with open(os.environ["SPATTN_BENCH_OUT"], "w") as out:
        for sentence in spec["sentences"]:
            for layer in spec["layers"]:
                q, k, v = minilm_qkv(cfg, sentence, layer)
                heads = spec.get("heads") or list(range(q.shape[0]))
                for h in heads:
                    for setting in spec["settings"]:
                        flags = {key: setting[key] for key in ("progressive", "threshold", "value_keep",
                                                               "dynatran")}
                        r = await bench.run_head(f"bench s{sentence} l{layer} h{h} {setting['name']}",
                                                 q[h], k[h], v[h], **flags)
                        n = r["n"]
                        pe = cfg.pe_rows * cfg.pe_cols
                        out.write(json.dumps({
                            "sentence": sentence, "layer": layer, "head": h, "setting": setting["name"],
                            **flags, "latency": latency, "n": n, "cycles": r["cycles"],
                            "busy_cycles": r["busy_cycles"], "cycles_per_row": r["busy_cycles"] / n,
                            "bytes_fetched": r["bytes_fetched"],
                            "dense_bytes": 3 * n * dense_bytes_per_row,
                            "rows_recomputed": r["rows_recomputed"],
                            "recompute_fraction": r["rows_recomputed"] / n,
                            "pe_busy_cycles": r["pe_busy_cycles"], "pe_macs": r["pe_macs"],
                            "ideal_cycles": ideal_cycles(cfg, n),
                            "utilization": r["pe_macs"] / (pe * r["busy_cycles"]),
                            "pe_utilization": r["pe_macs"] / (pe * max(1, r["pe_busy_cycles"])),
                            "requests": r["requests"],
                        }) + "\n")
                        out.flush()
    assert bench.results
