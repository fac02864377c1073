"""The accelerator top's generated Verilog, whole sentences through every layer, against the golden
model on both simulators (:mod:`spattn.sim.benches.accelerator_bench`)."""

import pytest

from spattn.config import preset
from spattn.sim.runner import run_bench

CONFIGS = {"tiny": preset("tiny"), "minilm": preset("minilm")}
# minilm runs on Verilator only: Icarus simulates the whole minilm accelerator too slowly (a 4-token
# sentence through 6 layers of 12 heads had not finished after 12 CPU minutes); Icarus runs every
# test of the bench on tiny (`make test-all` also the minilm attention core, test_attention_bench.py).
RUNS = {
    # 64 = max_tokens under token keep and the combined setting, which holds head and value keep too
    # (the four pruning settings apart took 534 s of `make test`; the others reach max_tokens in the
    # attention bench and in this one's reset test); 1 token under every setting
    ("tiny", "verilator", "every_setting"): {"SPATTN_ACCEL_TOKENS": "1,64",
                                             "SPATTN_ACCEL_LONGEST_SETTINGS": "token keep,combined"},
    # the same hardware under every setting: Icarus, there for the written Verilog, runs the dense and
    # the combined one (79 s of `make test`'s 832 s on 2026-12-01 with all eight)
    ("tiny", "icarus", "dense_combined"): {"SPATTN_ACCEL_TOKENS": "6",
                                           "SPATTN_ACCEL_SETTINGS": "dense,combined"},
    # the combined setting (MSB only, value, token and head keep; all eight run on tiny; the dense one
    # on minilm runs through the UART in test_system_bench.py, LSB recomputation at minilm's widths
    # in test_attention_bench.py)
    ("minilm", "verilator", "combined"): {"SPATTN_ACCEL_TOKENS": "16", "SPATTN_ACCEL_SETTINGS": "combined"},
    # `extended` (`make test-all`): the static masks' 256-bit rows (on tiny's 64-bit rows in `make test`)
    ("minilm", "verilator", "static_mask"): {"SPATTN_ACCEL_TOKENS": "16",
                                             "SPATTN_ACCEL_SETTINGS": "static mask"},
}
EXTENDED = {("minilm", "verilator", "static_mask")}


#: Seconds each run takes alone on a core (measured), for the order of `make test` (tests/conftest.py).
SECONDS = {("minilm", "verilator", "combined"): 100, ("minilm", "verilator", "static_mask"): 100,
           ("tiny", "verilator", "every_setting"): 165, ("tiny", "icarus", "dense_combined"): 45}


@pytest.mark.parametrize("config, simulator, settings", [
    pytest.param(*key, marks=[pytest.mark.slow(seconds=SECONDS[key])]
                 + ([pytest.mark.extended] if key in EXTENDED else []))
    for key in sorted(RUNS)])
def test_accelerator_matches_golden_model(config, simulator, settings):
    run_bench("accelerator", CONFIGS[config], "spattn.sim.benches.accelerator_bench", simulator=simulator,
              extra_env=RUNS[config, simulator, settings])
