"""The ``spattn`` command: generate Verilog, build bitstreams, run benchmarks and evaluations."""

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from spattn.config import PRESETS, ConfigError, preset
from spattn.fpga.link import DEFAULT_TIMEOUT_S

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


#: The preset and design ``spattn bitstream`` builds for each board unless told otherwise.
BOARD_DEFAULTS = {"ulx3s-85f": ("minilm", "accelerator"), "icebreaker": ("tiny", "topk-selftest")}


def _bitstream(args):
    from spattn.fpga.build import build_bitstream, format_report

    board = args.board or (preset(args.preset).board if args.preset else "ulx3s-85f")
    if board not in BOARD_DEFAULTS:
        raise ConfigError(f"board must be one of {sorted(BOARD_DEFAULTS)}, not {board!r}")
    default_preset, default_design = BOARD_DEFAULTS[board]
    cfg = preset(args.preset or default_preset)
    design = args.design or default_design
    print(f"building {design} of preset {cfg.name} for {board} at {cfg.clock_mhz:g} MHz "
          f"(Yosys, then nextpnr; a line every 30 s)", flush=True)
    report = build_bitstream(cfg, board=board, build_dir=args.output, design=design,
                             progress=lambda line: print(line, flush=True))
    print(format_report(report))
    report_path = Path(report.bitstream).with_suffix(".report.json")
    report_path.write_text(report.to_json())
    print(f"report written to {report_path}")
    if not report.timing_met:
        print(f"spattn: error: nextpnr reaches {report.fmax_mhz:.2f} MHz, below the {report.target_mhz:g} MHz "
              f"clock: the bitstream would not run reliably", file=sys.stderr)
        return 1
    return 0


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


def _run(args):
    import asyncio

    from spattn.fpga.driver import AcceleratorError
    from spattn.fpga.link import LinkError, LinkTransport, SerialChannel
    from spattn.fpga.run import run_and_report
    from spattn.memmap import MemoryMap
    from spattn.sim.golden.minilm import load_minilm
    from spattn.sim.golden.sparse import check_model_fits

    cfg = preset(args.preset)
    model = load_minilm()
    check_model_fits(model, cfg)
    try:
        channel = SerialChannel(args.port, args.baud or cfg.link_baud)
    except OSError as error:    # pyserial's SerialException is an OSError
        print(f"spattn: error: cannot open {args.port}: {error}", file=sys.stderr)
        return 2
    with channel:
        transport = LinkTransport(channel, MemoryMap(cfg).size, timeout=args.timeout)
        try:
            result = asyncio.run(run_and_report(transport, cfg, model, args.sentence))
        except (LinkError, AcceleratorError) as error:
            print(f"spattn: error: {error}", file=sys.stderr)
            return 1
    return 0 if result.ok else 1


def _program(args):
    from spattn.fpga.program import default_bitstream, program
    from spattn.fpga.toolchain import ToolchainError

    bitstream = args.bitstream or default_bitstream(args.board)
    if bitstream is None:
        raise ConfigError(f"no accelerator bitstream for {args.board} under build/fpga: build one with "
                          f"`spattn bitstream --board {args.board}` or give --bitstream")
    print(f"loading {bitstream} into the {'flash' if args.flash else 'SRAM'} of the {args.board}", flush=True)
    try:
        return program(bitstream, args.board, flash=args.flash)
    except (FileNotFoundError, ToolchainError) as error:
        print(f"spattn: error: {error}", file=sys.stderr)
        return 2


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
                           help="configuration (default: minilm for ulx3s-85f, tiny for icebreaker)")
    bitstream.add_argument("--design", default=None, choices=["accelerator", "topk-selftest"],
                           help="accelerator: the accelerator behind the UART host link (ULX3S); "
                                "topk-selftest: the top-k engine checking itself "
                                "(default: accelerator on the ULX3S, topk-selftest on the iCEBreaker)")
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

    run = commands.add_parser("run", help="embed a sentence on a board over its UART link, checked against "
                                          "the golden model")
    run.add_argument("sentence", help="the sentence (quote it)")
    run.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB0")
    run.add_argument("--baud", type=int, default=None,
                     help="link baud rate (default: the preset's link_baud)")
    run.add_argument("--preset", default="minilm", help="the configuration the bitstream was built with")
    run.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                     help="seconds without a frame from the board before giving up")
    run.set_defaults(run=_run)

    program = commands.add_parser("program", help="load a bitstream onto the board with openFPGALoader")
    program.add_argument("--bitstream", default=None,
                         help="the bitstream (default: the newest accelerator bitstream of the board under "
                              "build/fpga)")
    program.add_argument("--board", default="ulx3s-85f", choices=["ulx3s-85f"])
    program.add_argument("--flash", action="store_true",
                         help="write the configuration flash (kept at power-off) instead of SRAM")
    program.set_defaults(run=_program)

    for name, (_, text) in FORWARDED.items():
        commands.add_parser(name, help=text)

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in FORWARDED:
        module = importlib.import_module(FORWARDED[argv[0]][0])
        return module.main(argv[1:]) or 0
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except ConfigError as error:
        print(f"spattn: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
