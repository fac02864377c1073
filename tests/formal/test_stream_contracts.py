"""SymbiYosys proofs of stream contracts (:mod:`spattn.sim.formal`, every tool from PyPI): once an
output's ``valid`` is high it stays high with its payload unchanged until ``ready``, under any input
behaviour that itself obeys the contract and the block's documented command rules. Plus covers
showing the environment can stall every output (so no proof is vacuous), and mutants built here
whose proofs must fail. (The top-k engine's ``count <= P`` is a bounded check with its other run
properties in ``test_topk_properties.py``: by k-induction it no longer converges, since the second
revision's output FIFO can start the induction holding beats no run writes.) ``make formal`` runs these
alone; they also run in ``make test`` (about 30 s in all)."""

import dataclasses

import pytest

from mutants import Glitch, Slice
from spattn.config import pe_buffer_depths, preset
from spattn.sim.formal import FormalFailed, check, prove

pytestmark = pytest.mark.formal

TINY = preset("tiny")
SMALL_TOPK = dataclasses.replace(TINY, max_tokens=8, topk_comparators=2, topk_stream_lanes=2, score_bits=4)
# Runs of up to 5 of its 8 scores ranked by all pairs, the others by radix selection.
PAIRS_TOPK = dataclasses.replace(SMALL_TOPK, topk_pair_tokens=5)


def topk(cfg):
    from spattn.hw.topk import TopKEngine
    return TopKEngine(cfg)


def topk_legal(cfg):
    return lambda dut: [(~dut.cmd.valid | (dut.cmd.payload.n <= cfg.max_tokens), "cmd.n <= max_tokens")]


def pe_array(dataflow="output_stationary"):
    from spattn.hw.pe_array import PEArray
    return PEArray(TINY, dataflow=dataflow)


def pe_legal(cfg):
    """The documented precondition of a PE-array command (:func:`spattn.config.check_matmul_run`)."""
    a_depth, b_depth = pe_buffer_depths(cfg)
    r, c, t = cfg.pe_rows, cfg.pe_cols, cfg.max_tokens

    def legal(dut):
        m, k, n = dut.cmd.payload.m, dut.cmd.payload.k, dut.cmd.payload.n
        conds = [((1 <= x) & (x <= t), f"1 <= cmd.{name} <= max_tokens") for name, x in (("m", m), ("k", k), ("n", n))]
        conds.append((((m + r - 1) // r * k <= a_depth) & ((k + r - 1) // r * m <= a_depth), "A fits"))
        conds.append((k * ((n + c - 1) // c) <= b_depth, "B fits"))
        return [(~dut.cmd.valid | cond, msg) for cond, msg in conds]
    return legal


def kept_merge():
    from spattn.hw.attention.common import Geometry
    from spattn.hw.attention.merge import KeptMerge
    return KeptMerge(Geometry.of(TINY))


def axi_manager():
    from spattn.hw.axi_manager import AxiManager
    return AxiManager(max_beats=4, max_reads=2)


def axi_legal(dut):
    return [(~dut.read_req.valid | (dut.read_req.payload.beats >= 1), "read_req.beats >= 1"),
            (~dut.write_req.valid | (dut.write_req.payload.beats >= 1), "write_req.beats >= 1")]


#: name -> (DUT factory, harness arguments, mode, depth). k-induction where it converges; the
#: weight-stationary PE array's does not (its internal invariants are not visible to the harness),
#: so it gets a bounded check deeper than its first stalled output beat (step 13 of a cover run).
PROOFS = {
    "topk_small_contract": (lambda: topk(SMALL_TOPK), {"assume": topk_legal(SMALL_TOPK)}, "prove", 6),
    "topk_tiny_contract": (lambda: topk(TINY), {"assume": topk_legal(TINY)}, "prove", 6),
    "topk_pairs_contract": (lambda: topk(PAIRS_TOPK), {"assume": topk_legal(PAIRS_TOPK)}, "prove", 6),
    "pe_array_tiny_contract": (pe_array, {"assume": pe_legal(TINY)}, "prove", 6),
    "pe_array_ws_tiny_contract": (lambda: pe_array("weight_stationary"), {"assume": pe_legal(TINY)}, "bmc", 18),
    "kept_merge_tiny_contract": (kept_merge, {"assume": lambda dut: [(~dut.go | dut.idle, "go only when idle")]},
                                 "prove", 6),
    "axi_manager_contract": (axi_manager, {"assume": axi_legal}, "prove", 6),
}


@pytest.mark.parametrize("name", sorted(PROOFS))
def test_proof(name, tmp_path):
    factory, kwargs, mode, depth = PROOFS[name]
    check(name, factory(), mode=mode, depth=depth, workdir=tmp_path, **kwargs)


@pytest.mark.parametrize("name, dut, kwargs", [
    ("slice_broken", lambda: Slice(broken=True), {}),
    ("topk_glitch", lambda: Glitch(topk(TINY), "indices"), {"assume": topk_legal(TINY)}),
])
def test_broken_variant_fails(name, dut, kwargs, tmp_path):
    result = prove(name, dut(), depth=6, workdir=tmp_path, **kwargs)
    assert result.status == "FAIL", result
    assert "valid dropped before ready" in result.detail


def test_axi_glitch_fails(tmp_path):
    with pytest.raises(FormalFailed, match="read_data: valid dropped"):
        check("axi_glitch", Glitch(axi_manager(), "read_data"), depth=4, workdir=tmp_path, assume=axi_legal)


def test_cover_reaches_a_stall(tmp_path):
    """The built-in covers: the environment can stall an output, so a contract proof is not vacuous."""
    result = prove("slice_cover", Slice(), mode="cover", depth=4, workdir=tmp_path)
    assert result.passed and "o: stalled beat @ step" in result.detail
