"""Stream-contract proofs of the attention core's units (:mod:`spattn.hw.attention`), each on its
own (:mod:`spattn.sim.formal`).

The rules each unit's driver keeps (the scheduler, :mod:`spattn.hw.attention.schedule`) are
assumptions: a ``go`` only while the unit is idle (or, for the mask unit, after its ``done``), a
block descriptor that holds while the unit works on it, P·V results for the output unit only
while it is idle, and read ports that behave as synchronous memory ports (data held while ``en``
is low). Units without an ``Out`` stream (score unit, value selector, scheduler, grid) have no
stream contract of their own; the grid's ``qk``/``pv`` inputs are always ready (asserted here),
which is what lets the Q·Kᵀ and P·V feeds send their steps without looking at ``ready``: their
contract is proven under that assumption, where it reduces to "no stall ever happens".
KeptMerge is in ``test_stream_contracts.py``.

k-induction where it converges; the mask, fetch and output units hold state the harness cannot
see (the mask unit's loading flag, the fetch unit's pending-item sequence numbers, the output
unit's gather/present phases), so their induction meets unreachable states and they get bounded
checks past their first stalled output (a cover run reaches it at step 2, 5 and 13).
"""

import dataclasses

import pytest
from amaranth.hdl import Signal, Value
from amaranth.lib.wiring import Flow

from spattn.config import preset
from spattn.sim.formal import check

pytestmark = pytest.mark.formal

TINY = preset("tiny")
#: A smaller core for the blocks whose bounded check is slow on ``tiny``: 8 tokens, 4 head dimensions.
SMALL = dataclasses.replace(TINY, max_tokens=8, head_dim=4, topk_comparators=2, topk_stream_lanes=2)


def geo(cfg=TINY):
    from spattn.hw.attention.common import Geometry
    return Geometry.of(cfg)


def read_ports_hold(m, dut):
    """Every read port the DUT reads through (``addr``/``en`` out, ``data`` in) behaves as a
    synchronous memory read port does: ``data`` holds while ``en`` was low in the previous cycle."""
    out = []
    flows = {path: member.flow for path, member, _ in dut.signature.flatten(dut)}
    for name, member in dut.signature.members.items():
        if not member.is_signature or set(member.signature.members) != {"addr", "en", "data"}:
            continue
        if flows.get((name, "en")) != Flow.Out:
            continue              # the DUT serves this port (it is the memory)
        port = getattr(dut, name)
        data = Value.cast(port.data)
        prev_en, prev_data = Signal(name=f"{name}_prev_en"), Signal(len(data), name=f"{name}_prev_data")
        started = Signal(name=f"{name}_started")
        m.d.sync += [prev_en.eq(port.en), prev_data.eq(data), started.eq(1)]
        out.append(("assume", ~started | prev_en | (data == prev_data), f"{name}.data held while en is low"))
    return out


def go_when_idle(dut):
    return [(~dut.go | dut.idle, "go only when idle")]


def held_while_busy(*names):
    """Inputs ``names`` of the DUT keep their value while ``idle`` is low (the scheduler moves a
    unit's block on only after the unit is done with it)."""
    def monitor(m, dut):
        out = []
        was_busy = Signal(name="was_busy")
        m.d.sync += was_busy.eq(~dut.idle)
        for name in names:
            value = Value.cast(getattr(dut, name))
            prev = Signal(len(value), name=f"prev_{name}")
            m.d.sync += prev.eq(value)
            out.append(("assume", ~(was_busy & ~dut.idle) | (value == prev), f"{name} held while busy"))
        return out
    return monitor


def mask_unit_monitor(m, dut):
    """The scheduler starts the mask unit's next block only after the previous one's ``done``."""
    loading = Signal(name="loading")
    with m.If(dut.go & dut.masked):
        m.d.sync += loading.eq(1)
    with m.Elif(dut.done):
        m.d.sync += loading.eq(0)
    return [("assume", ~dut.go | ~loading, "go only after done")]


def output_monitor(m, dut):
    """P·V results reach the output unit only while it is idle (the scheduler starts the next P·V
    walk after the output unit's ``done``), and its block holds while it works."""
    out = held_while_busy("block")(m, dut)
    out.append(("assume", ~(dut.result_valid & ~dut.result_qk) | dut.idle, "P·V results only while idle"))
    return out


def unit(name, cfg=TINY):
    from spattn.hw.attention import fetch, masks, output, pv_feed, qk_feed, scans, softmax_unit
    classes = {"query_scan": scans.QueryScan, "key_scan": scans.KeyScan, "mask_unit": masks.MaskUnit,
               "fetch": fetch.FetchUnit, "output": output.OutputUnit, "softmax": softmax_unit.SoftmaxUnit,
               "qk_feed": qk_feed.QKFeed, "pv_feed": pv_feed.PVFeed}
    return lambda: classes[name](geo(cfg))


def core(cfg=SMALL):
    from spattn.hw.attention.core import AttentionCore
    return AttentionCore(cfg)


def core_legal(dut):
    return [(~dut.cmd.valid | ((dut.cmd.payload.n >= 1) & (dut.cmd.payload.n <= dut.cfg.max_tokens)),
             "cmd.n in 1..max_tokens")]


def grid():
    from spattn.hw.attention.grid import MacGrid
    return MacGrid(geo())


def grid_always_ready(dut):
    return [(dut.qk.ready & dut.pv.ready, "qk.ready and pv.ready always high")]


def feed_never_stalled(dut):
    return [(dut.step.ready, "the grid never stalls a step (MacGrid: ready always high)")]


#: name -> (DUT factory, harness arguments, mode, depth)
PROOFS = {
    "query_scan_contract": (unit("query_scan"), {"assume": go_when_idle}, "prove", 6),
    "key_scan_contract": (unit("key_scan"), {"assume": go_when_idle, "monitor": read_ports_hold}, "prove", 6),
    "mask_unit_contract": (unit("mask_unit"), {"monitor": mask_unit_monitor}, "bmc", 30),
    "fetch_small_contract": (unit("fetch", SMALL), {}, "bmc", 12),
    "output_contract": (unit("output"), {"monitor": output_monitor}, "bmc", 20),
    "softmax_contract": (unit("softmax"), {"monitor": read_ports_hold}, "prove", 6),
    "grid_always_ready": (grid, {"assert_": grid_always_ready}, "prove", 2),
    "qk_feed_contract": (unit("qk_feed"), {"assume": feed_never_stalled}, "prove", 4),
    "pv_feed_contract": (unit("pv_feed"), {"assume": feed_never_stalled}, "prove", 4),
}

#: Deeper checks (marker ``formal_slow``): the whole core's four output streams, and the mask
#: unit through a whole masked block of ``tiny`` (2 rows of 32 chunks).
DEEP = {
    "core_small_contract": (core, {"assume": core_legal}, "bmc", 30),
    "mask_unit_contract": (unit("mask_unit"), {"monitor": mask_unit_monitor}, "bmc", 80),
}


@pytest.mark.parametrize("name", sorted(PROOFS))
def test_unit_proof(name, tmp_path):
    factory, kwargs, mode, depth = PROOFS[name]
    check(name, factory(), mode=mode, depth=depth, workdir=tmp_path, **kwargs)


@pytest.mark.formal_slow
@pytest.mark.parametrize("name", sorted(DEEP))
def test_unit_proof_deep(name, tmp_path):
    factory, kwargs, mode, depth = DEEP[name]
    check(f"{name}_deep", factory(), mode=mode, depth=depth, workdir=tmp_path, **kwargs)


def test_unit_mutant_fails(tmp_path):
    """The query scan with its ``items.valid`` ANDed with a free input (built here) fails."""
    from mutants import Glitch
    from spattn.sim.formal import prove
    result = prove("query_scan_glitch", Glitch(unit("query_scan")(), "items"), depth=6, workdir=tmp_path,
                   assume=go_when_idle)
    assert result.status == "FAIL", result
    assert "items: valid dropped before ready" in result.detail, result
