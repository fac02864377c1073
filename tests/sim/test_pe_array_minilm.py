"""The PE array on real all-MiniLM-L6-v2 tensors: Q·Kᵀ of every head against the golden model."""

import json

import pytest

from spattn.config import preset
from spattn.sim import vectors
from spattn.sim.runner import run_bench


@pytest.fixture(scope="module")
def tiny_vectors(tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors")
    assert vectors.main(["--preset", "tiny", "--sentences", "41", "--layers", "1", "--out", str(out)]) == 0
    entry = json.loads((out / "manifest.json").read_text())["vectors"][0]
    return out / entry["file"], entry


# One dataflow on each simulator keeps the run short; both dataflows pass on both in the bench.
@pytest.mark.parametrize("block,simulator", [("pe_array", "verilator"), ("pe_array_ws", "icarus")])
def test_minilm_q_kt_tiles(block, simulator, tiny_vectors, tmp_path):
    path, entry = tiny_vectors
    report = tmp_path / "summary.json"
    run_bench(block, preset("tiny"), f"spattn.sim.benches.{block}_bench", simulator=simulator,
              testcase="minilm_tiles",
              extra_env={"SPATTN_PE_VECTORS": str(path), "SPATTN_PE_VECTORS_REPORT": str(report)})
    summary = json.loads(report.read_text())
    assert summary["heads"] == entry["heads"] and summary["tokens"] == entry["tokens"]
    assert summary["runs"] == 2 * entry["heads"]
    assert 0 < summary["pruned"] < 1 and summary["skipped_tiles"] > 0
