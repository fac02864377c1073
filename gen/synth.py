"""Synthesis of one generated block on its own: Yosys cell counts and an out-of-context nextpnr run.

A block's Verilog (from :func:`spattn.gen.verilog.generate`) is synthesized with the YoWASP Yosys
(``synth_ecp5`` or ``synth_ice40 -dsp``) and its cells counted, which shows whether multipliers
landed in DSP blocks (ECP5 ``MULT18X18D``, iCE40 ``SB_MAC16``) or in LUTs. For the ECP5,
:func:`place_and_route_ecp5` runs nextpnr out of context (no I/O buffers, so a block with more ports
than the package has pins still places) and returns its utilization and Fmax, parsed by the board
build's own report parser. Tools come from :func:`spattn.fpga.toolchain.toolchain_env`.

:func:`unit_resources` synthesizes a block for the ECP5 with its module hierarchy kept (Amaranth
writes one Verilog module per submodule) and counts the cells of every module instance, so a block's
LUTs can be traced to its units; :func:`format_unit_table` renders that as a Markdown table.
"""

import json
import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from spattn.config import AccelConfig

from .verilog import generate

__all__ = ["FAMILIES", "SynthResult", "synthesize", "PnrResult", "place_and_route_ecp5", "critical_path_ends",
           "ECP5_LUT_SITES", "ecp5_resources", "Unit", "UnitTable", "hierarchy_resources",
           "unit_resources", "format_unit_table"]

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
    #: The cells at the two ends of the slowest path (:func:`critical_path_ends`).
    critical_from: str = ""
    critical_to: str = ""


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
    critical_from, critical_to = critical_path_ends(json.loads(report.read_text()))
    return PnrResult(device=f"LFE5U-{device.upper().rstrip('K')}F", fmax_mhz=figures["fmax_mhz"],
                     target_mhz=float(target_mhz), luts=figures["luts_used"],
                     registers=figures["registers_used"], dsps=figures["dsps_used"],
                     brams=figures["brams_used"], seconds=round(time.monotonic() - started, 1),
                     critical_from=critical_from, critical_to=critical_to)


def critical_path_ends(report):
    """Where the longest of nextpnr's critical paths (one per pair of clock edges in its ``--report``
    JSON) starts and ends: the names of its first and last cells, ``("", "")`` if it has none.

    The longest by delay is the slowest in a design with one clock, as every block measured here.
    """
    paths = [entry["path"] for entry in report.get("critical_paths", []) if entry.get("path")]
    if not paths:
        return "", ""
    steps = max(paths, key=lambda path: sum(step["delay"] for step in path))
    return _net_name(steps[0]["from"]["cell"]), _net_name(steps[-1]["to"]["cell"])


def _net_name(cell):
    """The name a cell of nextpnr-ecp5 carries before the suffix of the primitive it was mapped to:
    ``load_left_TRELLIS_FF_Q_2`` -> ``load_left``, the register in the generated Verilog (a block
    RAM keeps its memory's name, e.g. ``order7.0.0``)."""
    return cell.split("_TRELLIS_")[0]


#: LUT4 sites (``TRELLIS_COMB`` cells in nextpnr-ecp5) each ECP5 primitive takes: a ``CCU2C`` carry
#: cell is two LUT4s with their carry logic; a ``TRELLIS_DPR16X4`` LUT RAM is four RAM LUT4s plus
#: the two LUT4s of the slice its write port occupies. This is nextpnr's own "Total LUT4s" before
#: packing; its ``TRELLIS_COMB`` count after packing is higher by the carry-chain feed-in/feed-out
#: and constant-driver cells the packer adds, which belong to no module.
ECP5_LUT_SITES = {"LUT4": 1, "CCU2C": 2, "TRELLIS_DPR16X4": 6}

#: Yosys cells that are not hardware: ``flatten`` leaves a ``$scopeinfo`` where each submodule was.
_NOT_HARDWARE = {"$scopeinfo"}


def ecp5_resources(cells) -> dict:
    """The resources of ``cells`` (ECP5 primitive -> count).

    ``luts``: LUT4 sites, weighted by :data:`ECP5_LUT_SITES`; ``lut4``, ``ccu2c`` and ``lutram``:
    the ``LUT4``, ``CCU2C`` and ``TRELLIS_DPR16X4`` cells behind them; ``ffs``: ``TRELLIS_FF``;
    ``dsps``: ``MULT18X18D``; ``brams``: ``DP16KD``. Other cells (``PFUMX`` and ``L6MUX21``, the
    slice multiplexers that combine LUT4s into wider LUTs) take no LUT4 site of their own.
    """
    return {
        "luts": sum(sites * cells.get(cell, 0) for cell, sites in ECP5_LUT_SITES.items()),
        "lut4": cells.get("LUT4", 0),
        "ccu2c": cells.get("CCU2C", 0),
        "lutram": cells.get("TRELLIS_DPR16X4", 0),
        "ffs": cells.get("TRELLIS_FF", 0),
        "dsps": cells.get("MULT18X18D", 0),
        "brams": cells.get("DP16KD", 0),
    }


@dataclass(frozen=True)
class Unit:
    """One module instance of a synthesized hierarchy.

    ``path``: instance names from the top down, dot-separated (``""`` for the top itself, ``"pe"``,
    ``"pe.lane0"``); ``module``: its Verilog module; ``own``: the primitives of the module itself
    and ``total``: those of the instance and everything under it, each primitive -> count.
    """
    path: str
    module: str
    own: dict
    total: dict


@dataclass(frozen=True)
class UnitTable:
    """Cell counts of every module instance of one design synthesized with its hierarchy kept.

    ``units``: the top first, then depth first, children in instance-name order; the ``own`` counts
    of all units add up to the top's ``total``, which equals Yosys's count of the flattened netlist.
    ``instances``: module -> number of its instances under the top. ``yosys``: the Yosys version;
    ``date``: when measured (UTC, ISO 8601); ``seconds``: Yosys wall time.
    """
    top: str
    family: str
    units: tuple
    instances: dict
    yosys: str
    date: str
    seconds: float

    @property
    def total(self) -> dict:
        """Primitive -> count of the whole design."""
        return self.units[0].total

    def to_dict(self):
        """The table as JSON-ready data: every unit's cells with :func:`ecp5_resources` of them."""
        def counts(cells):
            return {**ecp5_resources(cells), "cells": cells}
        return {
            "top": self.top, "family": self.family, "yosys": self.yosys, "date": self.date,
            "seconds": self.seconds, "instances": self.instances,
            "units": [{"path": unit.path, "module": unit.module, "own": counts(unit.own),
                       "total": counts(unit.total)} for unit in self.units],
        }


#: Hierarchical ECP5 synthesis and its statistics. ``synth_ecp5`` runs as in :func:`synthesize` but
#: with ``-noflatten``; ``splitnets`` before LUT mapping works around a Yosys abc9 assertion
#: (``count_id(wire->name) == 0`` when it reintegrates a module with Amaranth's lane wires ``x[0]``
#: next to ``x``, YosysHQ/yosys#4349) and changes no logic. ``select * %C`` picks the cells that
#: instantiate modules of the design, so that ``write_json -selected`` lists the instances alone.
_UNITS_SCRIPT = (
    "read_verilog {verilog}; "
    "synth_ecp5 -top {top} -noflatten -run :map_luts; "
    "splitnets; "
    "synth_ecp5 -top {top} -noflatten -run map_luts:; "
    "tee -q -o {stat} stat -json; "
    "select * %C; write_json -selected {instances}; select -clear; "
    "flatten; tee -q -o {flat} stat -json"
)


def _module_name(name):
    """A module name as Verilog spells it: Yosys's statistics keep the ``\\`` of public names."""
    return name[1:] if name.startswith("\\") else name


def _yosys_version(creator):
    """``Yosys 0.70 (git sha1 28ba3cb92)`` out of the ``creator`` line of a Yosys JSON file."""
    found = re.match(r"(Yosys \S+)(?: \(git sha1 (\w+))?", creator)
    if not found:
        return creator
    return f"{found[1]} (git sha1 {found[2]})" if found[2] else found[1]


def hierarchy_resources(verilog_path, top, family="ecp5") -> UnitTable:
    """Synthesize ``verilog_path`` for the ECP5 with module ``top`` and its hierarchy kept, and count
    the cells of every module instance under ``top``.

    Yosys's files (statistics, instance list, log) go next to ``verilog_path``. Nothing is optimized
    across module boundaries, so the total can exceed a flat synthesis of the same design. Raises
    ``ValueError`` for a family other than ``"ecp5"`` and ``RuntimeError`` with the end of the Yosys
    log if Yosys fails.
    """
    from spattn.fpga.toolchain import toolchain_env

    if family != "ecp5":
        raise ValueError(f"family must be 'ecp5' (LUT sites are counted for the ECP5), not {family!r}")
    verilog_path = Path(verilog_path)
    work = verilog_path.parent
    base = f"{top}.{family}.units"
    stat, instances, flat = (work / f"{base}.{what}.json" for what in ("stat", "instances", "flat"))
    log = work / f"{base}.yosys.log"
    script = _UNITS_SCRIPT.format(verilog=verilog_path.name, top=top, stat=stat.name,
                                  instances=instances.name, flat=flat.name)
    env = toolchain_env(family)
    started = time.monotonic()
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # The YoWASP Yosys loses its console output once ABC has run, so the whole log goes to a file.
    try:
        _run([env["YOSYS"], "-q", "-l", log.name, "-p", script], env, work / f"{base}.yosys.out")
    except RuntimeError as error:
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        raise RuntimeError(f"{error}\nend of the Yosys log {log}:\n" + "\n".join(tail)) from None
    seconds = round(time.monotonic() - started, 1)

    stats = json.loads(stat.read_text())
    cells_by_module = {_module_name(name): module["num_cells_by_type"]
                       for name, module in stats["modules"].items()}
    own = {module: {cell: count for cell, count in sorted(cells.items())
                    if cell not in cells_by_module and cell not in _NOT_HARDWARE}
           for module, cells in cells_by_module.items()}
    children = {module: sorted((name, cell["type"]) for name, cell in content["cells"].items())
                for module, content in json.loads(instances.read_text())["modules"].items()}

    def walk(module, path):
        below = []
        for name, child in children.get(module, ()):
            below += walk(child, f"{path}.{name}" if path else name)
        total = Counter(own[module])
        for unit in below:
            total.update(unit.own)
        return [Unit(path=path, module=module, own=own[module], total=dict(sorted(total.items())))] + below

    units = tuple(walk(top, ""))
    flat_cells = json.loads(flat.read_text())["design"]["num_cells_by_type"]
    flattened = {cell: count for cell, count in flat_cells.items() if cell not in _NOT_HARDWARE}
    if units[0].total != flattened:
        raise RuntimeError(f"the per-instance cell counts of {top} add up to {units[0].total}, but Yosys "
                           f"counts {flattened} in the flattened netlist ({stat}, {instances})")
    return UnitTable(top=top, family=family, units=units,
                     instances=dict(sorted(Counter(unit.module for unit in units).items())),
                     yosys=_yosys_version(stats["creator"]), date=date, seconds=seconds)


def unit_resources(block, cfg: AccelConfig, out_dir, family="ecp5") -> UnitTable:
    """Generate ``block`` for ``cfg`` into ``out_dir`` and count the cells of each of its units
    (:func:`hierarchy_resources`)."""
    verilog_path, manifest_path = generate(cfg, out_dir, block=block)
    top = json.loads(manifest_path.read_text())["top"]
    return hierarchy_resources(verilog_path, top, family)


def format_unit_table(table: UnitTable) -> str:
    """A Markdown table of ``table``: one row per module instance, the top first, then depth first.

    Columns: the instance path relative to the top; its own LUTs (LUT4 sites, see
    :func:`ecp5_resources`); their share of the whole design's LUTs (the column adds up to 100%);
    its LUTs with everything under it; its own flip-flops, DSPs, block RAMs and LUT RAMs
    (``TRELLIS_DPR16X4`` cells, whose LUT4 sites are in the LUT columns). A last row gives the
    totals.
    """
    design_luts = ecp5_resources(table.total)["luts"]

    def share(luts):
        return f"{100 * luts / design_luts:.1f}%" if design_luts else "-"

    lines = ["| unit | own LUTs | share | LUTs with submodules | FFs | DSPs | BRAMs | LUT RAM |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for unit in table.units:
        own, total = ecp5_resources(unit.own), ecp5_resources(unit.total)
        label = f"`{unit.path}`" if unit.path else f"`{table.top}` (top)"
        lines.append(f"| {label} | {own['luts']} | {share(own['luts'])} | {total['luts']} | {own['ffs']} "
                     f"| {own['dsps']} | {own['brams']} | {own['lutram']} |")
    total = ecp5_resources(table.total)
    lines.append(f"| **total** | {total['luts']} | {share(total['luts'])} | {total['luts']} | {total['ffs']} "
                 f"| {total['dsps']} | {total['brams']} | {total['lutram']} |")
    return "\n".join(lines)
