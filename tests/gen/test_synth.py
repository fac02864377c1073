"""The PE array's multipliers land in DSP blocks (ECP5 MULT18X18D, iCE40 SB_MAC16), not in LUTs.

Yosys synthesis only (no place and route): every multiply-accumulate unit is one DSP cell, for both
dataflows, and no multiplier is left as logic.
"""

import dataclasses

import pytest

from spattn.config import preset
from spattn.gen.synth import DSP_CELLS, critical_path_ends, synthesize

R3C4 = dataclasses.replace(preset("tiny"), name="r3c4", board="ulx3s-85f", clock_mhz=25.0, max_tokens=48,
                           act_bits=12, act_msb_bits=8, act_frac=6, acc_bits=28, pe_rows=3, pe_cols=4)


@pytest.mark.parametrize("block,cfg,family", [
    ("pe_array", preset("tiny"), "ice40"),
    ("pe_array_ws", preset("tiny"), "ice40"),
    ("pe_array", R3C4, "ecp5"),
    ("pe_array_ws", R3C4, "ecp5"),
], ids=["os-tiny-ice40", "ws-tiny-ice40", "os-r3c4-ecp5", "ws-r3c4-ecp5"])
def test_multipliers_map_to_dsps(block, cfg, family, tmp_path):
    result = synthesize(block, cfg, family, tmp_path)
    macs = cfg.pe_rows * cfg.pe_cols
    assert result.dsps == macs, result.cells
    # Nothing else multiplies: no other DSP cells and no generic multiplier cells left over.
    other = {cell for cell in result.cells if "MULT" in cell.upper() or "MAC" in cell.upper()}
    assert other == {DSP_CELLS[family]}, result.cells
    assert result.luts > 0


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"family must be one of \['ecp5', 'ice40'\], not 'gowin'"):
        synthesize("pe_array", preset("tiny"), "gowin", tmp_path)


def test_critical_path_ends_name_the_slowest_paths_registers():
    """From a nextpnr ``--report`` (the shape nextpnr-ecp5 writes): the longest path's first and last
    cells, as the signal names Yosys kept."""
    def step(kind, cell, port, delay):
        end = {"cell": cell, "loc": [1, 1], "port": port}
        return {"delay": delay, "from": end, "to": end, "type": kind}

    short = [step("clk-to-q", "rank_TRELLIS_FF_Q", "Q", 0.5), step("setup", "chosen_TRELLIS_FF_Q_1", "DI", 0.0)]
    slow = [step("clk-to-q", "load_left_TRELLIS_FF_Q_2", "Q", 0.5), step("routing", "x", "A", 8.0),
            step("setup", "out_fifo.inner_level_TRELLIS_FF_Q_3", "CE", 0.0)]
    report = {"critical_paths": [{"from": "posedge a", "to": "posedge a", "path": short},
                                 {"from": "posedge b", "to": "posedge b", "path": slow}]}
    assert critical_path_ends(report) == ("load_left", "out_fifo.inner_level")
    assert critical_path_ends({"critical_paths": []}) == ("", "")
