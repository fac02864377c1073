"""The ``spattn`` command: generate Verilog, build bitstreams, run benchmarks and evaluations."""

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from spattn.config import PRESETS, ConfigError, preset

from .verilog import BLOCKS, generate

__all__ = ["main"]


def _verilog(args):
    cfg = preset(args.preset)
    for block in args.block or sorted(BLOCKS):
        verilog_path, manifest_path = generate(cfg, args.output, block=block)
        extra = json.loads(manifest_path.read_text()).get("register_files", [])
        also = "".join(f", {manifest_path.parent / name}" for name in extra)
        print(f"wrote {verilog_path} and {manifest_path}{also}")


def _check(args):
    from spattn.sim.runner import run_bench

    cfg = preset(args.preset)
    for block in args.block or sorted(BLOCKS):
        results = run_bench(block, cfg, f"spattn.sim.benches.{block}_bench", simulator=args.simulator,
                            extra_env={"SPATTN_TOPK_BEATS": str(args.beats)})
        print(f"{block} ({cfg.name}, {args.simulator}): every cocotb test passed, results in {results}")


def _bitstream(args):
    from spattn.fpga.build import build_bitstream, format_report

    if args.preset:
        cfg = preset(args.preset)
    else:
        # The preset made for the board: default on the ULX3S, tiny on the iCEBreaker.
        board = args.board or "ulx3s-85f"
        matching = [name for name in ("default", "tiny") if PRESETS[name].board == board]
        cfg = preset(matching[0] if matching else "default")
    report = build_bitstream(cfg, board=args.board or cfg.board, build_dir=args.output)
    print(format_report(report))
    report_path = Path(report.bitstream).with_suffix(".report.json")
    report_path.write_text(report.to_json())
    print(f"report written to {report_path}")


def _units(args):
    from .synth import format_unit_table, unit_resources

    cfg = preset(args.preset)
    started = time.monotonic()
    table = unit_resources(args.block, cfg, Path(args.build_dir) / f"{args.block}-{cfg.name}")
    wall = time.monotonic() - started
    text = format_unit_table(table)
    heading = (
        f"# LUTs per unit: {args.block}, preset {cfg.name}\n\n"
        f"Measured {table.date} with {table.yosys}, `synth_ecp5 -noflatten` (ECP5, module hierarchy "
        f"kept); {wall:.1f} s wall, of which Yosys {table.seconds:.1f} s.\n\n"
        "- LUTs: LUT4 sites as nextpnr-ecp5 counts them before packing: one per LUT4, two per CCU2C carry "
        "cell, six per TRELLIS_DPR16X4 LUT RAM (four RAM LUTs and the two of its write-port slice). "
        "nextpnr's TRELLIS_COMB after packing also holds carry feed-through and constant cells, which "
        "belong to no unit.\n"
        "- own: the module's own cells; share: own LUTs over the block's total, so the column adds up to "
        "100%; FFs (TRELLIS_FF), DSPs (MULT18X18D), BRAMs (DP16KD) and LUT RAM (TRELLIS_DPR16X4 cells) "
        "are own.\n"
        "- Nothing is optimized across module boundaries, so the total can exceed a flat synthesis of "
        "the block.\n"
    )
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    markdown_path = output / f"{args.block}_units.md"
    json_path = output / f"{args.block}_units.json"
    markdown_path.write_text(f"{heading}\n{text}\n")
    json_path.write_text(json.dumps({"block": args.block, "preset": cfg.name, "wall_seconds": round(wall, 1),
                                     **table.to_dict()}, indent=2) + "\n")
    print(text)
    print(f"wrote {markdown_path} and {json_path}")


#: Commands handled by another module's ``main(argv)``, which parses its own options.
FORWARDED = {
    "bench": ("spattn.sim.bench", "measure cycles on the generated RTL (spattn bench topk)"),
    "eval": ("spattn.sim.eval", "fidelity and memory-traffic report of the pruning algorithm"),
    "vectors": ("spattn.sim.vectors", "dump real MiniLM Q/K/V test vectors"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="spattn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    verilog = commands.add_parser("verilog", help="write Verilog and a JSON manifest")
    verilog.add_argument("--preset", default="default", help=f"one of {', '.join(PRESETS)}")
    verilog.add_argument("--block", action="append", choices=sorted(BLOCKS),
                         help="block to generate (repeatable; default: all)")
    verilog.add_argument("-o", "--output", default="build", help="output directory")
    verilog.set_defaults(run=_verilog)

    check = commands.add_parser("check", help="cocotb check of the preset's Verilog against the golden model")
    check.add_argument("--preset", default="default", help=f"one of {', '.join(PRESETS)}")
    check.add_argument("--simulator", default="verilator", choices=["verilator", "icarus"])
    check.add_argument("--block", action="append", choices=sorted(BLOCKS),
                       help="block to check (repeatable; default: all)")
    check.add_argument("--beats", type=int, default=2000, help="random top-k index beats to check")
    check.set_defaults(run=_check)

    bitstream = commands.add_parser("bitstream", help="build a bitstream with Yosys and nextpnr")
    bitstream.add_argument("--board", default=None, help="ulx3s-85f or icebreaker (default: the preset's)")
    bitstream.add_argument("--preset", default=None,
                           help="configuration (default: default for ulx3s-85f, tiny for icebreaker)")
    bitstream.add_argument("-o", "--output", default="build/fpga", help="build directory")
    bitstream.set_defaults(run=_bitstream)

    units = commands.add_parser("units", help="LUTs, flip-flops, DSPs and block RAMs of each unit of a block "
                                              "(Yosys, ECP5, hierarchy kept)")
    units.add_argument("--block", required=True, choices=sorted(BLOCKS), help="block to measure")
    units.add_argument("--preset", default="default", help=f"one of {', '.join(PRESETS)}")
    units.add_argument("-o", "--output", default="reports",
                       help="directory for <block>_units.md and <block>_units.json")
    units.add_argument("--build-dir", default="build/units",
                       help="directory for the Verilog and Yosys files (a subdirectory per block and preset)")
    units.set_defaults(run=_units)

    for name, (_, text) in FORWARDED.items():
        commands.add_parser(name, help=text)

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in FORWARDED:
        module = importlib.import_module(FORWARDED[argv[0]][0])
        return module.main(argv[1:]) or 0
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except ConfigError as error:
        print(f"spattn: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
