"""Benchmarks: figures measured on the generated RTL, printed and written to a report file."""

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from spattn.config import preset
from spattn.sim.runner import run_bench

__all__ = ["bench_topk", "bench_pe_array", "main"]

TOPK_SIZES = (16, 64, 256, 1024)
TOPK_RATIOS = (0.1, 0.5, 0.9)
TOPK_LANES = (1, 4, 16)


def bench_topk(out_dir="reports", simulator="verilator", sizes=TOPK_SIZES, ratios=TOPK_RATIOS,
               lanes=TOPK_LANES, trials=5):
    """Cycles of the top-k engine for every (P, n, k/n), next to the ideal n/P; returns the rows."""
    base = preset("default")
    rows = []
    started = time.monotonic()
    for p in lanes:
        cfg = dataclasses.replace(base, name=f"bench-p{p}", max_tokens=max(sizes),
                                  topk_comparators=p, topk_stream_lanes=16)
        sweep = [[n, max(1, round(ratio * n))] for n in sizes for ratio in ratios]
        for row in _run_sweep("topk", cfg, "spattn.sim.benches.topk_cycles", simulator,
                              {"SPATTN_TOPK_SWEEP": json.dumps(sweep), "SPATTN_BENCH_TRIALS": str(trials)}):
            row.update(P=p, ideal=row["n"] / p)
            rows.append(row)
    table = format_topk(rows, simulator, trials, time.monotonic() - started)
    _write_report(out_dir, "topk_cycles", table, rows)
    return rows


def _run_sweep(block, cfg, module, simulator, env, **kwargs):
    """Run the cocotb sweep bench ``module``; the points it measured, one dict each."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sweep.jsonl"
        run_bench(block, cfg, module, simulator=simulator, extra_env={**env, "SPATTN_BENCH_OUT": str(out)},
                  **kwargs)
        return [json.loads(line) for line in out.read_text().splitlines()]


def _write_report(out_dir, stem, table, data):
    """Print ``table`` and write it as ``<stem>.md`` next to the raw figures in ``<stem>.json``."""
    print(table)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.md").write_text(table)
    (out_dir / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")


def _markdown_table(header, align, rows):
    """Lines of a Markdown table: ``align`` holds one ``---`` or ``---:`` per column."""
    return (["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


def format_topk(rows, simulator, trials, seconds):
    lines = [
        f"Top-k engine cycles, command to last index beat, mean of {trials} random score sets "
        f"(uniform over the 16-bit format, streams never stalled; {simulator}, {seconds:.0f} s wall)",
        "",
        *_markdown_table(
            ["P", "n", "k", "cycles", "worst seen", "ideal n/P", "cycles / (n/P)"], ["---:"] * 7,
            [[str(r["P"]), str(r["n"]), str(r["k"]), f"{r['cycles']:.1f}", str(r["max_cycles"]),
              f"{r['ideal']:.1f}", f"{r['cycles'] / r['ideal']:.2f}"] for r in rows]),
    ]
    return "\n".join(lines) + "\n"


PE_SHAPES = ((64, 32, 64), (128, 32, 128), (128, 64, 128))
PE_SPARSITIES = (0.0, 0.5, 0.9)
PE_BLOCKS = ("pe_array", "pe_array_ws")


def bench_pe_array(out_dir="reports", simulator="verilator", shapes=PE_SHAPES, sparsities=PE_SPARSITIES,
                   blocks=PE_BLOCKS, pnr=True, build_root="build"):
    """Cycles and utilization of the PE array (default preset) per dataflow, shape and activation
    sparsity, next to the ideal ``M*K*N / (R*C)``; with ``pnr``, Fmax and resources of each dataflow
    from an out-of-context nextpnr run on the ULX3S-85F. Returns ``(rows, implementations)``."""
    from spattn.gen.synth import place_and_route_ecp5, synthesize
    from spattn.hw.pe_array import PE_ARRAY_VARIANTS
    from spattn.sim.golden.matmul import ideal_cycles

    cfg = preset("default")
    rows, impls = [], []
    started = time.monotonic()
    sweep = [[m, k, n, s] for m, k, n in shapes for s in sparsities]
    for block in blocks:
        for row in _run_sweep(block, cfg, "spattn.sim.benches.pe_array_cycles", simulator,
                              {"SPATTN_PE_SWEEP": json.dumps(sweep)},
                              build_root=str(Path(build_root) / "sim")):
            row.update(block=block, dataflow=PE_ARRAY_VARIANTS[block]["dataflow"],
                       ideal=ideal_cycles(row["m"], row["k"], row["n"], cfg),
                       utilization=row["macs"] / (cfg.pe_rows * cfg.pe_cols * row["busy_cycles"]))
            rows.append(row)
    sim_seconds = time.monotonic() - started
    if pnr:
        for block in blocks:
            synth = synthesize(block, cfg, "ecp5", Path(build_root) / "synth" / f"{block}-{cfg.name}")
            placed = place_and_route_ecp5(synth, cfg.clock_mhz)
            impls.append({"block": block, "dataflow": PE_ARRAY_VARIANTS[block]["dataflow"],
                          "synth_seconds": synth.seconds, **dataclasses.asdict(placed)})
    table = format_pe_array(rows, impls, cfg, simulator, sim_seconds)
    _write_report(out_dir, "pe_array", table, {"runs": rows, "implementations": impls})
    return rows, impls


def format_pe_array(rows, impls, cfg, simulator, seconds):
    lines = [
        f"PE array, preset {cfg.name}: {cfg.pe_rows} x {cfg.pe_cols} MACs, {cfg.act_bits}-bit operands, "
        f"{cfg.acc_bits}-bit accumulators, activation tiles of {cfg.pe_rows} A values (OS: a column "
        f"segment, WS: a row segment). A and B uniform random, "
        f"threshold = the |A| quantile of the target sparsity; streams never stalled ({simulator}, "
        f"{seconds:.0f} s wall). Busy = compute phase (end of loading to last result beat); "
        "utilization = MACs performed / (R x C x busy cycles); total = command to last result beat.",
        "",
        *_markdown_table(
            ["dataflow", "M x K x N", "A sparsity", "skipped tile passes", "total cycles", "load cycles",
             "busy cycles", "ideal M·K·N/(R·C)", "busy / ideal", "utilization"],
            ["---", "---"] + ["---:"] * 8,
            [[r["dataflow"], f"{r['m']} x {r['k']} x {r['n']}", f"{100 * r['sparsity']:.0f}%",
              str(r["skipped_tiles"]), str(r["cycles"]), str(r["load_cycles"]), str(r["busy_cycles"]),
              f"{r['ideal']:.0f}", f"{r['busy_cycles'] / r['ideal']:.2f}", f"{100 * r['utilization']:.1f}%"]
             for r in rows]),
    ]
    if impls:
        lines += [
            "",
            f"Out-of-context place and route on the ULX3S-85F (nextpnr-ecp5, target {cfg.clock_mhz} MHz):",
            "",
            *_markdown_table(
                ["dataflow", "Fmax (MHz)", "LUTs", "registers", "DSPs (MULT18X18D)", "block RAMs (DP16KD)"],
                ["---"] + ["---:"] * 5,
                [[i["dataflow"], f"{i['fmax_mhz']:.1f}", str(i["luts"]), str(i["registers"]), str(i["dsps"]),
                  str(i["brams"])] for i in impls]),
        ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="spattn bench", description=__doc__)
    parser.add_argument("block", choices=["topk", "pe_array"])
    parser.add_argument("-o", "--out", default="reports", help="report directory (default: reports)")
    parser.add_argument("--simulator", default="verilator", choices=["verilator", "icarus"])
    parser.add_argument("--trials", type=int, default=5, help="random score sets per point")
    parser.add_argument("--no-pnr", action="store_true", help="pe_array: skip synthesis and nextpnr")
    args = parser.parse_args(argv)
    if args.block == "pe_array":
        bench_pe_array(args.out, args.simulator, pnr=not args.no_pnr)
    else:
        bench_topk(args.out, args.simulator, trials=args.trials)
