"""Properties of the top-k engine's results, written against its interface only.

The harness watches ``cmd``, ``scores`` and ``indices`` and keeps its own state (is a run open,
``min(k, n)`` of the open run, indices emitted so far, the last index emitted): nothing here
reads a signal inside :class:`spattn.hw.topk.TopKEngine`, so the same proofs hold any engine with
that interface (``pytest tests/formal/test_topk_properties.py`` re-runs them).

Environment (assumed): ``n <= max_tokens``; at most two runs open at once (the engine may take
the next command while it still emits a run: the harness keeps the open runs in order); a command
only once the previous run's scores are all taken; exactly ``ceil(n / topk_stream_lanes)`` score
beats per run, none outside a run; every input stream obeys the stream contract. Scores and
stalls are free.

Properties (asserted in every cycle):

* ``indices`` is valid only while a run is open (no beat before its command or after its ``last``);
* indices are strictly ascending within a beat and across the beats of a run, and below ``n``;
* the indices of a run never exceed ``min(k, n)``, and ``last`` is set exactly on the beat that
  brings them to ``min(k, n)``: so each run has one ``last``, on a beat with ``min(k, n)`` indices
  in all (a run with ``k = 0`` is one beat of ``count = 0`` with ``last``);
* ``count <= P`` (also proven by k-induction in ``test_stream_contracts.py``).

These need the harness's counters to agree with the engine's internal state, which k-induction
cannot see, so they are bounded checks, to a depth past the first complete runs (the covers
report the step at which a run of each kind can complete).
"""

import dataclasses

import pytest
from amaranth.hdl import Cat, Mux, Signal
from amaranth.lib import data

from spattn.config import preset
from spattn.formats import bits_for
from spattn.sim.formal import check, prove

pytestmark = pytest.mark.formal

TINY = preset("tiny")

#: Configurations the top-k properties are checked on: (config, depth of the bounded check,
#: solver). ``micro``: 4 tokens, P = 2, 2 score lanes, 3-bit scores, every run by radix selection;
#: ``micro_pairs``: the same with every run ranked by all pairs (a mix of both kinds to depth 28
#: took 289 s; the stream contract with both kinds is proven in ``test_stream_contracts.py``). The
#: depth must let every kind of run complete (``test_topk_runs_complete_within_depth`` says at which
#: step each does).
MICRO = dataclasses.replace(TINY, max_tokens=4, topk_comparators=2, topk_stream_lanes=2, score_bits=3,
                            topk_pair_tokens=0)
TOPK_CONFIGS = {
    "micro": (MICRO, 28, "boolector"),
    "micro_pairs": (dataclasses.replace(MICRO, topk_pair_tokens=4), 18, "boolector"),
}
#: Deeper checks (marker ``formal_slow``, not in ``make test``): past the engine's worst case.
TOPK_DEEP = {
    "micro": 40,
    "micro_pairs": 28,
}

def engine(cfg):
    """The engine under proof: whatever :mod:`spattn.hw.topk` holds now."""
    from spattn.hw.topk import TopKEngine
    return TopKEngine(cfg)


def topk_monitor(cfg, properties=("order", "runs", "count"), queue=2, cover_overlap=False):
    """A harness monitor for ``cfg``'s engine: the environment's rules and ``properties``.

    The engine may take the next command while it still emits the previous run's indices, so the
    harness keeps up to ``queue`` open runs in order (``min(k, n)`` and ``n`` of each); index beats
    belong to the oldest, whose ``last`` closes it."""
    p, lanes, t = cfg.topk_comparators, cfg.topk_stream_lanes, cfg.max_tokens

    def monitor(m, dut):
        cmd, scores, out = dut.cmd, dut.scores, dut.indices
        cnt = bits_for(t + p)
        runs_open = Signal(range(queue + 1), name="runs_open")
        wants = [Signal(cnt, name=f"run{i}_want") for i in range(queue)]      # min(k, n)
        ns = [Signal(cnt, name=f"run{i}_n") for i in range(queue)]
        open_, want, n_run = runs_open != 0, wants[0], ns[0]
        emitted = Signal(cnt, name="run_emitted")           # of the oldest open run
        owed = Signal(cnt, name="scores_owed")              # of the newest run
        seen = Signal(name="run_seen_index")
        last_index = Signal(cfg.index_bits, name="run_last_index")
        runs = Signal(4, name="runs_done")

        cmd_take = cmd.valid & cmd.ready
        out_take = out.valid & out.ready
        closes = out_take & out.payload.last
        count = out.payload.count
        k, n = cmd.payload.k, cmd.payload.n
        # the queue: a closed run leaves the front, a new one joins at the back
        for i in range(queue):
            if i + 1 < queue:
                with m.If(closes):
                    m.d.sync += [wants[i].eq(wants[i + 1]), ns[i].eq(ns[i + 1])]
            with m.If(cmd_take & (runs_open - closes == i)):
                m.d.sync += [wants[i].eq(Mux(k > n, n, k)), ns[i].eq(n)]
        m.d.sync += runs_open.eq(runs_open + cmd_take - closes)
        with m.If(cmd_take):
            m.d.sync += owed.eq((n + lanes - 1) // lanes)
        with m.If(scores.valid & scores.ready):
            m.d.sync += owed.eq(owed - 1)
        with m.If(out_take):
            m.d.sync += emitted.eq(emitted + count)
            with m.If(count != 0):
                m.d.sync += seen.eq(1)
                for c in range(1, p + 1):
                    with m.If(count == c):
                        m.d.sync += last_index.eq(out.payload.index[c - 1])
            with m.If(out.payload.last):
                m.d.sync += [emitted.eq(0), seen.eq(0), runs.eq(Mux(runs == 15, 15, runs + 1))]

        checks = [
            ("assume", ~cmd.valid | (n <= t), "cmd.n <= max_tokens"),
            ("assume", ~cmd.valid | (runs_open < queue), f"at most {queue} runs open"),
            ("assume", ~cmd.valid | (owed == 0), "a command after the previous run's scores"),
            ("assume", ~scores.valid | (open_ & (owed != 0)), "ceil(n / lanes) score beats per run"),
        ]
        if "count" in properties:
            checks.append(("assert", ~out.valid | (count <= p), f"indices.count <= P = {p}"))
        if "runs" in properties:
            checks += [
                ("assert", ~out.valid | open_, "no index beat outside a run"),
                ("assert", ~out.valid | (emitted + count <= want), "at most min(k, n) indices a run"),
                ("assert", ~out.valid | (out.payload.last == (emitted + count == want)),
                 "last exactly on the beat completing min(k, n) indices"),
            ]
        if "order" in properties:
            index = out.payload.index
            checks.append(("assert", ~out.valid | (count == 0) | ~seen | (index[0] > last_index),
                           "indices ascending across beats"))
            for i in range(p):
                checks.append(("assert", ~out.valid | (count <= i) | (index[i] < n_run),
                               f"index[{i}] < n"))
                if i:
                    checks.append(("assert", ~out.valid | (count <= i) | (index[i] > index[i - 1]),
                                   f"index[{i}] > index[{i - 1}] within a beat"))
        checks += [
            ("cover", out_take & out.payload.last & (want == n_run) & (n_run == t),
             "run of k = n = max_tokens done"),
            ("cover", out_take & out.payload.last & (want == 0), "run of k = 0 done"),
            ("cover", out_take & out.payload.last & (want != 0) & (want < n_run) & (n_run == t),
             "run of 0 < k < n = max_tokens done"),
            ("cover", runs == 2, "two runs done"),
        ]
        if cover_overlap:
            checks.append(("cover", cmd_take & open_, "a command taken while a run is open"))
        return checks
    return monitor


ALL = ("order", "runs", "count")


@pytest.mark.parametrize("config", sorted(TOPK_CONFIGS))
def test_topk_properties(config, tmp_path):
    """Every property on ``config``'s engine: a bounded check to the configuration's depth."""
    cfg, depth, solver = TOPK_CONFIGS[config]
    check(f"topk_{config}_properties", engine(cfg), mode="bmc", depth=depth, solver=solver,
          workdir=tmp_path, monitor=topk_monitor(cfg, properties=ALL))


@pytest.mark.parametrize("config", sorted(TOPK_CONFIGS))
def test_topk_runs_complete_within_depth(config, tmp_path):
    """The bounded check is not vacuous: within its depth the engine completes a run with k = 0,
    one with 0 < k < n = max_tokens, one with k = n = max_tokens, and two runs back to back. (An
    engine that needs more cycles fails here: raise the configuration's depth.)"""
    cfg, depth, solver = TOPK_CONFIGS[config]
    result = prove(f"topk_{config}_cover", engine(cfg), mode="cover", depth=depth, solver=solver,
                   workdir=tmp_path, monitor=topk_monitor(cfg, properties=()))
    assert result.passed, result


@pytest.mark.formal_slow
@pytest.mark.parametrize("config", sorted(TOPK_DEEP))
def test_topk_properties_deep(config, tmp_path):
    cfg, _, solver = TOPK_CONFIGS[config]
    check(f"topk_{config}_properties_deep", engine(cfg), mode="bmc", depth=TOPK_DEEP[config], solver=solver,
          workdir=tmp_path, monitor=topk_monitor(cfg, properties=ALL))


def _swap_lanes(cfg):
    """The engine with index lanes 0 and 1 of every beat swapped (the order breaks)."""
    from spattn.hw.topk import topk_indices_layout
    layout = topk_indices_layout(cfg)

    def change(value, glitch):
        view = data.View(layout, value)
        lanes = [view.index[i] for i in range(cfg.topk_comparators)]
        lanes[0], lanes[1] = lanes[1], lanes[0]
        return Cat(*lanes, view.count, view.last)
    return change


def _drop_last(cfg):
    """The engine with ``last`` cleared while a free input is high (a run never closes)."""
    from spattn.hw.topk import topk_indices_layout
    layout = topk_indices_layout(cfg)

    def change(value, glitch):
        view = data.View(layout, value)
        return Cat(view.index, view.count, view.last & ~glitch)
    return change


@pytest.mark.parametrize("mutation, prop, message", [
    ("swap_lanes", "order", "index[1] > index[0] within a beat"),
    ("drop_last", "runs", "last exactly on the beat completing min(k, n) indices"),
])
def test_topk_mutant_fails(mutation, prop, message, tmp_path):
    """Engines broken here, inside the test, make the run properties fail: they can fail."""
    from mutants import Mutant
    cfg, depth, solver = TOPK_CONFIGS["micro"]
    change = {"swap_lanes": _swap_lanes, "drop_last": _drop_last}[mutation](cfg)
    result = prove(f"topk_{mutation}", Mutant(engine(cfg), {("indices", "payload"): change}), mode="bmc",
                   depth=depth, solver=solver, workdir=tmp_path,
                   monitor=topk_monitor(cfg, properties=(prop,)))
    assert result.status == "FAIL", result
    assert message in result.detail, result
