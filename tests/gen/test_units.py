"""Per-unit resources: a block synthesized for the ECP5 with its module hierarchy kept, counted per
module instance.

Yosys synthesis only (no place and route). A hand-written hierarchy checks the bookkeeping (a module
instantiated three times, own and total counts), the top-k engine checks against the flat synthesis
and the attention core checks Amaranth's own hierarchy.
"""

from collections import Counter

import pytest

from spattn.config import preset
from spattn.gen.synth import (ecp5_resources, format_unit_table, hierarchy_resources, synthesize,
                              unit_resources)

# Module names as Amaranth writes them (top name, dot, submodule path); `blk.leaf` is instantiated
# twice under `mid` and once under the top.
HIERARCHY = r"""
module \blk.leaf (input clk, input [7:0] a, input [7:0] b, output reg [8:0] y);
  always @(posedge clk) y <= a + b;
endmodule

module \blk.mid (input clk, input [7:0] a, input [7:0] b, output [8:0] y);
  wire [8:0] t;
  \blk.leaf first (.clk(clk), .a(a), .b(b), .y(t));
  \blk.leaf second (.clk(clk), .a(t[7:0]), .b(b), .y(y));
endmodule

module blk (input clk, input [7:0] a, input [7:0] b, output [8:0] y, output [8:0] z, output reg [15:0] p);
  \blk.mid mid (.clk(clk), .a(a), .b(b), .y(y));
  \blk.leaf leaf (.clk(clk), .a(b), .b(a), .y(z));
  always @(posedge clk) p <= a * b;
endmodule
"""


def test_hierarchy_is_counted_per_instance(tmp_path):
    verilog = tmp_path / "blk.v"
    verilog.write_text(HIERARCHY)
    table = hierarchy_resources(verilog, "blk")
    units = {unit.path: unit for unit in table.units}
    assert list(units) == ["", "leaf", "mid", "mid.first", "mid.second"]
    assert table.instances == {"blk": 1, "blk.leaf": 3, "blk.mid": 1}
    assert {units[path].module for path in ("leaf", "mid.first", "mid.second")} == {"blk.leaf"}
    leaf = units["leaf"].own
    assert ecp5_resources(leaf)["ffs"] == 9 and ecp5_resources(leaf)["ccu2c"] > 0
    assert ecp5_resources(units[""].own)["dsps"] == 1 and ecp5_resources(units[""].own)["ffs"] == 16
    # mid holds nothing but its two leaves; the top adds its own multiplier and three leaves.
    assert units["mid"].total == dict(Counter(units["mid"].own) + Counter(leaf) + Counter(leaf))
    assert table.total == units[""].total
    assert table.total == dict(sum((Counter(unit.own) for unit in table.units), Counter()))
    assert ecp5_resources(table.total)["ffs"] == 16 + 3 * 9


def test_unit_table_markdown_has_a_row_per_instance(tmp_path):
    verilog = tmp_path / "blk.v"
    verilog.write_text(HIERARCHY)
    table = hierarchy_resources(verilog, "blk")
    lines = format_unit_table(table).splitlines()
    assert lines[0].startswith("| unit | own LUTs | share | LUTs with submodules |")
    rows = [line.split(" | ") for line in lines[2:]]
    assert [row[0] for row in rows] == ["| `blk` (top)", "| `leaf`", "| `mid`", "| `mid.first`",
                                        "| `mid.second`", "| **total**"]
    total_luts = ecp5_resources(table.total)["luts"]
    assert sum(int(row[1]) for row in rows[:-1]) == int(rows[-1][1]) == total_luts
    assert sum(float(row[2].rstrip("%")) for row in rows[:-1]) == pytest.approx(100, abs=0.3)


def test_topk_units_match_the_flat_synthesis(tmp_path):
    cfg = preset("tiny")
    table = unit_resources("topk", cfg, tmp_path / "units")
    flat = synthesize("topk", cfg, "ecp5", tmp_path / "flat")
    # The top-k engine is one module and its output FIFO: keeping the hierarchy only stops logic
    # being optimized across that one boundary, so the totals stay within 5% of the flat run's
    # (measured: 1,675 against 1,662 LUT4s), with the same block RAMs and flip-flops.
    hierarchical = ecp5_resources(table.total)
    assert abs(hierarchical["lut4"] - flat.luts) <= 0.05 * flat.luts
    assert table.total.get("DP16KD", 0) == flat.cells.get("DP16KD", 0)
    assert [unit.path for unit in table.units] == ["", "out_fifo"]
    assert table.yosys.startswith("Yosys ") and table.seconds > 0


def test_attention_units_cover_the_core(tmp_path):
    table = unit_resources("attention", preset("tiny"), tmp_path)
    assert len(table.units) > 1 and table.units[0].path == ""
    assert table.total == dict(sum((Counter(unit.own) for unit in table.units), Counter()))
    markdown = format_unit_table(table)
    for unit in table.units[1:]:
        assert f"| `{unit.path}` |" in markdown


def test_only_the_ecp5_is_counted(tmp_path):
    with pytest.raises(ValueError, match=r"family must be 'ecp5' .*, not 'ice40'"):
        hierarchy_resources(tmp_path / "blk.v", "blk", family="ice40")
