"""The board system's generated Verilog (accelerator behind the UART host link) through its UART
pins, against the golden model (:mod:`spattn.sim.benches.system_bench`).

The UART runs at 4 cycles per bit here (the fastest the receiver takes) instead of the preset's
20 (minilm) or 12 (tiny): the link's logic is the same, the simulation five times shorter.
``spattn check --block system`` (``make``) runs the bench at the preset's own rate.

minilm runs the malformed frames and ``spattn run`` on the simulated board (which checks the
embedding, every counter and the link's byte counts against the golden model); the in-process
sentence with its memory-image comparison runs on tiny, on Icarus, where it takes a minute.
"""

import dataclasses

import pytest

from spattn.config import preset
from spattn.sim.runner import run_bench

#: Each preset with a link_baud of 4 cycles per bit at its clock.
FAST_LINK = {name: dataclasses.replace(preset(name), link_baud=round(preset(name).clock_mhz * 1e6 / 4))
             for name in ("tiny", "minilm")}
RUNS = {
    ("minilm", "verilator"): (["malformed_frames", "spattn_run_command"],
                              {"SPATTN_SYSTEM_SENTENCE_AFTER_ERRORS": "0"}),
    ("tiny", "icarus"): (None, {"SPATTN_SYSTEM_TOKENS": "4", "SPATTN_SYSTEM_SENTENCE_AFTER_ERRORS": "0"}),
}


@pytest.mark.parametrize("config, simulator", sorted(RUNS))
def test_system_matches_golden_model(config, simulator):
    testcases, env = RUNS[config, simulator]
    run_bench("system", FAST_LINK[config], "spattn.sim.benches.system_bench", simulator=simulator,
              testcase=testcases, extra_env=env)
