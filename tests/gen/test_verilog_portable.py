"""The written Verilog needs no simulator-specific patch: no X out of Icarus (in the SystemVerilog
mode cocotb runs it in) once reset is applied, and a Verilator lint with nothing but width warnings."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from spattn.config import preset
from spattn.gen.verilog import generate
from spattn.sim.runner import simulator_env


def _bench(manifest, cycles=8):
    """A plain-Verilog bench: inputs 0, reset for 3 cycles, then one line per cycle of every output."""
    ins = [p for p in manifest["ports"] if p["direction"] == "input"]
    outs = [p for p in manifest["ports"] if p["direction"] == "output"]
    lines = ["`timescale 1ns/1ps", "module tb;", "  reg clk = 0, rst = 1;", "  integer i;"]
    lines += [f"  reg [{p['width'] - 1}:0] {p['name']} = 0;" for p in ins]
    lines += [f"  wire [{p['width'] - 1}:0] {p['name']};" for p in outs]
    conns = ", ".join([".clk(clk)", ".rst(rst)"] + [f".{p['name']}({p['name']})" for p in ins + outs])
    fmt = " ".join(f"{p['name']}=%b" for p in outs)
    args = ", ".join(p["name"] for p in outs)
    lines += [f"  {manifest['top']} dut({conns});", "  always #5 clk = ~clk;",
              "  initial begin",
              f"    for (i = 0; i < {cycles}; i = i + 1) begin",
              "      @(negedge clk); if (i == 3) rst = 0;",
              f"      #1 $display(\"%0d {fmt}\", i, {args});",
              "    end", "    $finish;", "  end", "endmodule"]
    return "\n".join(lines) + "\n"


def _known_outputs_on_icarus(tmp_path, block, generation):
    """The written ``block`` of tiny under the plain bench on Icarus ``-g<generation>``: its output
    rows (each line one cycle, ``name=value`` per port), asserted free of X and Z; and the whole output."""
    verilog_path, manifest_path = generate(preset("tiny"), tmp_path, block)
    text = verilog_path.read_text()
    assert "always @*" not in text and "verilog_backend" not in text
    bench = tmp_path / "tb.v"
    bench.write_text(_bench(json.loads(manifest_path.read_text())))
    subprocess.run(["iverilog", f"-g{generation}", "-o", str(tmp_path / "sim.vvp"), str(bench),
                    str(verilog_path)], check=True)
    out = subprocess.run(["vvp", "-n", str(tmp_path / "sim.vvp")], check=True, capture_output=True,
                         text=True).stdout
    rows = [line for line in out.splitlines() if line[:1].isdigit()]
    assert len(rows) == 8
    values = [field.split("=")[1] for row in rows for field in row.split()[1:]]
    assert not [value for value in values if set(value) & set("xXzZ")], out
    return rows, out


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog not on PATH")
@pytest.mark.parametrize("generation", ["2005", "2012"])
def test_topk_outputs_are_known_from_reset_on_icarus(tmp_path, generation):
    rows, out = _known_outputs_on_icarus(tmp_path, "topk", generation)
    assert all("cmd__ready=1 scores__ready=0" in row and "indices__valid=0" in row for row in rows), out


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog not on PATH")
def test_host_link_outputs_are_known_from_reset_on_icarus(tmp_path):
    rows, out = _known_outputs_on_icarus(tmp_path, "host_link", "2012")
    assert all("tx=1 " in row and "m_axil__arvalid=0" in row and "s_axi__rvalid=0" in row for row in rows), out


@pytest.mark.parametrize("block", ["topk", "accelerator", "host_link", "system"])
def test_verilator_lint_has_only_width_warnings(tmp_path, block):
    try:
        env = simulator_env("verilator")
    except RuntimeError as error:
        pytest.skip(str(error))
    verilog_path, manifest_path = generate(preset("tiny"), tmp_path, block)
    top = json.loads(manifest_path.read_text())["top"]
    done = subprocess.run([str(Path(env["VERILATOR_ROOT"]) / "bin" / "verilator"), "--lint-only",
                           "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "--top-module", top, str(verilog_path)],
                          env={**os.environ, **env}, capture_output=True, text=True)
    assert done.returncode == 0 and "%Warning" not in done.stderr, done.stderr
