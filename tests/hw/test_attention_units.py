"""The attention core's units, each on its own in Amaranth's Python simulator, against the matching
step of the golden model (:mod:`spattn.sim.golden.intattention`, :mod:`spattn.sim.golden.pruning`)
and the formats of :mod:`spattn.formats`.

Every bench drives a unit's inputs as its neighbours in :class:`spattn.hw.attention.AttentionCore`
would (within the unit's contract), models the memories it reads (a synchronous read: the word at
the address of the previous cycle), takes its streams with random back-pressure and records what
leaves at each clock edge (``ctx.tick().sample``: the values just before the edge). Inputs are
seeded random plus the nasty cases of each step (ties, all-equal, extremes, saturation).
"""

import dataclasses
import random

import pytest
import torch
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import data
from amaranth.sim import Simulator

from spattn.config import preset
from spattn.formats import VALUE_KEEP_FRAC, join_planes, plane_row_bytes, split_planes, value_keep_int
from spattn.hw.attention.common import PLANE_LSB, PLANE_MSB, TENSOR_K, TENSOR_Q, TENSOR_V, Geometry
from spattn.hw.attention.fetch import FetchUnit
from spattn.hw.attention.grid import MacGrid
from spattn.hw.attention.masks import MaskUnit
from spattn.hw.attention.merge import KeptMerge
from spattn.hw.attention.output import OutputUnit
from spattn.hw.attention.scores import ScoreUnit
from spattn.hw.attention.select import DIGIT_BITS, ValueSelector, digit_widths
from spattn.hw.attention.softmax_unit import SoftmaxUnit
from spattn.sim.golden.intattention import pv_int, scores_int, softmax_int
from spattn.sim.golden.pruning import kept_counts, top_count_per_row

TINY = preset("tiny")                                            # R x C = 2 x 2, W = 8
_ULX = dict(board="ulx3s-85f")                                   # room for more multipliers
CFG4 = dataclasses.replace(TINY, pe_rows=4, pe_cols=4, **_ULX)   # W = 4
CFG3x8 = dataclasses.replace(TINY, pe_rows=3, pe_cols=8, **_ULX)  # W = 2: two scaling multipliers, R odd
CFG2x16 = dataclasses.replace(TINY, pe_rows=2, pe_cols=16, **_ULX)  # W = 1: a key every cycle
CFG2x3 = dataclasses.replace(TINY, pe_rows=2, pe_cols=3, **_ULX)   # W = 6, C not a power of 2, padded

CFG_IDS = {id(TINY): "2x2", id(CFG4): "4x4", id(CFG3x8): "3x8", id(CFG2x16): "2x16", id(CFG2x3): "2x3"}


def cfg_id(cfg):
    return CFG_IDS[id(cfg)]


# ---- simulation helpers ---------------------------------------------------------------------------

def simulate(dut, main, *background):
    """Run ``main`` to its end, with ``background`` testbenches (models, monitors) alongside."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(main)
    for proc in background:
        sim.add_testbench(proc, background=True)
    sim.run()


def py(value):
    """A sampled value as plain Python: structs as dicts, arrays as lists, numbers as ints."""
    if isinstance(value, data.Const):
        layout = value.shape()
        if isinstance(layout, data.ArrayLayout):
            return [py(v) for v in value]
        return {name: py(value[name]) for name, _ in layout}
    return int(value)


def memory_model(port, lookup):
    """Answer a unit's read port like a synchronous memory: ``data`` is ``lookup(addr)`` of the
    address at the previous edge (``en`` low holds it)."""
    async def model(ctx):
        async for _, _, addr, en in ctx.tick().sample(port.addr, port.en):
            if en:
                ctx.set(port.data, lookup(addr))
    return model


def random_ready(signal, rng, p_ready):
    """Back-pressure: ``signal`` high with probability ``p_ready`` each cycle."""
    async def proc(ctx):
        while True:
            ctx.set(signal, rng.random() < p_ready)
            await ctx.tick()
    return proc


def stream_monitor(stream, log):
    """Log ``(cycle, payload)`` of every beat taken (valid and ready at an edge)."""
    async def proc(ctx):
        cycle = 0
        async for _, _, valid, ready, payload in ctx.tick().sample(stream.valid, stream.ready,
                                                                    stream.payload):
            if valid and ready:
                log.append((cycle, py(payload)))
            cycle += 1
    return proc


def pulse_monitor(signal, log, *with_values):
    """Log ``cycle`` (or ``(cycle, values...)``) of every cycle ``signal`` is high."""
    async def proc(ctx):
        cycle = 0
        async for _, _, high, *values in ctx.tick().sample(signal, *with_values):
            if high:
                log.append((cycle, *[py(v) for v in values]) if with_values else cycle)
            cycle += 1
    return proc


class Clock:
    """The main testbench's cycle count (every process counts the same edges from time 0)."""

    def __init__(self, ctx):
        self.ctx, self.cycle = ctx, 0

    async def tick(self, *signals):
        """One edge; returns ``signals`` as they were just before it."""
        values = await self.ctx.tick().sample(*signals)
        self.cycle += 1
        return [py(v) for v in values[2:]]

    async def until(self, signal, limit, what):
        """Tick until ``signal`` was high at an edge; returns that cycle."""
        for _ in range(limit):
            (high,) = await self.tick(signal)
            if high:
                return self.cycle - 1
        raise AssertionError(f"no {what} within {limit} cycles")


async def read_words(clock, port, addrs):
    """Read a unit's memory through its read port (we drive ``addr``)."""
    words = []
    for addr in addrs:
        clock.ctx.set(port.addr, addr)
        clock.ctx.set(port.en, 1)
        await clock.tick()
        words.append(py(clock.ctx.get(port.data)))
    return words


def random_act(rng, fmt, n, d, kinds=("random",)):
    """``n`` rows of ``d`` act values; each row of one of ``kinds``: random, min, max, zero, small."""
    rows = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "min":
            rows.append([fmt.min] * d)
        elif kind == "max":
            rows.append([fmt.max] * d)
        elif kind == "zero":
            rows.append([0] * d)
        elif kind == "small":
            rows.append([rng.randint(-3, 3) for _ in range(d)])
        else:
            rows.append([rng.randint(fmt.min, fmt.max) for _ in range(d)])
    return rows


def chunk_sums(a_rows, b_rows, C, W):
    """What the grid's accumulators hold after a pass: ``sum_t a[r][t*C+c] * b[t*C+c]`` (zero
    padded) for each row ``r`` of ``a_rows`` against the one vector ``b_rows``."""
    width = C * W
    pad = lambda v: list(v) + [0] * (width - len(v))    # noqa: E731
    b = pad(b_rows)
    return [[sum(pad(a)[t * C + c] * b[t * C + c] for t in range(W)) for c in range(C)] for a in a_rows]


# ---- 1. MacGrid ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [TINY, CFG4, CFG2x3], ids=cfg_id)
def test_mac_grid_sums_latency_and_counters(cfg):
    geo = Geometry.of(cfg)
    R, C, W, T = geo.R, geo.C, geo.W, geo.T
    act, pmax = geo.fmt.act, geo.fmt.prob.max
    rng = random.Random(11)
    dut = MacGrid(geo)

    # a cycle schedule: ("qk"|"pv", step) / None (idle) / "clear"; passes with their expected sums
    schedule, passes = [], []
    for i in range(14):
        kind = ["qk", "pv"][rng.random() < 0.45]
        tag = {"key": rng.randrange(T), "chunk": rng.randrange(W), "end": rng.randrange(2)}
        steps = []
        if kind == "qk":
            extreme = i % 5 == 1      # every operand at act.min: the largest products
            for _ in range(W):
                q = [[act.min if extreme else rng.randint(act.min, act.max) for _ in range(C)]
                     for _ in range(R)]
                k = [act.min if extreme else rng.randint(act.min, act.max) for _ in range(C)]
                steps.append({"q": q, "k": k, "a": q, "b": k})
        else:
            length = 1 if i % 5 == 3 else rng.randint(1, 4)
            cap = (2048 + T) // length          # a row's probabilities add up to at most 1 + T LSBs
            for _ in range(length):
                p = [pmax if length == 1 else rng.randint(0, min(cap, pmax)) for _ in range(R)]
                v = [act.min if length == 1 else rng.randint(act.min, act.max) for _ in range(C)]
                steps.append({"p": p, "v": v, "a": [[x] * C for x in p], "b": v})
        # P·V sums start at the output format's rounding half
        start = 0 if kind == "qk" else 1 << (geo.fmt.prob.frac - 1)
        sums = [[start + sum(s["a"][r][c] * s["b"][c] for s in steps) for c in range(C)] for r in range(R)]
        for j, s in enumerate(steps):
            payload = {key: s[key] for key in (("q", "k") if kind == "qk" else ("p", "v"))}
            payload.update(first=j == 0, last=j == len(steps) - 1, macs=rng.randint(0, R * C),
                           tag=dict(tag, chunk=j if kind == "qk" else tag["chunk"]))
            schedule.append((kind, payload))
            if j == len(steps) - 1:
                passes.append({"last": len(schedule) - 1, "qk": kind == "qk", "sums": sums,
                               "tag": payload["tag"]})
            schedule += [None] * (0 if rng.random() < 0.7 else rng.randint(1, 2))
        schedule += [None] * rng.choice([0, 0, 1, 3])
        if i == 6:
            schedule += ["clear", None]
    schedule += [None] * 5

    samples = []

    async def bench(ctx):
        clock = Clock(ctx)
        for entry in schedule:
            ctx.set(dut.qk.valid, 0)
            ctx.set(dut.pv.valid, 0)
            ctx.set(dut.clear, entry == "clear")
            if isinstance(entry, tuple):
                kind, payload = entry
                port = dut.qk if kind == "qk" else dut.pv
                ctx.set(port.valid, 1)
                ctx.set(port.payload, payload)
            samples.append(await clock.tick(dut.result_valid, dut.result_qk, dut.result, dut.result_tag,
                                            dut.busy_cycles, dut.macs, dut.qk.ready, dut.pv.ready))

    simulate(dut, bench)

    results = {c: s for c, s in enumerate(samples) if s[0]}
    assert sorted(results) == [p["last"] + 3 for p in passes], "result_valid 3 cycles after each last step"
    for p in passes:
        _, qk, result, tag = results[p["last"] + 3][:4]
        assert qk == p["qk"] and tag == p["tag"]
        assert result == p["sums"]
    steps = macs = 0
    for cycle, entry in enumerate(schedule):
        assert samples[cycle][4:6] == [steps, macs], f"counters at cycle {cycle}"
        assert samples[cycle][6:] == [1, 1]
        if entry == "clear":
            steps = macs = 0
        elif entry is not None:
            steps, macs = steps + 1, macs + entry[1]["macs"]


# ---- 2. ScoreUnit -------------------------------------------------------------------------------

def expected_scores(fmt, q, k, rounding="half_up"):
    """``scores_int`` of the block's rows against its keys (``rounding="floor"``: a deliberately
    wrong rule, to show the checker catches it)."""
    q, k = torch.tensor(q), torch.tensor(k)
    if rounding == "half_up":
        return scores_int(q, k, fmt).tolist()
    return fmt.score.saturate((q @ k.T * fmt.scale_mult) >> fmt.scale_shift).tolist()


def score_mismatches(got, want):
    """``(key, slot, got, want)`` of every score that differs; ``got`` is ``[key][slot]``, ``want``
    is ``[slot][key]``."""
    return [(j, r, got[j][r], want[r][j]) for j in range(len(got)) for r in range(len(want))
            if got[j][r] != want[r][j]]


def score_block(geo, rng, bank_set, n_keys, masked, all_valid=True):
    """A block for the score unit: slots' rows, query and key vectors with extremes, a mask."""
    R, T, d, act = geo.R, geo.T, geo.d, geo.fmt.act
    rows = sorted(rng.sample(range(n_keys), R))
    valid = [1] * R if all_valid else [1] * max(1, R - 1) + [0] * (R - max(1, R - 1))
    q = random_act(rng, act, R, d, kinds=("min", "random", "max", "small", "random")[:max(R, 2)])
    k = random_act(rng, act, n_keys, d, kinds=("min", "max", "zero", "small", "random", "random", "small"))
    mask = [[rng.random() < 0.6 for _ in range(T)] for _ in range(R)]
    if masked and R > 2:
        mask[2] = [False] * T            # a slot with no present key: row_max stays score.min
    mask[0][n_keys - 1] = True
    block = {"rows": rows, "valid": sum(v << r for r, v in enumerate(valid)), "full": 1, "recompute": 0,
             "n_keys": n_keys, "final": 0}
    return {"set": bank_set, "block": block, "valid": valid, "q": q, "k": k, "mask": mask}


def run_score_unit(geo, blocks, causal, masked, seed):
    """Drive the grid's results of each block in turn (a key every ``W`` cycles or later, PV results
    in the gaps), answer the mask reads, read the bank and the row maxima after each ``done``."""
    R, C, W, T, NCH = geo.R, geo.C, geo.W, geo.T, geo.NCH
    rng = random.Random(seed)
    dut = ScoreUnit(geo)
    mask_words = {}

    def mask_word(addr):
        return mask_words.get(addr, [rng.randrange(1 << C) for _ in range(R)])

    seen = []

    async def bench(ctx):
        clock = Clock(ctx)
        ctx.set(dut.causal, causal)
        ctx.set(dut.masked, masked)
        for blk in blocks:
            s = blk["set"]
            for ch in range(NCH):
                mask_words[s * NCH + ch] = [sum(blk["mask"][r][ch * C + c] << c for c in range(C)
                                                if ch * C + c < T) for r in range(R)]
            ctx.set(dut.block, blk["block"])
            ctx.set(dut.set, s)
            last = None
            n_keys = blk["block"]["n_keys"]
            for j in range(n_keys):
                ctx.set(dut.result_valid, 1)
                ctx.set(dut.result_qk, 1)
                ctx.set(dut.result, chunk_sums(blk["q"], blk["k"][j], C, W))
                ctx.set(dut.result_tag, {"key": j, "chunk": W - 1, "end": j == n_keys - 1})
                last = clock.cycle
                dones = []
                gap = W - 1 + (rng.randint(1, 3) if rng.random() < 0.2 else 0)
                for g in range(gap + 1):
                    (done,) = await clock.tick(dut.done)
                    dones.append(done)
                    # a P·V result in the gap, which the score unit must ignore
                    pv = g == 0 and gap >= 1 and rng.random() < 0.5
                    ctx.set(dut.result_valid, pv)
                    ctx.set(dut.result_qk, 0)
                    if pv:
                        ctx.set(dut.result_tag, {"key": rng.randrange(T), "chunk": 0, "end": 1})
                assert not any(dones) or j == n_keys - 1
            done_at = last + dones.index(1) if any(dones) else await clock.until(dut.done, 40, "done")
            extra = []
            for _ in range(8):                 # no second done
                (done,) = await clock.tick(dut.done)
                extra.append(done)
            words = await read_words(clock, dut.score_read, [s * T + j for j in range(n_keys)])
            seen.append({"words": words, "done_after": done_at - last, "extra_done": any(extra),
                         "row_max": py(ctx.get(dut.row_max)), "count": py(ctx.get(dut.present_count))})
        seen.append({"row_max": py(ctx.get(dut.row_max)), "count": py(ctx.get(dut.present_count))})

    simulate(dut, bench, memory_model(dut.present_read, mask_word))
    return seen


def present_of(geo, blk, causal, masked):
    R, n_keys, rows = geo.R, blk["block"]["n_keys"], blk["block"]["rows"]
    return [[bool(blk["valid"][r]) and (not causal or j <= rows[r]) and (not masked or blk["mask"][r][j])
             for j in range(n_keys)] for r in range(R)]


@pytest.mark.parametrize("mode", [(False, True), (True, False), (True, True)],
                         ids=["masked", "causal", "causal+masked"])
@pytest.mark.parametrize("cfg", [TINY, CFG4, CFG3x8, CFG2x16, CFG2x3], ids=cfg_id)
def test_score_unit_scores_presence_maxima(cfg, mode):
    causal, masked = mode
    geo = Geometry.of(cfg)
    fmt, R = geo.fmt, geo.R
    rng = random.Random(21)
    blocks = [score_block(geo, rng, 0, 13, masked), score_block(geo, rng, 1, 9, masked, all_valid=False),
              score_block(geo, rng, 0, 11, masked)]
    seen = run_score_unit(geo, blocks, causal, masked, seed=5)
    for i, (blk, got) in enumerate(zip(blocks, seen)):
        want = expected_scores(fmt, blk["q"], blk["k"])
        assert score_mismatches([w["score"] for w in got["words"]], want) == [], f"block {i}"
        present = present_of(geo, blk, causal, masked)
        assert [w["present"] for w in got["words"]] == \
            [sum(present[r][j] << r for r in range(R)) for j in range(len(got["words"]))], f"block {i}"
        row_max = [max([want[r][j] for j in range(len(present[r])) if present[r][j]], default=fmt.score.min)
                   for r in range(R)]
        assert got["row_max"][blk["set"]] == row_max, f"block {i}"
        assert got["count"][blk["set"]] == [sum(p) for p in present], f"block {i}"
        assert 1 <= got["done_after"] <= 4 + geo.W and not got["extra_done"], f"block {i}"
    # the half of block 1 (set 1) is untouched by block 2 (set 0)
    assert seen[-1]["row_max"][1] == seen[1]["row_max"][1]
    assert seen[-1]["count"][1] == seen[1]["count"][1]
    # the extremes saturate both ways
    scores = [x for blk in blocks for row in expected_scores(fmt, blk["q"], blk["k"]) for x in row]
    assert fmt.score.max in scores and fmt.score.min in scores


def test_score_checker_catches_a_wrong_rounding():
    """The same bench against a deliberately wrong golden rule (floor instead of half up) must
    report mismatches: the comparison is not vacuous."""
    geo = Geometry.of(TINY)
    rng = random.Random(3)
    blk = score_block(geo, rng, 0, 10, masked=False)
    blk["k"] = random_act(rng, geo.fmt.act, 10, geo.d, kinds=("small", "random"))
    blk["q"] = random_act(rng, geo.fmt.act, geo.R, geo.d, kinds=("small", "random"))
    (got, _) = run_score_unit(geo, [blk], causal=False, masked=False, seed=1)
    scores = [w["score"] for w in got["words"]]
    assert score_mismatches(scores, expected_scores(geo.fmt, blk["q"], blk["k"])) == []
    wrong = score_mismatches(scores, expected_scores(geo.fmt, blk["q"], blk["k"], rounding="floor"))
    assert len(wrong) >= 3
    assert all(g == w + 1 for _, _, g, w in wrong)     # half up is floor + 1 past the half


# ---- 3. SoftmaxUnit -----------------------------------------------------------------------------

def softmax_rows(fmt, scores, present):
    """``softmax_int`` of each slot's scores over its present keys (None for a slot without any)."""
    return [softmax_int(torch.tensor(s), fmt, mask=torch.tensor(p)).tolist() if any(p) else None
            for s, p in zip(scores, present)]


def softmax_block(geo, rng, n_keys, kinds):
    """Scores and present flags of a block's slots, one of ``kinds`` per slot: ``narrow`` (random,
    close together), ``wide`` (random over the whole score range), ``single`` (one present key),
    ``equal`` (every present key the same score), ``spread`` (score.max, score.min and between,
    an absent key above the row maximum), ``invalid`` (an unused slot)."""
    smin, smax = geo.fmt.score.min, geo.fmt.score.max
    scores, present = [], []
    for kind in kinds:
        s = [rng.randint(smin, smax) for _ in range(n_keys)]
        p = [rng.random() < 0.7 for _ in range(n_keys)]
        if kind == "narrow":
            base = rng.randint(smin + 60, smax - 60)
            s = [base + rng.randint(-60, 60) for _ in range(n_keys)]
        elif kind == "single":
            p = [False] * n_keys
            p[rng.randrange(n_keys)] = True
        elif kind == "equal":
            value = rng.choice([smin, smax, rng.randint(smin, smax)])
            s = [value if x else rng.randint(smin, smax) for x in p]
        elif kind == "spread":
            s = [smin if j % 3 == 0 else smax if j % 3 == 1 else rng.randint(smin, smax)
                 for j in range(n_keys)]
            p = [j % 4 != 3 for j in range(n_keys)]
        elif kind == "absent_above":
            s = [rng.randint(-100, 100) for _ in range(n_keys)]
            p = [j % 2 == 0 for j in range(n_keys)]
            s = [x if pr else smax for x, pr in zip(s, p)]
        elif kind == "invalid":
            p = [False] * n_keys
        if kind != "invalid" and not any(p):
            p[0] = True
        scores.append(s)
        present.append(p)
    return scores, present


@pytest.mark.parametrize("cfg", [CFG4, TINY], ids=cfg_id)
def test_softmax_unit_probs_confidence_and_bank(cfg):
    geo = Geometry.of(cfg)
    fmt, R, T = geo.fmt, geo.R, geo.T
    pbits = fmt.prob.bits
    rng = random.Random(31)
    dut = SoftmaxUnit(geo)

    kinds_cycle = ["narrow", "single", "equal", "spread", "wide", "absent_above", "narrow", "equal"]
    cases = []
    # (progressive, full, threshold) per block; "mid" = between the rows' maximum probabilities
    settings = [(1, 0, "mid"), (1, 0, 1 << pbits), (1, 1, 1 << pbits), (1, 0, 0), (0, 0, 1 << pbits),
                (1, 0, "mid"), (1, 0, "random"), (1, 0, "random")]
    for i, (progressive, full, threshold) in enumerate(settings):
        n_keys = [12, 9, 16, 7, 10, 1, rng.randint(2, 20), rng.randint(2, 20)][i]
        kinds = [kinds_cycle[(i + r) % len(kinds_cycle)] for r in range(R)]
        if threshold == "random":
            kinds = [rng.choice(kinds_cycle) for _ in range(R)]
            threshold = rng.randint(0, 1 << pbits)
        if i == 3:
            kinds[-1] = "invalid"
        scores, present = softmax_block(geo, rng, n_keys, kinds)
        valid = [kind != "invalid" for kind in kinds]
        probs = softmax_rows(fmt, scores, present)
        max_probs = [max(p) if p is not None else None for p in probs]
        if threshold == "mid":
            values = sorted(set(m for m in max_probs if m is not None))
            threshold = values[len(values) // 2]     # the boundary: a row at exactly it is final
        redo = [valid[r] and not full and bool(progressive) and max_probs[r] < threshold for r in range(R)]
        final = [valid[r] and not redo[r] for r in range(R)]
        rows = sorted(rng.sample(range(T), R))
        bank_set = i % 2
        row_max = [max([s for s, p in zip(scores[r], present[r]) if p], default=fmt.score.min)
                   for r in range(R)]
        cases.append(dict(block={"rows": rows, "valid": sum(v << r for r, v in enumerate(valid)),
                                 "full": full, "recompute": 0, "n_keys": n_keys, "final": 0},
                          set=bank_set, progressive=progressive, threshold=threshold, scores=scores,
                          present=present, probs=probs, redo=redo, final=final, row_max=row_max))
    assert any(any(c["redo"]) and any(c["final"]) for c in cases) or R < 4

    bank = {}

    def score_word(addr):
        return bank.get(addr, {"score": [0] * R, "present": 0})

    logs = {"probs": [], "redo": [], "decided": [], "pass2_start": [], "sample": [], "done": []}
    spans, banks = [], []

    async def bench(ctx):
        clock = Clock(ctx)
        ctx.set(dut.pass2, 1)
        for case in cases:
            s, n_keys = case["set"], case["block"]["n_keys"]
            for j in range(n_keys):
                bank[s * T + j] = {"score": [case["scores"][r][j] for r in range(R)],
                                   "present": sum(case["present"][r][j] << r for r in range(R))}
            halves = [[rng.randint(fmt.score.min, fmt.score.max) for _ in range(R)] for _ in range(2)]
            halves[s] = case["row_max"]
            (idle,) = await clock.tick(dut.idle)
            assert idle
            ctx.set(dut.block, case["block"])
            ctx.set(dut.set, s)
            ctx.set(dut.row_max, halves)
            ctx.set(dut.progressive, case["progressive"])
            ctx.set(dut.threshold, case["threshold"])
            ctx.set(dut.go, 1)
            start = clock.cycle
            await clock.tick()
            ctx.set(dut.go, 0)
            end = await clock.until(dut.done, 600, "softmax done")
            merge = await read_words(clock, dut.merge_read, range(n_keys))
            select = await read_words(clock, dut.select_read, range(n_keys))
            spans.append((start, end))
            banks.append((merge, select))
        for _ in range(60):           # the probs queue drains
            await clock.tick()

    simulate(dut, bench, memory_model(dut.score_read, score_word),
             random_ready(dut.probs.ready, random.Random(1), 0.5),
             random_ready(dut.redo.ready, random.Random(2), 0.6),
             stream_monitor(dut.probs, logs["probs"]), stream_monitor(dut.redo, logs["redo"]),
             pulse_monitor(dut.decided, logs["decided"], dut.final),
             pulse_monitor(dut.pass2_start, logs["pass2_start"]),
             pulse_monitor(dut.sample_valid, logs["sample"], dut.sample),
             pulse_monitor(dut.done, logs["done"]))

    beats = list(logs["probs"])
    for i, (case, (start, end)) in enumerate(zip(cases, spans)):
        block, n_keys, final = case["block"], case["block"]["n_keys"], case["final"]

        def within(log, start=start, end=end):
            return [e for e in log if start <= (e if isinstance(e, int) else e[0]) <= end]

        final_bits = sum(f << r for r, f in enumerate(final))
        # the confidence check: redo rows in slot order, then one decided with the final rows
        assert [row for _, row in within(logs["redo"])] == \
            [block["rows"][r] for r in range(R) if case["redo"][r]], f"block {i}"
        decided = within(logs["decided"])
        assert [f for _, f in decided] == [final_bits], f"block {i}"
        assert len(within(logs["pass2_start"])) == 1 and within(logs["done"]) == [end], f"block {i}"
        # the prob words: golden probabilities of final rows' present keys, else 0
        words = [{"prob": [case["probs"][r][j] if final[r] and case["present"][r][j] else 0
                           for r in range(R)],
                  "present": sum((final[r] and case["present"][r][j]) << r for r in range(R))}
                 for j in range(n_keys)]
        assert [{"key": j, "word": w} for j, w in enumerate(words)] == \
            [w for _, w in within(logs["sample"])], f"block {i}"
        assert banks[i] == (words, words), f"block {i}"
        # probs: a beat per key when some row is final, in key order, after the decision
        if any(final):
            mine, beats = beats[:n_keys], beats[n_keys:]
            assert all(cycle > decided[0][0] for cycle, _ in mine)
            assert [b for _, b in mine] == [{"key": j, "rows": block["rows"], "final": final_bits,
                                             "data": words[j]["prob"], "last": j == n_keys - 1}
                                            for j in range(n_keys)], f"block {i}"
    assert beats == []
    # the nasty rows are there: a single present key among absent ones gets prob.max
    assert any(p is not None and len(p) > 1 and p.count(fmt.prob.max) == 1 and p.count(0) == len(p) - 1
               for c in cases for p in c["probs"])


# ---- 4. ValueSelector + KeptMerge -----------------------------------------------------------------

class SelectAndMerge(Elaboratable):
    """The value selector and the kept-key merge as the core joins them."""

    def __init__(self, geo):
        self.vs, self.merge = ValueSelector(geo), KeptMerge(geo)

    def elaborate(self, platform):
        m = Module()
        m.submodules.vs, m.submodules.merge = self.vs, self.merge
        m.d.comb += [self.merge.pruned.eq(self.vs.pruned), self.merge.kth.eq(self.vs.kth),
                     self.merge.ties.eq(self.vs.ties)]
        return m


def selection_cases(geo, rng):
    """Blocks of final probabilities: ``(name, probs [R][n], present [R][n], final [R], value_keep)``."""
    R, pmax = geo.R, geo.fmt.prob.max
    cases = []

    def rand_present(n, density=0.75):
        p = [rng.random() < density for _ in range(n)]
        p[rng.randrange(n)] = True
        return p

    n = 14
    cases.append(("random", [[rng.randint(0, pmax) for _ in range(n)] for _ in range(R)],
                  [rand_present(n) for _ in range(R)], [1] * R, value_keep_int(0.5)))
    # ties at the cut: all equal; few distinct values; all zero; values a low digit apart
    tie_rows = [[100] * n, [rng.choice([0, 3, 3, 3, 9]) for _ in range(n)], [0] * n,
                [rng.choice([pmax, pmax - 1, 0x7F0, 0x70F, 0x0F0, 0x0FF]) for _ in range(n)]]
    cases.append(("ties", [tie_rows[r % 4] for r in range(R)], [rand_present(n, 0.9) for _ in range(R)],
                  [1] * R, value_keep_int(0.4)))
    n = 11
    top = [[rng.choice([pmax, 5, 5, 0]) for _ in range(n)] for _ in range(R)]
    cases.append(("keep one", top, [rand_present(n, 0.8) for _ in range(R)], [1] * R, 0))
    cases.append(("keep all", [[rng.randint(0, pmax) for _ in range(n)] for _ in range(R)],
                  [rand_present(n) for _ in range(R)], [0] + [1] * (R - 1), 1 << VALUE_KEEP_FRAC))
    n = 16
    single = [False] * n
    single[9] = True
    cases.append(("mixed", [[rng.choice([0, 1, 2, 700, 700, pmax]) for _ in range(n)] for _ in range(R)],
                  [single] + [rand_present(n, 0.5) for _ in range(R - 1)],
                  [r % 2 == 0 for r in range(R)] if R > 2 else [1, 0], value_keep_int(0.25)))
    cases.append(("no final row", [[rng.randint(0, pmax) for _ in range(8)] for _ in range(R)],
                  [rand_present(8) for _ in range(R)], [0] * R, value_keep_int(0.5)))
    cases.append(("one key", [[rng.randint(0, pmax)] for _ in range(R)], [[True]] * R, [1] * R,
                  value_keep_int(0.1)))
    for i in range(4):          # seeded random blocks, drawn from a few values: ties everywhere
        n = rng.randint(2, 16)
        values = [rng.randint(0, pmax) for _ in range(rng.randint(1, 4))]
        cases.append((f"random ties {i}", [[rng.choice(values) for _ in range(n)] for _ in range(R)],
                      [rand_present(n, rng.random()) for _ in range(R)],
                      [int(rng.random() < 0.8) for _ in range(R)], rng.randint(0, 1 << VALUE_KEEP_FRAC)))
    return cases


@pytest.mark.parametrize("cfg", [CFG4, TINY], ids=cfg_id)
def test_value_selection_and_merge_keep_the_golden_top_keys(cfg):
    geo = Geometry.of(cfg)
    R, T = geo.R, geo.T
    rng = random.Random(41)
    dut = SelectAndMerge(geo)
    vs, merge = dut.vs, dut.merge
    cases = selection_cases(geo, rng)
    bank = {}

    def prob_word(addr):
        return bank.get(addr, {"prob": [0] * R, "present": 0})

    items, results = [], []

    async def bench(ctx):
        clock = Clock(ctx)
        for i, (name, probs, present, final, value_keep) in enumerate(cases):
            n = len(probs[0])
            words = [{"prob": [probs[r][j] if final[r] and present[r][j] else 0 for r in range(R)],
                      "present": sum((final[r] and present[r][j]) << r for r in range(R))} for j in range(n)]
            bank.clear()
            bank.update(enumerate(words))
            s = i % 2
            counts = [[rng.randrange(T) for _ in range(R)] for _ in range(2)]     # the other half: noise
            counts[s] = [sum(p) for p in present]
            block = {"rows": sorted(rng.sample(range(T), R)), "valid": (1 << R) - 1, "full": i % 3 == 1,
                     "recompute": 0, "n_keys": n, "final": sum(f << r for r, f in enumerate(final))}
            ctx.set(vs.block, block)
            ctx.set(vs.set, s)
            ctx.set(vs.value_keep, value_keep)
            ctx.set(vs.present_count, counts)
            ctx.set(vs.go, 1)
            await clock.tick()
            ctx.set(vs.go, 0)
            for _ in range(rng.randint(5, 8)):       # pass 2's first word: 6 cycles after pass2_start
                await clock.tick()
            vs_at = None

            async def tick_watching_done():
                nonlocal vs_at
                (high,) = await clock.tick(vs.done)
                if high and vs_at is None:
                    vs_at = clock.cycle - 1

            for j, word in enumerate(words):         # pass 2 writes: a word a cycle, with stalls
                ctx.set(vs.sample, {"key": j, "word": word})
                ctx.set(vs.sample_valid, 1)
                last_sample = clock.cycle
                await tick_watching_done()
                ctx.set(vs.sample_valid, 0)
                while rng.random() < 0.3:
                    await tick_watching_done()
            if vs_at is None:
                vs_at = await clock.until(vs.done, 300, "value selection")
            selection = [py(ctx.get(x)) for x in (vs.pruned, vs.kth, vs.ties)]
            ctx.set(merge.block, block)
            ctx.set(merge.go, 1)
            go = clock.cycle
            await clock.tick()
            ctx.set(merge.go, 0)
            done = await clock.until(merge.done, 200, "merge")
            for _ in range(3):
                await clock.tick()
            entries, finished = py(ctx.get(merge.entries)), py(ctx.get(merge.finished))
            walk = await read_words(clock, merge.walk_read, range(entries))
            results.append(dict(selection=selection, entries=entries, finished=finished, walk=walk,
                                span=(go, done), block=block, idle=py(ctx.get(merge.idle)),
                                vs_latency=vs_at - last_sample))

    simulate(dut, bench, memory_model(vs.prob_read, prob_word), memory_model(merge.prob_read, prob_word),
             random_ready(merge.v_items.ready, random.Random(4), 0.6), stream_monitor(merge.v_items, items))

    for (name, probs, present, final, value_keep), got in zip(cases, results):
        n = len(probs[0])
        present_t = torch.tensor(present)
        counts = kept_counts(value_keep, present_t.sum(-1))
        kept = top_count_per_row(torch.tensor(probs), counts, present_t) & torch.tensor(final).bool()[:, None]
        kept = kept.tolist()
        # the selector: which rows are pruned, their k-th largest probability and kept ties
        pruned = [bool(final[r]) and int(counts[r]) < sum(present[r]) for r in range(R)]
        assert got["selection"][0] == sum(p << r for r, p in enumerate(pruned)), name
        for r in range(R):
            if pruned[r]:
                ordered = sorted((probs[r][j] for j in range(n) if present[r][j]), reverse=True)
                kth = ordered[int(counts[r]) - 1]
                assert got["selection"][1][r] == kth, (name, r)
                assert got["selection"][2][r] == int(counts[r]) - sum(x > kth for x in ordered), (name, r)
        # latency after the sample pass: none without a pruned row (the cycle after the last
        # sample), else at most passes - 1 passes of n_keys + 3 cycles and passes scans of 16
        passes = len(digit_widths(geo.fmt.prob.bits))
        bound = (passes - 1) * (n + 3) + passes * (1 << DIGIT_BITS) if any(pruned) else 1
        assert 1 <= got["vs_latency"] <= bound, (name, got["vs_latency"], bound)
        # the walk list and the V items: the keys some final row keeps, in order
        keys = [j for j in range(n) if any(kept[r][j] for r in range(R))]
        assert got["entries"] == len(keys) and got["finished"] and got["idle"], name
        assert got["walk"] == [{"key": j, "prob": [probs[r][j] if kept[r][j] else 0 for r in range(R)]}
                               for j in keys], name
        start, end = got["span"]
        assert [b for c, b in items if start <= c <= end] == \
            [{"row": j, "msb": 1, "lsb": got["block"]["full"], "slot": 0, "last": 0} for j in keys], name
        # each final row keeps exactly its kept count, from its present keys
        for r in range(R):
            assert sum(kept[r]) == (int(counts[r]) if final[r] else 0)
    assert len(items) == sum(r["entries"] for r in results)


# ---- 5. OutputUnit ------------------------------------------------------------------------------

def output_cases(geo, rng):
    """Blocks of P·V: ``(name, probs [R][m], v [m][d], final [R], full)``; random probabilities of
    a row add up to at most ``1 + T`` LSBs (what the config's accumulator bound assumes)."""
    R, T, d = geo.R, geo.T, geo.d
    act, pmax = geo.fmt.act, geo.fmt.prob.max

    def probs_row(m):
        cuts = sorted(rng.randint(0, 2048 + T) for _ in range(m - 1))
        return [min(pmax, b - a) for a, b in zip([0] + cuts, cuts + [2048 + T])]

    cases = []
    m = 6
    cases.append(("random", [probs_row(m) for _ in range(R)], random_act(rng, act, m, d), [1] * R, 1))
    # saturation both ways (sums past the softmax bound, still inside the accumulator), a zero
    # row, rounding ties (acc = +-1024, +-3072: half up, so 1, 0, 2, -1), one unrounded half LSB
    v = [[act.max] * d, [act.max] * d, [act.min] * d, [act.min] * d,
         [rng.choice([1, -1, 3, -3]) for _ in range(d)]]
    special = [[pmax, pmax, 0, 0, 0], [0, 0, pmax, pmax, 0], [0] * 5, [0, 0, 0, 0, 1024],
               [pmax, 0, 0, 0, 512], [0, 0, 0, 0, 512]]
    cases.append(("extremes", [special[r % len(special)] for r in range(R)], v, [1] * R, 0))
    cases.append(("some final", [probs_row(4) for _ in range(R)], random_act(rng, act, 4, d),
                  [r % 2 for r in range(R)], 1))
    cases.append(("skip", None, None, [0] * R, 0))
    cases.append(("last final", [probs_row(1) for _ in range(R)], random_act(rng, act, 1, d),
                  [0] * (R - 1) + [1], 0))
    cases.append(("none final", [probs_row(2) for _ in range(R)], random_act(rng, act, 2, d), [0] * R, 1))
    return cases


@pytest.mark.parametrize("cfg", [CFG4, TINY, CFG2x3], ids=cfg_id)
def test_output_unit_rounds_saturates_and_sends_final_rows(cfg):
    geo = Geometry.of(cfg)
    R, C, W, T, fmt = geo.R, geo.C, geo.W, geo.T, geo.fmt
    half = 1 << (fmt.prob.frac - 1)
    rng = random.Random(51)
    dut = OutputUnit(geo)
    cases = output_cases(geo, rng)
    p_ready = [1.0]
    beats, dones, spans = [], [], []

    async def ready_driver(ctx):
        ready_rng = random.Random(6)
        while True:
            ctx.set(dut.out.ready, ready_rng.random() < p_ready[0])
            await ctx.tick()

    async def bench(ctx):
        clock = Clock(ctx)
        for i, (name, probs, v, final, full) in enumerate(cases):
            rows = sorted(rng.sample(range(T), R))
            block = {"rows": rows, "valid": (1 << R) - 1, "full": full, "recompute": 0, "n_keys": 0,
                     "final": sum(f << r for r, f in enumerate(final))}
            ctx.set(dut.block, block)
            p_ready[0] = 1.0 if i == 0 else 0.4
            start = clock.cycle
            if probs is None:          # no walk: skip, done at once
                ctx.set(dut.skip, 1)
                (done,) = await clock.tick(dut.done)
                ctx.set(dut.skip, 0)
                assert done
                spans.append((start, start, start, rows, block))
                continue
            last = None
            for t in range(W):
                # as the grid delivers them: starting at the rounding half
                sums = [[half + sum(probs[r][j] * (v[j][t * C + c] if t * C + c < geo.d else 0)
                                    for j in range(len(v))) for c in range(C)] for r in range(R)]
                ctx.set(dut.result_valid, 1)
                ctx.set(dut.result_qk, 0)
                ctx.set(dut.result, sums)
                ctx.set(dut.result_tag, {"key": 0, "chunk": t, "end": t == W - 1})
                last = clock.cycle
                await clock.tick()
                ctx.set(dut.result_valid, 0)
                for _ in range(rng.choice([0, 0, 1, 2])):
                    # a Q·Kᵀ result of the next block in the gap: not ours
                    qk = rng.random() < 0.5
                    ctx.set(dut.result_valid, qk)
                    ctx.set(dut.result_qk, 1)
                    ctx.set(dut.result_tag, {"key": 3, "chunk": W - 1, "end": 1})
                    await clock.tick()
                    ctx.set(dut.result_valid, 0)
            end = await clock.until(dut.done, 40 * R * (W + 2), "output done")
            spans.append((start, last, end, rows, block))
            for _ in range(rng.randint(0, 3)):
                await clock.tick()
        for _ in range(10):
            await clock.tick()

    simulate(dut, bench, ready_driver, stream_monitor(dut.out, beats), pulse_monitor(dut.done, dones))

    assert dones == [end for _, _, end, _, _ in spans]
    for (name, probs, v, final, full), (start, last, end, rows, block) in zip(cases, spans):
        mine = [(c, b) for c, b in beats if start <= c <= end]
        if probs is None:
            assert mine == [], name
            continue
        out = pv_int(torch.tensor(probs), torch.tensor(v), fmt)
        want = [{"row": rows[r], "data": out[r].tolist(), "magnitude": int(out[r].abs().sum()),
                 "full_precision": full} for r in range(R) if final[r]]
        assert [b for _, b in mine] == want, name
        if mine:
            assert mine[-1][0] == end, name      # done with the last row's beat
            if name == "random":                 # no back-pressure: the documented timing
                cycles = [c for c, _ in mine]
                assert all(b - a == W + 1 for a, b in zip(cycles, cycles[1:])), name
    assert len(beats) == sum(sum(f) for name, p, _, f, _ in cases if p is not None)
    extremes = pv_int(torch.tensor(cases[1][1]), torch.tensor(cases[1][2]), fmt)
    assert fmt.act.max in extremes and fmt.act.min in extremes


# ---- 6. FetchUnit -------------------------------------------------------------------------------

TENSORS = (TENSOR_Q, TENSOR_K, TENSOR_V)


def fetch_items(geo, rng, n):
    """Items of one head: Q rows once each (then the LSB plane of a few again, as a recomputed
    block asks); K rows over and over (two blocks of keys, some wanting nothing); V rows at random."""
    R = geo.R
    q_rows = rng.sample(range(n), min(n, 3 * R))
    q = [{"row": row, "msb": 1, "lsb": int(rng.random() < 0.3)} for row in q_rows]
    q += [{"row": it["row"], "msb": 0, "lsb": 1} for it in q if not it["lsb"]][:R]
    k = [{"row": j, "msb": int(rng.random() < 0.8), "lsb": int(full and rng.random() < 0.9)}
         for full in (0, 1) for j in range(min(n, 12))]
    v = [{"row": rng.randrange(n), "msb": 1, "lsb": int(rng.random() < 0.4)} for _ in range(18)]
    items = {}
    for tensor, lst in ((TENSOR_Q, q), (TENSOR_K, k), (TENSOR_V, v)):
        items[tensor] = [dict(it, slot=i % R, last=int(i % R == R - 1)) for i, it in enumerate(lst)]
    return items


@pytest.mark.parametrize("cfg", [CFG4, CFG3x8, TINY], ids=cfg_id)
def test_fetch_unit_requests_each_row_once_and_releases_in_order(cfg):
    geo = Geometry.of(cfg)
    T, d, M, L = geo.T, geo.d, geo.M, geo.L
    rng = random.Random(61)
    dut = FetchUnit(geo)
    ins = {TENSOR_Q: dut.q_in, TENSOR_K: dut.k_in, TENSOR_V: dut.v_in}
    outs = {TENSOR_Q: dut.q_out, TENSOR_K: dut.k_out, TENSOR_V: dut.v_out}
    reads = {TENSOR_Q: dut.q_read, TENSOR_K: dut.k_read, TENSOR_V: dut.v_read}
    lane_mask = (1 << max(M, L)) - 1

    memory = {}           # (tensor, row) -> act values of the current head

    def new_head_memory():
        for tensor in TENSORS:
            for row in range(T):
                memory[tensor, row] = [rng.randint(geo.fmt.act.min, geo.fmt.act.max) for _ in range(d)]

    def plane_of(tensor, plane, row):
        msb, lsb = split_planes(torch.tensor(memory[tensor, row]), L)
        return (msb if plane == PLANE_MSB else lsb).tolist()

    queues = {tensor: [] for tensor in TENSORS}
    out_ready = {TENSOR_Q: 0.0, TENSOR_K: 0.6, TENSOR_V: 0.6}
    log = {"in": [], "out": [], "req": [], "resp": []}

    def source(tensor):
        async def proc(ctx):
            src_rng = random.Random(tensor)
            port = ins[tensor]
            while True:
                if queues[tensor] and src_rng.random() < 0.7:
                    ctx.set(port.valid, 1)
                    ctx.set(port.payload, queues[tensor].pop(0))
                    while not (await ctx.tick().sample(port.ready))[2]:
                        pass
                    ctx.set(port.valid, 0)
                else:
                    await ctx.tick()
        return proc

    def sink(tensor):
        async def proc(ctx):
            sink_rng, port, cycle = random.Random(10 + tensor), outs[tensor], 0
            while True:
                ctx.set(port.ready, sink_rng.random() < out_ready[tensor])
                _, _, valid, ready, payload = await ctx.tick().sample(port.valid, port.ready, port.payload)
                if valid and ready:
                    log["out"].append((cycle, tensor, py(payload)))
                cycle += 1
        return proc

    def in_monitor(tensor):
        async def proc(ctx):
            port, cycle = ins[tensor], 0
            async for _, _, valid, ready, payload in ctx.tick().sample(port.valid, port.ready, port.payload):
                if valid and ready:
                    log["in"].append((cycle, tensor, py(payload)))
                cycle += 1
        return proc

    async def plane_memory(ctx):
        mem_rng, pending, cycle = random.Random(7), [], 0
        while True:
            ctx.set(dut.mem_req.ready, mem_rng.random() < 0.7)
            head = pending[0] if pending and pending[0][0] <= cycle else None
            ctx.set(dut.mem_resp.valid, head is not None)
            if head is not None:
                ctx.set(dut.mem_resp.payload, {"data": [x & lane_mask for x in plane_of(*head[1])]})
            _, _, rq_valid, rq_ready, rq, rs_valid, rs_ready = await ctx.tick().sample(
                dut.mem_req.valid, dut.mem_req.ready, dut.mem_req.payload,
                dut.mem_resp.valid, dut.mem_resp.ready)
            if rq_valid and rq_ready:
                rq = py(rq)
                key = (rq["tensor"], rq["plane"], rq["row"])
                log["req"].append((cycle, key))
                pending.append((cycle + 1 + mem_rng.choice([0, 0, 1, 3, 8]), key))
            if rs_valid and rs_ready:
                log["resp"].append((cycle, pending.pop(0)[1]))
            cycle += 1

    heads = []

    async def bench(ctx):
        clock = Clock(ctx)
        for h, n in enumerate((20, 12)):
            new_head_memory()
            items = fetch_items(geo, rng, n)
            ctx.set(dut.n, n)
            ctx.set(dut.start, 1)
            start = clock.cycle
            await clock.tick()
            ctx.set(dut.start, 0)
            for tensor in TENSORS:
                queues[tensor].extend(items[tensor])
            clear_cycles = 0
            while (await clock.tick(dut.clearing))[0]:
                clear_cycles += 1
            assert clear_cycles == n and py(ctx.get(dut.bytes_fetched)) == 0
            if h == 0:      # Q held back: K and V must go on without it
                for _ in range(120):
                    await clock.tick()
            out_ready[TENSOR_Q] = 0.6
            total = sum(len(items[t]) for t in TENSORS)
            for _ in range(800):
                await clock.tick()
                if len([o for o in log["out"] if o[0] >= start]) == total:
                    break
            else:
                raise AssertionError("items not all released")
            for _ in range(12):
                await clock.tick()
            buffers = {}
            for tensor in TENSORS:
                words = await read_words(clock, reads[tensor], range(n))
                buffers.update({(tensor, row): w for row, w in enumerate(words)})
            latency, end = None, clock.cycle
            if h == 1:      # an item whose rows are on chip, into an idle unit
                out_ready[TENSOR_K] = 1.0
                queues[TENSOR_K].append(dict(items[TENSOR_K][0], slot=0, last=0))
                accepted = await clock.until(dut.k_in.ready, 50, "k accepted")
                released = await clock.until(dut.k_out.valid, 50, "k released")
                latency = released - accepted
                for _ in range(3):
                    await clock.tick()
            heads.append(dict(n=n, start=start, end=end, items=items, buffers=buffers,
                              bytes=py(ctx.get(dut.bytes_fetched)), latency=latency,
                              memory=dict(memory)))

    simulate(dut, bench, plane_memory, *[source(t) for t in TENSORS], *[sink(t) for t in TENSORS],
             *[in_monitor(t) for t in TENSORS])

    byte_size = {PLANE_MSB: plane_row_bytes(d, M), PLANE_LSB: plane_row_bytes(d, L)}
    for h, head in enumerate(heads):
        start, end, n = head["start"], head["end"], head["n"]

        def span(entries, start=start, end=end):
            return [e[1:] if len(e) > 2 else e[1] for e in entries if start <= e[0] < end]

        accepted = [(c, t, it) for c, t, it in log["in"] if start <= c < end]
        assert len({c for c, _, _ in accepted}) == len(accepted)        # one item a cycle
        assert all(c > start + n for c, _, _ in accepted), "items wait while clearing"
        # the requests: per item in arrival order, MSB then LSB, K/V planes only the first time
        expected, seen, last_seq = [], set(), []
        for _, tensor, it in accepted:
            for plane, wanted in ((PLANE_MSB, it["msb"]), (PLANE_LSB, it["lsb"])):
                key = (tensor, plane, it["row"])
                if wanted and (tensor == TENSOR_Q or key not in seen):
                    expected.append(key)
                    seen.add(key)
            last_seq.append(len(expected))
        requests = span(log["req"])
        assert requests == expected, f"head {h}"
        assert len(set(requests)) == len(requests), f"head {h}: a plane row requested twice"
        # items leave in order per tensor, unchanged, once every request up to theirs is answered
        answered = [c for c, _ in log["resp"] if start <= c < end]
        assert span(log["resp"]) == expected[:len(answered)] and len(answered) == len(expected)
        released = [(c, t, it) for c, t, it in log["out"] if start <= c < end]
        for tensor in TENSORS:
            sent = [(it, seq) for (_, t, it), seq in zip(accepted, last_seq) if t == tensor]
            left = [(c, it) for c, t, it in released if t == tensor]
            assert [it for _, it in left] == [it for it, _ in sent] == head["items"][tensor], \
                f"head {h}, tensor {tensor}"
            for (cycle, _), (_, seq) in zip(left, sent):
                assert sum(a < cycle for a in answered) >= seq, f"head {h}: released before its rows"
        # bytes: a plane row's bytes per response of this head
        assert head["bytes"] == sum(byte_size[plane] for _, plane, _ in expected)
        # the buffers hold the planes of the head's memory
        for tensor, plane, row in expected:
            word = head["buffers"][tensor, row]
            msb, lsb = split_planes(torch.tensor(head["memory"][tensor, row]), L)
            assert word["msb" if plane == PLANE_MSB else "lsb"] == \
                (msb if plane == PLANE_MSB else lsb).tolist(), (h, tensor, plane, row)
            if plane == PLANE_LSB and (tensor, PLANE_MSB, row) in seen:
                assert join_planes(torch.tensor(word["msb"]), torch.tensor(word["lsb"]), L).tolist() == \
                    head["memory"][tensor, row]
    # head 1: Q held back, K and V went on
    first_q = min(c for c, t, _ in log["out"] if t == TENSOR_Q)
    assert sum(1 for c, t, _ in log["out"] if t != TENSOR_Q and c < first_q) >= 20
    # head 2 asks again for rows head 1 fetched: the start forgot them
    again = {(t, p, r) for _, (t, p, r) in log["req"] if t != TENSOR_Q}
    assert len(again) < sum(1 for c, (t, _, _) in log["req"] if t != TENSOR_Q)
    assert heads[1]["latency"] == 4


def test_fetch_unit_keeps_back_to_back_query_items_with_two_pe_rows():
    """Two Q items in a row with R = 2, memory always ready, every answer at once: both leave.
    (Regression: with the pending FIFO a ``SyncFIFOBuffered`` of depth R, written without looking at
    ``w_rdy``, the second was lost: at depth 2 it is not ready the cycle after a write.)"""
    geo = Geometry.of(TINY)
    dut = FetchUnit(geo)
    requested, released = [], []

    async def bench(ctx):
        ctx.set(dut.q_out.ready, 1)
        ctx.set(dut.mem_req.ready, 1)
        for slot, row in enumerate((5, 6)):
            ctx.set(dut.q_in.valid, 1)
            ctx.set(dut.q_in.payload, {"row": row, "msb": 1, "lsb": 0, "slot": slot, "last": slot})
            while not (await ctx.tick().sample(dut.q_in.ready))[2]:
                pass
        ctx.set(dut.q_in.valid, 0)
        for _ in range(30):
            ctx.set(dut.mem_resp.valid, len(requested) > 0)     # answer whatever is in flight
            _, _, rq_valid, rq, out_valid, out = await ctx.tick().sample(
                dut.mem_req.valid, dut.mem_req.payload, dut.q_out.valid, dut.q_out.payload)
            if rq_valid:
                requested.append(rq.row)
            if out_valid:
                released.append(out.row)

    simulate(dut, bench)
    assert requested == [5, 6]
    assert released == [5, 6]


# ---- 7. MaskUnit --------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [CFG4, TINY, CFG2x3], ids=cfg_id)
def test_mask_unit_loads_block_rows_into_its_set(cfg):
    geo = Geometry.of(cfg)
    R, C, T, NCH = geo.R, geo.C, geo.T, geo.NCH
    rng = random.Random(71)
    dut = MaskUnit(geo)
    full = (1 << T) - 1
    masks = {row: rng.getrandbits(T) for row in range(T)}
    masks[3], masks[4] = full, 0                 # all present, none (the unit does not care)
    requests, dones = [], []

    async def mask_source(ctx):
        """Answer each request, in order, after a random latency."""
        src_rng, pending, cycle = random.Random(8), [], 0
        while True:
            ctx.set(dut.mask_req.ready, src_rng.random() < 0.7)
            head = pending[0] if pending and pending[0][0] <= cycle else None
            ctx.set(dut.mask.valid, head is not None)
            if head is not None:
                ctx.set(dut.mask.payload, {"keys": masks[head[1]]})
            _, _, rq_valid, rq_ready, rq, m_valid, m_ready = await ctx.tick().sample(
                dut.mask_req.valid, dut.mask_req.ready, dut.mask_req.payload, dut.mask.valid, dut.mask.ready)
            if rq_valid and rq_ready:
                requests.append((cycle, py(rq)["row"]))
                pending.append((cycle + 1 + src_rng.choice([0, 1, 4]), py(rq)["row"]))
            if m_valid and m_ready:
                pending.pop(0)
            cycle += 1

    def block(rows, valid_slots, n_keys):
        return {"rows": rows + [0] * (R - len(rows)), "valid": (1 << valid_slots) - 1, "full": 0,
                "recompute": 0, "n_keys": n_keys, "final": 0}

    plan = [  # (set, masked, block)
        (0, 1, block([3, 4] + rng.sample(range(5, T), R - 2), R, 13)),
        (1, 1, block(rng.sample(range(T), R - 1), R - 1, T)),
        (0, 0, block(rng.sample(range(T), R), R, 7)),            # no mask: nothing loaded
        (1, 1, block(rng.sample(range(T), 1), 1, 1)),             # one row, one key
    ]
    banks, spans = [], []

    async def bench(ctx):
        clock = Clock(ctx)
        for bank_set, masked, blk in plan:
            ctx.set(dut.block, blk)
            ctx.set(dut.set, bank_set)
            ctx.set(dut.masked, masked)
            ctx.set(dut.go, 1)
            go = clock.cycle
            (done,) = await clock.tick(dut.done)
            ctx.set(dut.go, 0)
            if masked:
                assert not done
                done = await clock.until(dut.done, 40 * R * NCH, "mask rows loaded")
            else:
                assert done
                done = go
            for _ in range(rng.randint(0, 4)):
                await clock.tick()
            spans.append((go, done))
            words = {}
            for port in (dut.present_read, dut.union_read):
                got = await read_words(clock, port, range(2 * NCH))
                words[port is dut.union_read] = got
            banks.append(words)

    simulate(dut, bench, mask_source, pulse_monitor(dut.done, dones))

    assert dones == [done for _, done in spans]
    contents = {0: {}, 1: {}}        # set -> slot -> (mask, chunks stored)
    for (bank_set, masked, blk), (go, done), words in zip(plan, spans, banks):
        slots = bin(blk["valid"]).count("1")
        got_rows = [row for c, row in requests if go <= c <= done]
        assert got_rows == (blk["rows"][:slots] if masked else [])
        if masked:
            for r in range(slots):
                contents[bank_set][r] = (masks[blk["rows"][r]], -(-blk["n_keys"] // C))
        assert words[False] == words[True]       # both readers see the same banks
        for s in (0, 1):
            for r, (mask, chunks) in contents[s].items():
                for ch in range(chunks):
                    assert words[False][s * NCH + ch][r] == (mask >> (ch * C)) & ((1 << C) - 1), \
                        (bank_set, s, r, ch)
    assert len(requests) == sum(bin(b["valid"]).count("1") for _, m, b in plan if m)


def test_output_unit_first_row_latency_matches_its_docstring():
    geo = Geometry.of(CFG4)
    R, C, W = geo.R, geo.C, geo.W
    dut = OutputUnit(geo)
    seen = {}

    async def bench(ctx):
        clock = Clock(ctx)
        ctx.set(dut.out.ready, 1)
        ctx.set(dut.block, {"rows": list(range(R)), "valid": (1 << R) - 1, "full": 1, "recompute": 0,
                            "n_keys": 0, "final": (1 << R) - 1})
        for t in range(W):
            ctx.set(dut.result_valid, 1)
            ctx.set(dut.result, [[1 << 11] * C] * R)
            ctx.set(dut.result_tag, {"key": 0, "chunk": t, "end": t == W - 1})
            seen["last"] = clock.cycle
            await clock.tick()
        ctx.set(dut.result_valid, 0)
        seen["first"] = await clock.until(dut.out.valid, 50, "first row")

    simulate(dut, bench)
    assert seen["first"] - seen["last"] == W + 4
