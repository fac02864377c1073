"""The top-k engine's generated Verilog against the golden model, on both simulators, the
``default`` preset's engine included."""

import dataclasses

import pytest

from spattn.config import preset
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
