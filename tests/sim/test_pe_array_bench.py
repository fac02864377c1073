"""The PE array's generated Verilog against the golden model, on both simulators."""

import dataclasses

import pytest

from spattn.config import preset
from spattn.sim.runner import SIMULATORS, run_bench

# tiny: the 2 x 2 array of the iCE40 preset. r3c4: rows and columns that differ and are not powers
# of two, 12-bit operands and the minimal accumulator. Each (block, config) pair runs every test of
# the bench: both dataflows, each with wrapping accumulators and single-column activation tiles and
# with saturating accumulators and wider tiles (gen.verilog.BLOCKS / hw.pe_array.PE_ARRAY_VARIANTS).
CONFIGS = {
    "tiny": (preset("tiny"), 40),
    "r3c4": (dataclasses.replace(preset("tiny"), name="r3c4", board="ulx3s-85f", clock_mhz=25.0,
                                 max_tokens=48, head_dim=16, act_bits=12, act_msb_bits=8, act_frac=6,
                                 acc_bits=28, pe_rows=3, pe_cols=4), 30),
}
CASES = [("pe_array", "tiny"), ("pe_array_sat", "r3c4"), ("pe_array_ws", "r3c4"),
         ("pe_array_ws_sat", "tiny")]


@pytest.mark.parametrize("block,config", CASES)
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_pe_array_matches_golden_model(simulator, block, config):
    cfg, runs = CONFIGS[config]
    run_bench(block, cfg, f"spattn.sim.benches.{block}_bench", simulator=simulator,
              extra_env={"SPATTN_PE_RUNS": str(runs)})
