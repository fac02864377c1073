"""The top-k engine's generated Verilog against the golden model, on both simulators, the
``default`` preset's engine included."""

import dataclasses

import pytest

from spattn.config import preset
from spattn.sim.bench import bench_topk
from spattn.sim.runner import SIMULATORS, run_bench

# The tiny preset (P = S = 4, every run by radix selection) runs every test with at least 10^4
# index beats in the random one; the others cover one lane, a beat split over several cycles
# (S = 2P) and a lane count that is not a power of two, with fewer random beats, and rank their short
# runs by all pairs (up to 16 scores in 8 two-lane beats; up to 7, not a whole beat or row).
CONFIGS = {
    "tiny": (preset("tiny"), 10_000),
    "p1": (dataclasses.replace(preset("tiny"), name="p1", max_tokens=20, topk_comparators=1,
                               topk_stream_lanes=2, topk_pair_tokens=16), 1_500),
    "p3s6": (dataclasses.replace(preset("tiny"), name="p3s6", max_tokens=40, topk_comparators=3,
                                 topk_stream_lanes=6, score_bits=8, topk_pair_tokens=7), 1_500),
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_topk_engine_matches_golden_model(simulator, config, tmp_path_factory):
    cfg, beats = CONFIGS[config]
    run_bench("topk", cfg, "spattn.sim.benches.topk_bench", simulator=simulator,
              extra_env={"SPATTN_TOPK_BEATS": str(beats)})


@pytest.mark.slow(seconds=115)
def test_default_engine():
    """The ``default`` preset's engine (P = 16, 1024 tokens) through the whole bench on Verilator
    (Icarus runs the smaller configurations above). Its speed, every point within 10% of the figures
    in ``reports/topk_cycles.json`` (the README's table), is held by ``spattn bench topk``
    (``make bench``)."""
    run_bench("topk", preset("default"), "spattn.sim.benches.topk_bench", simulator="verilator",
              extra_env={"SPATTN_TOPK_BEATS": "1000"})


@pytest.mark.slow(seconds=60)
def test_cycle_sweep_splits_each_run(tmp_path):
    """``spattn bench topk``'s split of a run: the input takes its beats (16 scores; a run ranked by
    all pairs takes one a cycle, the others P scores a cycle), selection at least a cycle, and
    emission at least a beat per P indices."""
    rows = bench_topk(tmp_path, sizes=(16, 64), lanes=(4,), trials=2)
    assert [(row["n"], row["k"]) for row in rows] == [(16, 2), (16, 8), (16, 14), (64, 6), (64, 32), (64, 58)]
    for row in rows:
        expected_input = -(-row["n"] // 16) if row["n"] <= 16 else -(-row["n"] // 4)
        assert row["input"] == expected_input, row
        assert row["selection"] >= 1 and row["emission"] >= row["beats"] == -(-row["k"] // 4), row
    assert "| selection | target allows | emission | ceil(k/P) |" in (tmp_path / "topk_cycles.md").read_text()
