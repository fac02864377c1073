"""Synthesis of one generated block on its own: Yosys cell counts and an out-of-context nextpnr run.

A block's Verilog (from :func:`spattn.gen.verilog.generate`) is synthesized with the YoWASP Yosys
(``synth_ecp5`` or ``synth_ice40 -dsp``) and its cells counted, which shows whether multipliers
landed in DSP blocks (ECP5 ``MULT18X18D``, iCE40 ``SB_MAC16``) or in LUTs. For the ECP5,
:func:`place_and_route_ecp5` runs nextpnr out of context (no I/O buffers, so a block with more ports
than the package has pins still places) and returns its utilization and Fmax, parsed by the board
build's own report parser. Tools come from :func:`spattn.fpga.toolchain.toolchain_env`.
"""

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from spattn.config import AccelConfig

from .verilog import generate

__all__ = ["FAMILIES", "SynthResult", "synthesize", "PnrResult", "place_and_route_ecp5"]

#: Yosys synthesis script per FPGA family; ``-dsp`` lets the iCE40 flow use its SB_MAC16 blocks.
FAMILIES = {
    "ecp5": "synth_ecp5 -top {top} -json {json}",
    "ice40": "synth_ice40 -dsp -top {top} -json {json}",
}

#: The multiplier cell of each family.
DSP_CELLS = {"ecp5": "MULT18X18D", "ice40": "SB_MAC16"}


@dataclass(frozen=True)
class SynthResult:
    """Cells of the synthesized block (``cells``: cell type -> count) and the netlist path."""
    block: str
    family: str
    cells: dict
    netlist: str
    seconds: float

    @property
    def dsps(self):
        return self.cells.get(DSP_CELLS[self.family], 0)

    @property
    def luts(self):
        return sum(count for cell, count in self.cells.items() if cell in ("LUT4", "SB_LUT4"))


def _run(command, env, log_path):
    """Run ``command`` in the directory of ``log_path``: the YoWASP tools see only the working
    directory and below, so every file argument is a name relative to it."""
    log_path = Path(log_path)
    with open(log_path, "w") as log:
        done = subprocess.run(command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                              cwd=log_path.parent)
    if done.returncode:
        tail = Path(log_path).read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{command[0]} failed ({done.returncode}), log {log_path}:\n" + "\n".join(tail))


def synthesize(block, cfg: AccelConfig, family, out_dir) -> SynthResult:
    """Generate ``block`` for ``cfg`` into ``out_dir`` and synthesize it for ``family``."""
    from spattn.fpga.toolchain import toolchain_env

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, not {family!r}")
    out_dir = Path(out_dir)
    verilog_path, manifest_path = generate(cfg, out_dir, block=block)
    top = json.loads(manifest_path.read_text())["top"]
    env = toolchain_env(family)
    netlist = out_dir / f"{top}.{family}.json"
    stat = out_dir / f"{top}.{family}.stat.json"
    script = (f"read_verilog {verilog_path.name}; " + FAMILIES[family].format(top=top, json=netlist.name)
              + f"; tee -q -o {stat.name} stat -json")
    started = time.monotonic()
    _run([env["YOSYS"], "-q", "-p", script], env, out_dir / f"{top}.{family}.yosys.log")
    stats = json.loads(stat.read_text())
    cells = stats["design"]["num_cells_by_type"]
    return SynthResult(block=block, family=family, cells=dict(cells), netlist=os.fspath(netlist),
                       seconds=round(time.monotonic() - started, 1))


@dataclass(frozen=True)
class PnrResult:
    """nextpnr's figures for an out-of-context ECP5 placement of a synthesized block."""
    device: str
    fmax_mhz: float
    target_mhz: float
    luts: int
    registers: int
    dsps: int
    brams: int
    seconds: float


def place_and_route_ecp5(synth: SynthResult, target_mhz, device="85k", package="CABGA381",
                         seed=1, router="router1") -> PnrResult:
    """Place and route ``synth`` (an ECP5 netlist) out of context; return utilization and Fmax.

    ``router``: nextpnr's ``router1`` (its default) or ``router2`` (much faster on large designs).
    """
    from spattn.fpga.build import parse_nextpnr_report
    from spattn.fpga.toolchain import toolchain_env

    env = toolchain_env("ecp5")
    base = Path(synth.netlist).with_suffix("")
    report = base.with_suffix(".nextpnr.json")
    log = base.with_suffix(".nextpnr.log")
    started = time.monotonic()
    _run([env["NEXTPNR_ECP5"], f"--{device}", "--package", package, "--json", Path(synth.netlist).name,
          "--out-of-context", "--freq", str(target_mhz), "--timing-allow-fail", "--seed", str(seed),
          "--router", router, "--report", report.name, "--log", log.name], env,
         base.with_suffix(".nextpnr.out"))
    figures = parse_nextpnr_report(report, "ecp5", log_text=log.read_text(errors="replace"))
    return PnrResult(device=f"LFE5U-{device.upper().rstrip('K')}F", fmax_mhz=figures["fmax_mhz"],
                     target_mhz=float(target_mhz), luts=figures["luts_used"],
                     registers=figures["registers_used"], dsps=figures["dsps_used"],
                     brams=figures["brams_used"], seconds=round(time.monotonic() - started, 1))
