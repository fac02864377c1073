"""Benchmarks: figures measured on the generated RTL, printed and written to a report file."""

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from spattn.config import preset
from spattn.sim.runner import run_bench

__all__ = ["bench_topk", "main"]

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
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "sweep.jsonl"
            run_bench("topk", cfg, "spattn.sim.benches.topk_cycles", simulator=simulator,
                      extra_env={"SPATTN_TOPK_SWEEP": json.dumps(sweep), "SPATTN_BENCH_OUT": str(out),
                                 "SPATTN_BENCH_TRIALS": str(trials)})
            for line in out.read_text().splitlines():
                row = json.loads(line)
                row.update(P=p, ideal=row["n"] / p)
                rows.append(row)
    table = format_topk(rows, simulator, trials, time.monotonic() - started)
    print(table)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "topk_cycles.md").write_text(table)
    (out_dir / "topk_cycles.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def format_topk(rows, simulator, trials, seconds):
    lines = [
        f"Top-k engine cycles, command to last index beat, mean of {trials} random score sets "
        f"(uniform over the 16-bit format, streams never stalled; {simulator}, {seconds:.0f} s wall)",
        "",
        "| P | n | k | cycles | worst seen | ideal n/P | cycles / (n/P) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['P']} | {r['n']} | {r['k']} | {r['cycles']:.1f} | {r['max_cycles']} | "
                     f"{r['ideal']:.1f} | {r['cycles'] / r['ideal']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="spattn bench", description=__doc__)
    parser.add_argument("block", choices=["topk"])
    parser.add_argument("-o", "--out", default="reports", help="report directory (default: reports)")
    parser.add_argument("--simulator", default="verilator", choices=["verilator", "icarus"])
    parser.add_argument("--trials", type=int, default=5, help="random score sets per point")
    args = parser.parse_args(argv)
    bench_topk(args.out, args.simulator, trials=args.trials)
