"""Verilog generation: one block of the accelerator, its Verilog and a JSON manifest."""

import functools
import json
import time
from importlib.metadata import version
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Shape
from amaranth.lib import wiring

from spattn.config import AccelConfig
from spattn.hw.accelerator import Accelerator
from spattn.hw.attention import AttentionCore
from spattn.hw.pe_array import PE_ARRAY_VARIANTS, PEArray
from spattn.hw.topk import TopKEngine

from .regmap import write_register_files

__all__ = ["BLOCKS", "top_name", "port_list", "generate"]

#: Blocks that can be generated on their own, by name.
BLOCKS = {
    "topk": TopKEngine,
    "attention": AttentionCore,
    "accelerator": Accelerator,
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
    text = verilog.convert(component, name=top, emit_src=False)
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
    if block == "accelerator":
        # the register map as a C header and a Markdown table, from the same config object
        header, table = write_register_files(cfg, out_dir, top)
        manifest["register_files"] = [header.name, table.name]
    manifest_path = out_dir / f"{top}.json"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return verilog_path, manifest_path
