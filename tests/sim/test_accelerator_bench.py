"""The accelerator top's generated Verilog, whole sentences through every layer, against the golden
model on both simulators (:mod:`spattn.sim.benches.accelerator_bench`)."""

import pytest

from spattn.config import preset
from spattn.sim.runner import run_bench

CONFIGS = {"tiny": preset("tiny"), "minilm": preset("minilm")}
# minilm runs on Verilator only: Icarus simulates the whole minilm accelerator too slowly (a 4-token
# sentence through 6 layers of 12 heads had not finished after 12 CPU minutes); Icarus runs every
# test of the bench on tiny, and the minilm attention core on its own (test_attention_bench.py).
ENV = {
    # 64 = max_tokens under token keep and the combined setting, which holds head and value keep too
    # (the four pruning settings apart took 534 s of `make test`; the others reach max_tokens in the
    # attention bench and in this one's reset test); 1 token under every setting
    ("tiny", "verilator"): {"SPATTN_ACCEL_TOKENS": "1,64",
                            "SPATTN_ACCEL_LONGEST_SETTINGS": "token keep,combined"},
    ("tiny", "icarus"): {"SPATTN_ACCEL_TOKENS": "6"},
    # two of the eight settings (all eight run on tiny; the dense one on minilm runs through the
    # UART in test_system_bench.py, LSB recomputation at minilm's widths in test_attention_bench.py):
    # the static masks' 256-bit rows, and the combined setting (MSB only, value, token and head keep)
    ("minilm", "verilator"): {"SPATTN_ACCEL_TOKENS": "16", "SPATTN_ACCEL_SETTINGS": "static mask,combined"},
}


#: Seconds each run takes alone on a core (measured), for the order of `make test` (tests/conftest.py).
SECONDS = {("minilm", "verilator"): 115, ("tiny", "verilator"): 165, ("tiny", "icarus"): 75}


@pytest.mark.parametrize("config, simulator", [
    pytest.param(*key, marks=pytest.mark.slow(seconds=SECONDS[key])) for key in sorted(ENV)])
def test_accelerator_matches_golden_model(config, simulator):
    run_bench("accelerator", CONFIGS[config], "spattn.sim.benches.accelerator_bench", simulator=simulator,
              extra_env=ENV[config, simulator])
