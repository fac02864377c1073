"""The host link's generated Verilog with a host on its UART, a register model and an AXI master
(:mod:`spattn.sim.benches.host_link_bench`)."""

import dataclasses

import pytest

from spattn.config import preset
from spattn.sim.runner import run_bench

# tiny's 12 MHz with the fastest baud it allows: 4 cycles per bit keeps the frames short in cycles
FAST_LINK = dataclasses.replace(preset("tiny"), name="tiny_fast_link", link_baud=3_000_000)


# Icarus is about three times slower here: it runs every test with a third of the random bursts.
BURSTS = {"verilator": "24", "icarus": "8"}


@pytest.mark.parametrize("simulator", sorted(BURSTS))
def test_host_link(simulator):
    run_bench("host_link", FAST_LINK, "spattn.sim.benches.host_link_bench", simulator=simulator,
              extra_env={"SPATTN_LINK_BURSTS": BURSTS[simulator]})
