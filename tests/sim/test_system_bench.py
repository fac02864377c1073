"""The board system's generated Verilog (accelerator behind the UART host link) through its UART
pins, against the golden model (:mod:`spattn.sim.benches.system_bench`).

The UART runs at 4 cycles per bit here (the fastest the receiver takes) instead of the preset's
20 (minilm) or 12 (tiny): the link's logic is the same, the simulation five times shorter.
``spattn check --block system`` (``make``) runs the bench at the preset's own rate.

minilm runs the malformed frames and ``spattn run`` on the simulated board: a sentence of real
MiniLM through all six layers, dense, its embedding, every layer's alive lists and counters and the
link's byte counts checked against the golden model. tiny, on Icarus, runs the malformed frames, and
in ``make test-all`` the in-process sentence (which also compares the whole memory image; on
Verilator ``spattn check`` runs it in ``make test``, tests/gen/test_cli.py); ``spattn run`` needs a
MiniLM-shaped preset and is skipped there.
"""

import xml.etree.ElementTree as ET

import pytest

from spattn.config import preset
from spattn.sim.bench import fastest_link
from spattn.sim.runner import run_bench

RUNS = {
    # spattn run's sentence runs dense: the setting test_accelerator_bench.py leaves out on minilm
    ("minilm", "verilator", "errors_and_run"): (["malformed_frames", "spattn_run_command"],
                                                {"SPATTN_SYSTEM_SENTENCE_AFTER_ERRORS": "0"}),
    ("tiny", "icarus", "errors"): (["malformed_frames"], {"SPATTN_SYSTEM_SENTENCE_AFTER_ERRORS": "0"}),
    # `extended` (`make test-all`): 104 of `make test`'s 1,031 s on 2026-12-01; the sentence runs on
    # Verilator, through the pins in `spattn check` (test_cli.py) and `spattn run` (above)
    ("tiny", "icarus", "sentence"): (None, {"SPATTN_SYSTEM_TOKENS": "4",
                                            "SPATTN_SYSTEM_SENTENCE_AFTER_ERRORS": "0"}),
}
EXTENDED = {("tiny", "icarus", "sentence")}


#: Seconds each run takes alone on a core (measured), for the order of `make test` (tests/conftest.py).
SECONDS = {("minilm", "verilator", "errors_and_run"): 95, ("tiny", "icarus", "errors"): 15,
           ("tiny", "icarus", "sentence"): 80}


@pytest.mark.parametrize("config, simulator, cases", [
    pytest.param(*key, marks=[pytest.mark.slow(seconds=SECONDS[key])]
                 + ([pytest.mark.extended] if key in EXTENDED else []))
    for key in sorted(RUNS)])
def test_system_matches_golden_model(config, simulator, cases):
    testcases, env = RUNS[config, simulator, cases]
    results = run_bench("system", fastest_link(preset(config)), "spattn.sim.benches.system_bench",
                        simulator=simulator, testcase=testcases, extra_env=env)
    # A case asked for by name must run: spattn_run_command skips itself on presets not shaped like MiniLM.
    skipped = [case.get("name") for case in ET.parse(results).iter("testcase") if case.find("skipped") is not None]
    assert not skipped or testcases is None, f"asked for, but skipped: {skipped}"
