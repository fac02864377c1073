"""Verilog generation: one block of the accelerator, its Verilog and a JSON manifest."""

import functools
import json
import re
import time
from importlib.metadata import version
from pathlib import Path

from amaranth._toolchain.yosys import find_yosys
from amaranth.back import rtlil
from amaranth.hdl import Shape
from amaranth.lib import wiring

from spattn.config import AccelConfig
from spattn.hw.accelerator import Accelerator
from spattn.hw.attention import AttentionCore
from spattn.hw.link import HostLink
from spattn.hw.pe_array import PE_ARRAY_VARIANTS, PEArray
from spattn.hw.system import AcceleratorSystem
from spattn.hw.topk import TopKEngine

from .regmap import write_register_files

__all__ = ["BLOCKS", "top_name", "port_list", "convert", "generate"]

#: Blocks that can be generated on their own, by name.
BLOCKS = {
    "topk": TopKEngine,
    "attention": AttentionCore,
    "accelerator": Accelerator,
    "host_link": HostLink,
    "system": AcceleratorSystem,
    # The PE array in each of its generation-time variants (dataflow, tile, overflow rule).
    **{name: functools.partial(PEArray, **params) for name, params in PE_ARRAY_VARIANTS.items()},
}


def top_name(block):
    return f"spattn_{block}"


def port_list(component: wiring.Component):
    """The Verilog ports of ``component`` as Amaranth names them (``cmd__valid``): name, direction, width."""
    ports = []
    for path, member, _ in component.signature.flatten(component):
        ports.append({
            "name": "__".join(str(part) for part in path),
            "direction": "input" if member.flow is wiring.In else "output",
            "width": Shape.cast(member.shape).width,
        })
    return ports


#: A function Yosys writes for a ``$pmux`` cell, named after the cell: ``\$procmux$12``.
_PMUX_FUNCTION = re.compile(r"^ *function \[\d+:0\] \\(\$\S+) ;$", re.MULTILINE)
#: An escaped Verilog identifier and the space that ends it.
_ESCAPED_NAME = re.compile(r"\\\S+ ")


def convert(component, top):
    """The Verilog of ``component`` with top module ``top``, the same on every simulator.

    ``amaranth.back.verilog.convert`` keeps each combinational process as an ``always @*`` block
    (``proc -nomux``), which Yosys guards with a trigger register declared ``reg ... = 0`` so the
    block runs once at time zero. In SystemVerilog mode (``iverilog -g2012``, as cocotb runs it)
    Icarus Verilog applies declaration initialisers before any process starts, without an event, so
    a block whose inputs never change (the outputs of a state machine resting in its reset state)
    never runs and its outputs stay X. Here Yosys's full ``proc`` turns those processes into
    multiplexers instead: the file holds continuous assignments and clocked blocks only, which every
    simulator evaluates from time zero, and synthesis would build the same multiplexers anyway.
    """
    rtlil_text = rtlil.convert(component, name=top, emit_src=False)
    script = [
        f"read_rtlil <<rtlil\n{rtlil_text}\nrtlil",
        "proc -norom",  # as Amaranth's own script, but with proc_mux: no process is left
        "memory_collect",
        # -noparallelcase: a $pmux becomes a plain `case` with an X default rather than a
        # `(* parallel_case *) casez` of overlapping patterns, which Verilator flags (CASEOVERLAP)
        "write_verilog -norename -noparallelcase",
    ]
    yosys = find_yosys(lambda ver: ver >= (0, 40))
    text = yosys.run(["-q", "-"], "\n".join(script), ignore_warnings=True)
    # Icarus Verilog reads a call of a function whose escaped name starts with `$` (Yosys names a
    # $pmux function after its cell, `\$procmux$12`) as a system function call: drop the `$`.
    functions = set(_PMUX_FUNCTION.findall(text))
    taken = {f"\\{name[1:]} " for name in functions} & set(_ESCAPED_NAME.findall(text))
    if taken:
        raise RuntimeError(f"renaming the multiplexer functions of {top}: {sorted(taken)[0]} is taken")
    text = _ESCAPED_NAME.sub(lambda found: "\\" + found.group(0)[2:] if found.group(0)[1:-1] in functions
                             else found.group(0), text)
    if "always @*" in text or "verilog_backend" in text:
        raise RuntimeError(f"Verilog of {top} still has a combinational process")
    return text


def generate(cfg: AccelConfig, out_dir, block="topk"):
    """Write ``<top>.v`` and ``<top>.json`` for ``block`` under ``cfg`` into ``out_dir``.

    Returns the paths of the Verilog file and the manifest. An unknown block raises ``ValueError``
    naming the known ones.
    """
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {sorted(BLOCKS)}, not {block!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    top = top_name(block)
    component = BLOCKS[block](cfg)
    started = time.monotonic()
    text = convert(component, top)
    elapsed = time.monotonic() - started
    verilog_path = out_dir / f"{top}.v"
    verilog_path.write_text(text)
    manifest = {
        "spattn_version": version("spattn"),
        "block": block,
        "top": top,
        "clock": "clk",
        "reset": "rst",
        "config": cfg.to_dict(),
        "ports": port_list(component),
        "metadata": component.metadata.as_json(),
        "generation_seconds": round(elapsed, 3),
    }
    if block in ("accelerator", "system"):
        # the register map as a C header and a Markdown table, from the same config object
        header, table = write_register_files(cfg, out_dir, top)
        manifest["register_files"] = [header.name, table.name]
    manifest_path = out_dir / f"{top}.json"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return verilog_path, manifest_path
