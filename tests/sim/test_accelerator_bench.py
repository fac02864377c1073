"""The accelerator top's generated Verilog, whole sentences through every layer, against the golden
model on both simulators (:mod:`spattn.sim.benches.accelerator_bench`)."""

import pytest

from spattn.config import preset
from spattn.sim.runner import SIMULATORS, run_bench

CONFIGS = {"tiny": preset("tiny"), "minilm": preset("minilm")}
ENV = {
    ("tiny", "verilator"): {"SPATTN_ACCEL_TOKENS": "1,9,40"},
    ("tiny", "icarus"): {"SPATTN_ACCEL_TOKENS": "6"},
    ("minilm", "verilator"): {"SPATTN_ACCEL_TOKENS": "9,20"},
    ("minilm", "icarus"): {"SPATTN_ACCEL_TOKENS": "4", "SPATTN_ACCEL_SETTINGS": "combined"},
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_accelerator_matches_golden_model(simulator, config):
    run_bench("accelerator", CONFIGS[config], "spattn.sim.benches.accelerator_bench", simulator=simulator,
              extra_env=ENV[config, simulator])
