"""Benchmarks: figures measured on the generated RTL, printed and written to a report file."""

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path
from statistics import median

from spattn.config import MIN_CLOCKS_PER_BIT, preset
from spattn.sim.runner import run_bench

__all__ = ["bench_topk", "pnr_topk", "bench_pe_array", "bench_attention", "bench_softmax", "bench_accelerator",
           "bench_system", "fastest_link", "main"]

TOPK_SIZES = (16, 64, 256, 1024)
TOPK_RATIOS = (0.1, 0.5, 0.9)
TOPK_LANES = (1, 4, 16)


#: Figures of the first engine revision (quick-select by value bisection, buffers in LUT RAM), kept
#: so that the report shows them next to today's.
TOPK_REVISION1 = Path(__file__).resolve().parents[1] / "reports" / "topk_cycles_rev1.json"
#: The figures the README shows: ``spattn bench topk`` fails when a point runs 10% slower.
TOPK_RECORDED = Path(__file__).resolve().parents[1] / "reports" / "topk_cycles.json"
#: The clock nextpnr is asked for when the top-k engine is placed and routed (MHz).
TOPK_PNR_TARGET_MHZ = 100
#: nextpnr seeds the top-k engine is placed with: its Fmax moves by several percent from one
#: placement to the next, so one seed's figure says little about the margin.
TOPK_PNR_SEEDS = (1, 2, 3, 4)


def bench_topk(out_dir="reports", simulator="verilator", sizes=TOPK_SIZES, ratios=TOPK_RATIOS,
               lanes=TOPK_LANES, trials=5, limits=None):
    """Cycles of the top-k engine for every (P, n, k/n): single runs and back to back, next to the
    target 2 ceil(n/P) + 8, and single runs split into selection (last score to first index) and
    emission, beside what the target leaves for selection; returns the rows. ``limits``: recorded
    points (as this writes them) that no point may exceed by more than 10%."""
    base = preset("default")
    rows = []
    started = time.monotonic()
    for p in lanes:
        cfg = topk_bench_config(base, p, max(sizes))
        sweep = [[n, max(1, round(ratio * n))] for n in sizes for ratio in ratios]
        env = {"SPATTN_TOPK_SWEEP": json.dumps(sweep), "SPATTN_BENCH_TRIALS": str(trials)}
        if limits is not None:
            env["SPATTN_TOPK_LIMITS"] = json.dumps(limits)
        for row in _run_sweep("topk", cfg, "spattn.sim.benches.topk_cycles", simulator, env):
            target, beats = 2 * math.ceil(row["n"] / p) + 8, math.ceil(row["k"] / p)
            # What the target leaves for selection after this engine's input, with the output at
            # P indices a cycle.
            row.update(P=p, target=target, beats=beats, selection_allowed=target - row["input"] - beats + 1)
            rows.append(row)
    revision1 = json.loads(TOPK_REVISION1.read_text()) if TOPK_REVISION1.exists() else []
    table = format_topk(rows, revision1, simulator, trials, time.monotonic() - started)
    _write_report(out_dir, "topk_cycles", table, rows)
    return rows


def topk_bench_config(base, p, max_tokens):
    """The benchmarked engine: ``base`` with P lanes and 16-lane input beats (``default`` at P = 16)."""
    return dataclasses.replace(base, name=f"bench-p{p}" if p != base.topk_comparators else base.name,
                               max_tokens=max_tokens, topk_comparators=p, topk_stream_lanes=16)


def pnr_topk(out_dir="reports", build_root="build", target_mhz=TOPK_PNR_TARGET_MHZ, seeds=TOPK_PNR_SEEDS):
    """Place and route the ``default`` preset's top-k engine on the ULX3S-85F out of context, once per
    nextpnr seed in ``seeds``: resources, and Fmax with the slowest path of each placement, written
    to ``topk_pnr.md`` and ``.json``. Returns the figures (a dict)."""
    from spattn.gen.synth import place_and_route_ecp5, synthesize

    cfg = preset("default")
    synth = synthesize("topk", cfg, "ecp5", Path(build_root) / "synth" / f"topk-{cfg.name}")
    placements = {seed: place_and_route_ecp5(synth, target_mhz, seed=seed) for seed in seeds}
    placed = placements[seeds[0]]
    fmax = sorted(result.fmax_mhz for result in placements.values())
    lowest, middle = fmax[0], median(fmax)
    figures = {"preset": cfg.name, "synth_seconds": synth.seconds, "seeds": list(seeds),
               "fmax_min_mhz": lowest, "fmax_median_mhz": middle,
               "placements": {str(seed): dataclasses.asdict(result) for seed, result in placements.items()}}
    met = sum(value >= target_mhz for value in fmax)
    table = "\n".join([
        f"Top-k engine, preset `{cfg.name}` (P = {cfg.topk_comparators}, {cfg.max_tokens} tokens, "
        f"{cfg.score_bits}-bit scores), out of context on the {placed.device}: `spattn bench topk --pnr`, "
        f"Yosys `synth_ecp5` ({synth.seconds:.0f} s), nextpnr-ecp5 router1 asked for {target_mhz} MHz, "
        f"once per seed; resources of seed {seeds[0]}'s placement.",
        "",
        *_markdown_table(["LUT4s", "registers", "DSPs", "block RAMs (DP16KD)", "Fmax, lowest (MHz)",
                          "Fmax, median (MHz)", f"seeds at {target_mhz} MHz or more"], ["---:"] * 7,
                         [[str(placed.luts), str(placed.registers), str(placed.dsps), str(placed.brams),
                           f"{lowest:.2f}", f"{middle:.2f}", f"{met} of {len(fmax)}"]]),
        "",
        *_markdown_table(["seed", "Fmax (MHz)", "LUT4s", "slowest path from", "to", "nextpnr (s)"],
                         ["---:", "---:", "---:", "---", "---", "---:"],
                         [[str(seed), f"{result.fmax_mhz:.2f}", str(result.luts), f"`{result.critical_from}`",
                           f"`{result.critical_to}`", f"{result.seconds:.0f}"]
                          for seed, result in placements.items()]),
    ]) + "\n"
    _write_report(out_dir, "topk_pnr", table, figures)
    return figures


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


def format_topk(rows, revision1, simulator, trials, seconds):
    before = {(r["P"], r["n"], r["k"]): r["cycles"] for r in revision1}
    lines = [
        f"Top-k engine cycles, command to last index beat, mean of {trials} random score sets "
        f"(uniform over the 16-bit format, streams never stalled; {simulator}, {seconds:.0f} s wall). "
        "Back to back: the same runs queued, cycles per run. Target: 2 ceil(n/P) + 8. "
        "Revision 1: the first engine (quick-select by value bisection). "
        "Selection: single runs, from the last score beat to the first index beat; the target allows "
        "at most target - input - ceil(k/P) + 1 there, with the input as measured (ceil(n/P) cycles, one "
        "a beat for runs ranked by all pairs) and the output at P indices every cycle. Emission: from "
        "the first index beat to the last, both counted.",
        "",
        *_markdown_table(
            ["P", "n", "k", "revision 1", "cycles", "worst seen", "back to back", "target", "cycles / target",
             "selection", "target allows", "emission", "ceil(k/P)"], ["---:"] * 13,
            [[str(r["P"]), str(r["n"]), str(r["k"]),
              f"{before[(r['P'], r['n'], r['k'])]:.1f}" if (r["P"], r["n"], r["k"]) in before else "",
              f"{r['cycles']:.1f}", str(r["max_cycles"]), f"{r['back_to_back']:.1f}", str(r["target"]),
              f"{r['cycles'] / r['target']:.2f}", f"{r['selection']:.1f}", f"{r['selection_allowed']:.0f}",
              f"{r['emission']:.1f}", str(r["beats"])]
             for r in rows]),
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


ATTN_SENTENCES = (41, 43, -1)   # 44 and 98 tokens of the evaluation corpus, and max_tokens (-1)
ATTN_LAYERS = (0, 5)
ATTN_HEADS = (0, 3, 6, 9)       # a third of MiniLM's heads keeps a default run near 10 minutes
ATTN_THRESHOLD = 0.1
ATTN_KEEPS = (1.0, 0.5, 0.25)
#: DynaTran thresholds (real units): 0.1 zeroes about 11% of MiniLM's Q/K/V at a mean embedding
#: cosine of 0.998 (``spattn eval``); None prunes everything.
ATTN_DYNATRAN = (0.1, None)


def attention_settings(cfg, threshold=ATTN_THRESHOLD, keeps=ATTN_KEEPS, dynatran=ATTN_DYNATRAN):
    """The benchmarked settings: dense (every row once at full precision, every V row), then
    progressive quantization at ``threshold`` with each value-keep ratio of ``keeps``, then dense
    with each DynaTran threshold of ``dynatran`` (None: one that prunes every value)."""
    from spattn.formats import (AttentionFormats, dynatran_threshold_int, recompute_threshold_int,
                                value_keep_int)

    fmt = AttentionFormats.of(cfg)
    dense = {"progressive": False, "threshold": 0, "value_keep": value_keep_int(1.0), "dynatran": 0}
    settings = [{"name": "dense", **dense}]
    for keep in keeps:
        settings.append({"name": f"progressive {threshold:g}, keep {keep:g}", **dense, "progressive": True,
                         "threshold": recompute_threshold_int(threshold, fmt.prob),
                         "value_keep": value_keep_int(keep)})
    for tau in dynatran:
        if tau is None:
            settings.append({"name": "DynaTran, prune all", **dense, "dynatran": (1 << (cfg.act_bits - 1)) + 1})
        else:
            settings.append({"name": f"DynaTran {tau:g}", **dense,
                             "dynatran": dynatran_threshold_int(tau, fmt.act)})
    return settings


def bench_attention(out_dir="reports", simulator="verilator", sentences=ATTN_SENTENCES, layers=ATTN_LAYERS,
                    heads=ATTN_HEADS, threshold=ATTN_THRESHOLD, keeps=ATTN_KEEPS, latency=4,
                    dynatran=ATTN_DYNATRAN):
    """Cycles, memory traffic, recomputed rows and PE utilization of the attention core (``minilm``
    preset) on real MiniLM heads, per setting; every head is checked bit for bit. Returns the rows,
    one per head and setting."""
    cfg = preset("minilm")
    settings = attention_settings(cfg, threshold, keeps, dynatran)
    spec = {"latency": latency, "sentences": list(sentences), "layers": list(layers),
            "heads": list(heads) if heads else None, "settings": settings}
    started = time.monotonic()
    rows = _run_sweep("attention", cfg, "spattn.sim.benches.attention_bench", simulator,
                      {"SPATTN_ATTN_BENCH": json.dumps(spec)}, testcase="benchmark")
    seconds = time.monotonic() - started
    tokens = {row["sentence"]: row["n"] for row in rows}
    summary = summarize_attention(rows)
    table = format_attention(rows, summary, cfg, tokens, simulator, latency, seconds)
    _write_report(out_dir, "attention", table,
                  {"config": cfg.name, "latency": latency, "simulator": simulator,
                   "seconds": round(seconds, 1), "settings": settings, "summary": summary, "heads": rows})
    return rows


def _group(rows, key):
    groups = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def _aggregate(rows):
    """Totals over heads: cycles and bytes summed, utilizations from the summed MACs and cycles."""
    total = {name: sum(r[name] for r in rows) for name in
             ("n", "busy_cycles", "bytes_fetched", "dense_bytes", "rows_recomputed", "pe_busy_cycles",
              "pe_macs", "ideal_cycles")}
    return {"heads": len(rows), **total}


def summarize_attention(rows):
    """Per setting and per (sentence, layer, setting): the totals of :func:`_aggregate`."""
    out = []
    for (sentence, layer, setting), group in _group(rows, lambda r: (r["sentence"], r["layer"],
                                                                     r["setting"])).items():
        out.append({"sentence": sentence, "layer": layer, "setting": setting, **_aggregate(group)})
    for setting, group in _group(rows, lambda r: r["setting"]).items():
        out.append({"sentence": None, "layer": None, "setting": setting, **_aggregate(group)})
    return out


def format_attention(rows, summary, cfg, tokens, simulator, latency, seconds):
    pe = cfg.pe_rows * cfg.pe_cols

    def line(s):
        where = "all" if s["sentence"] is None else f"{s['sentence']} ({tokens[s['sentence']]} tok)"
        return [where, "all" if s["layer"] is None else str(s["layer"]), s["setting"], str(s["heads"]),
                f"{s['busy_cycles'] / s['heads']:.0f}", f"{s['ideal_cycles'] / s['heads']:.0f}",
                f"{s['busy_cycles'] / s['ideal_cycles']:.2f}",
                f"{100 * s['ideal_cycles'] / s['busy_cycles']:.1f}%",
                f"{s['bytes_fetched'] / s['heads']:.0f}",
                f"{100 * s['bytes_fetched'] / s['dense_bytes']:.1f}%",
                f"{100 * s['rows_recomputed'] / s['n']:.1f}%",
                f"{100 * s['pe_macs'] / (pe * s['busy_cycles']):.1f}%",
                f"{100 * s['pe_busy_cycles'] / s['busy_cycles']:.1f}%"]

    lines = [
        f"Attention core, preset {cfg.name}: {cfg.pe_rows} x {cfg.pe_cols} PE array, "
        f"head_dim {cfg.head_dim}, "
        f"{cfg.act_bits}-bit Q/K/V as {cfg.act_msb_bits} MSB + {cfg.act_lsb_bits} LSB planes. Real "
        f"all-MiniLM-L6-v2 heads (whole evaluation sentences; -1 is the corpus run together to "
        f"max_tokens), every output beat checked against the golden model. Streams never stalled; "
        f"memory answers each plane row {latency} cycles after its request, pipelined ({simulator}, "
        f"{len(rows)} heads, {seconds:.0f} s wall).",
        "",
        "Cycles = the core's busy_cycles per head; ideal = 2·n²·head_dim/(R·C), the dense head at one "
        "multiply-accumulate per PE per cycle; util = ideal / cycles (the target is 75% on dense "
        "heads); bytes = memory responses per head, against the dense full-precision baseline "
        "3·n·head_dim·act_bits/8; recomputed = rows computed a second time at full precision; MAC "
        "util = PE MACs / (R·C·cycles); grid busy = cycles the grid took a step / cycles.",
        "",
        *_markdown_table(
            ["sentence", "layer", "setting", "heads", "cycles / head", "ideal / head", "cycles / ideal",
             "util", "bytes / head", "bytes vs dense", "rows recomputed", "MAC util", "grid busy"],
            ["---:", "---:", "---"] + ["---:"] * 10,
            [line(s) for s in summary]),
    ]
    return "\n".join(lines) + "\n"


SOFTMAX_PRESETS = ("tiny", "default", "minilm")
SOFTMAX_LENGTHS = (16, 64)        # and each preset's max_tokens
SOFTMAX_SENTENCES = (0, 41, 43, 44, 45)    # 12, 44, 98, 172 and 228 tokens of the evaluation corpus
SOFTMAX_LAYERS = (0, 1, 2, 3, 4, 5)


def bench_softmax(out_dir="reports", presets=SOFTMAX_PRESETS, lengths=SOFTMAX_LENGTHS,
                  sentences=SOFTMAX_SENTENCES, layers=SOFTMAX_LAYERS):
    """Error of the integer softmax against float softmax of the same integer Q, K, per preset,
    source (random or real MiniLM rows, :mod:`spattn.sim.softmax_error`) and keys per row."""
    from spattn.formats import AttentionFormats
    from spattn.sim.softmax_error import RANDOM_ROWS, RANDOM_STD, minilm_rows, random_rows

    started = time.monotonic()
    cfgs = [preset(name) for name in presets]
    real = minilm_rows(cfgs, sentences, layers)
    rows = []
    for cfg in cfgs:
        groups = [("random", n, random_rows(cfg, n)) for n in sorted({*lengths, cfg.max_tokens})
                  if n <= cfg.max_tokens]
        groups += [("minilm", n, real[(name, n)]) for name, n in sorted(real) if name == cfg.name]
        lsb = 2.0 ** -AttentionFormats.of(cfg).prob.frac
        for source, n, (abs_max, abs_sum, sum_err, argmax, softmax_max) in groups:
            rows.append({"preset": cfg.name, "prob_lsb": lsb, "source": source, "n": n, "rows": len(abs_max),
                         "max_abs": float(abs_max.max()), "mean_abs": float(abs_sum.sum()) / (len(abs_max) * n),
                         "max_sum_err": float(sum_err.abs().max()),
                         "argmax_differs": float(argmax.double().mean()),
                         "max_abs_softmax_only": float(softmax_max.max())})
    seconds = time.monotonic() - started
    table = format_softmax(rows, RANDOM_STD, RANDOM_ROWS, sentences, layers, seconds)
    _write_report(out_dir, "softmax_error", table,
                  {"random_std": RANDOM_STD, "random_rows": RANDOM_ROWS, "sentences": list(sentences),
                   "layers": list(layers), "seconds": round(seconds, 1), "rows": rows})
    return rows


def format_softmax(rows, std, random_rows, sentences, layers, seconds):
    lines = [
        "Integer softmax (scores_int, softmax_int) against float64 softmax(Q Kᵀ / sqrt(d)) of the same "
        "integer Q, K (float_probs): the score rounding, the exponent table, the reciprocal and the "
        f"final rounding together. random: Q, K entries normal with standard deviation {std:g}, "
        f"quantized to the preset's act format, at least {random_rows} rows per length (seed 0). "
        f"minilm: all-MiniLM-L6-v2 Q, K of evaluation sentences {', '.join(map(str, sentences))} at "
        f"layers {', '.join(map(str, layers))}, quantized, all heads (tiny: first 2 heads, 16 channels, "
        "64 tokens; default: MiniLM heads joined in pairs into 64 channels); n = keys per row. "
        "Errors are per probability, in prob LSBs and real units; row sum = |sum of a row's "
        "probabilities - 1|; argmax differs = rows whose most probable key (ties to the lower key) "
        "is not the float one's; softmax alone = max abs error against the exact softmax of the same "
        f"integer scores (without the score rounding). {seconds:.0f} s wall.",
        "",
        *_markdown_table(
            ["preset", "prob LSB", "source", "n", "rows", "max abs error (LSB)", "max abs error",
             "mean abs error (LSB)", "max row-sum error (LSB)", "argmax differs",
             "softmax alone: max abs error (LSB)"],
            ["---", "---:", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"],
            [[r["preset"], f"2^{round(math.log2(r['prob_lsb']))}", r["source"], str(r["n"]), str(r["rows"]),
              f"{r['max_abs'] / r['prob_lsb']:.1f}", f"{r['max_abs']:.2e}",
              f"{r['mean_abs'] / r['prob_lsb']:.2f}", f"{r['max_sum_err'] / r['prob_lsb']:.0f}",
              f"{100 * r['argmax_differs']:.2f}%", f"{r['max_abs_softmax_only'] / r['prob_lsb']:.1f}"]
             for r in rows]),
    ]
    return "\n".join(lines) + "\n"


ACCEL_TOKENS = (12, 40, 100, 256)
ACCEL_SETTINGS = ("dense", "combined")
#: The clock nextpnr is asked for when the accelerator is placed and routed (MHz).
ACCEL_PNR_TARGET_MHZ = 50


def pnr_accelerator(out_dir="reports", build_root="build", target_mhz=ACCEL_PNR_TARGET_MHZ):
    """Synthesis, place and route of the whole accelerator (``minilm`` preset) on the ULX3S-85F,
    out of context, nextpnr's router1 (about 30 minutes here): resources and Fmax, written to
    ``accelerator_pnr.md`` and ``.json``. Returns the figures (a dict)."""
    from spattn.gen.synth import place_and_route_ecp5, synthesize
    cfg = preset("minilm")
    spec = cfg.board_spec
    synth = synthesize("accelerator", cfg, "ecp5", Path(build_root) / "synth" / f"accelerator-{cfg.name}")
    placed = place_and_route_ecp5(synth, target_mhz)
    figures = {"preset": cfg.name, "synth_seconds": synth.seconds, **dataclasses.asdict(placed)}
    rows = [[name, f"{used:,}", f"{total:,}", f"{100 * used / total:.1f}%"] for name, used, total in
            (("LUT4", placed.luts, spec.luts), ("DSP (MULT18X18D)", placed.dsps, spec.dsps),
             ("block RAM (DP16KD)", placed.brams, spec.brams))]
    table = "\n".join([f"# Accelerator place and route: {cfg.name} on the ULX3S-85F ({placed.device})", "",
                        f"`spattn bench accelerator --pnr`: Yosys `synth_ecp5` ({synth.seconds:.0f} s), nextpnr-ecp5 "
                        f"out of context, router1, target {target_mhz} MHz ({placed.seconds / 60:.0f} min).", "",
                        *_markdown_table(["resource", "used", "of", "share"], ["---", "---:", "---:", "---:"], rows),
                        "", f"Flip-flops: {placed.registers:,}. Fmax: **{placed.fmax_mhz:.2f} MHz** "
                            f"(target {target_mhz} MHz)."]) + "\n"
    _write_report(out_dir, "accelerator_pnr", table, figures)
    return figures


def bench_accelerator(out_dir="reports", simulator="verilator", tokens=ACCEL_TOKENS, settings=ACCEL_SETTINGS,
                      clock_mhz=None, reuse=None, pnr=False):
    """Whole MiniLM sentences through the accelerator top (``minilm`` preset, no memory stalls), per
    layer and in total: cycles, bytes read against the dense full-precision baseline, tokens and
    heads alive, rows recomputed; with ``clock_mhz``, sentences per second and effective GOP/s (the
    dense attention's operations over the accelerator's time). Every sentence is checked bit for bit
    against the golden model. ``reuse``: the JSON of an earlier run, whose measured layers are
    reported again (at another clock) instead of simulating. ``pnr``: place and route first
    (:func:`pnr_accelerator`); without ``clock_mhz`` the Fmax of ``accelerator_pnr.json`` in
    ``out_dir`` is the clock, when there is one. Returns the rows, one per sentence, setting and layer."""
    from spattn.sim.golden.accelerator import SETTING_FAMILIES as SETTINGS
    cfg = preset("minilm")
    if pnr:
        pnr_accelerator(out_dir)
    pnr_report = Path(out_dir) / "accelerator_pnr.json"
    if clock_mhz is None and pnr_report.exists():
        clock_mhz = round(json.loads(pnr_report.read_text())["fmax_mhz"], 2)
    if reuse:
        earlier = json.loads(Path(reuse).read_text())
        rows, seconds, simulator = earlier["layers"], earlier["seconds"], earlier["simulator"]
        settings = list(earlier["settings"])
    else:
        started = time.monotonic()
        rows = _run_sweep("accelerator", cfg, "spattn.sim.benches.accelerator_bench", simulator,
                          {"SPATTN_ACCEL_TOKENS": ",".join(map(str, tokens)),
                           "SPATTN_ACCEL_SETTINGS": ",".join(settings), "SPATTN_ACCEL_STALL": "0"},
                          testcase="sentences")
        seconds = time.monotonic() - started
    for row in rows:
        n = row["tokens"]
        row["dense_bytes"] = 3 * n * cfg.heads * cfg.head_dim * cfg.act_bits // 8
        row["dense_ops"] = 2 * 2 * n * n * cfg.head_dim * cfg.heads       # Q·Kᵀ and P·V multiply-adds
    totals = []
    for (tokens_, setting), group in _group(rows, lambda r: (r["tokens"], r["setting"])).items():
        total = {"tokens": tokens_, "setting": setting, "layers": len(group),
                 **{name: sum(r[name] for r in group) for name in
                    ("CYCLES", "BYTES_READ", "BYTES_WRITTEN", "ROWS_RECOMPUTED", "dense_bytes", "dense_ops")}}
        if clock_mhz:
            total["sentences_per_s"] = clock_mhz * 1e6 / total["CYCLES"]
            total["effective_gops"] = total["dense_ops"] * clock_mhz * 1e6 / total["CYCLES"] / 1e9
        totals.append(total)
    table = format_accelerator(rows, totals, cfg, simulator, clock_mhz, seconds)
    _write_report(out_dir, "accelerator", table, {"config": cfg.name, "simulator": simulator,
                                                 "clock_mhz": clock_mhz, "seconds": round(seconds, 1),
                                                 "settings": {name: SETTINGS[name] for name in settings},
                                                 "totals": totals, "layers": rows})
    return rows


def format_accelerator(rows, totals, cfg, simulator, clock_mhz, seconds):
    lines = [f"# Accelerator: whole MiniLM sentences ({cfg.name} preset)", "",
             f"Measured by `spattn bench accelerator` on {simulator} in {seconds / 60:.1f} min: every sentence "
             "through all 6 layers on the generated Verilog (memory: cocotbext-axi AxiRam, no stalls), "
             "embedding and counters bit-exact against the golden model. Bytes read: plane rows (and "
             "mask rows) on the AXI bus; dense: Q, K, V of every token and head at 12 bits.", ""]
    header = ["tokens", "setting", "cycles", "read KB", "dense KB", "dense / read", "rows recomputed"]
    align = ["---:", "---", "---:", "---:", "---:", "---:", "---:"]
    if clock_mhz:
        header += ["sentences/s", "effective GOP/s"]
        align += ["---:", "---:"]
    body = []
    for t in totals:
        row = [str(t["tokens"]), t["setting"], f"{t['CYCLES']:,}", f"{t['BYTES_READ'] / 1024:.1f}",
               f"{t['dense_bytes'] / 1024:.1f}", f"{t['dense_bytes'] / t['BYTES_READ']:.2f}x",
               str(t["ROWS_RECOMPUTED"])]
        if clock_mhz:
            row += [f"{t['sentences_per_s']:.1f}", f"{t['effective_gops']:.2f}"]
        body.append(row)
    lines += _markdown_table(header, align, body)
    if clock_mhz:
        lines += ["", f"At {clock_mhz} MHz (the routed Fmax in `accelerator_pnr.md`, unless given). Effective GOP/s: "
                  "the dense attention's 4·n²·d operations per head and layer, over the accelerator's time."]
    lines += ["", "## Per layer", ""]
    body = [[str(r["tokens"]), r["setting"], str(r["layer"]), str(r["LAYER_TOKENS"]), str(r["LAYER_HEADS"]),
             f"{r['CYCLES']:,}", f"{r['BYTES_READ'] / 1024:.1f}", f"{r['dense_bytes'] / 1024:.1f}",
             str(r["ROWS_RECOMPUTED"])] for r in rows]
    lines += _markdown_table(["tokens", "setting", "layer", "tokens alive", "heads alive", "cycles", "read KB",
                              "dense KB", "rows recomputed"],
                             ["---:", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:"], body)
    return "\n".join(lines) + "\n"


def fastest_link(cfg):
    """``cfg`` with its UART at the fewest cycles per bit the receiver takes: the link's logic is the
    same, its simulation several times shorter than at the preset's own rate."""
    return dataclasses.replace(cfg, link_baud=round(cfg.clock_mhz * 1e6 / MIN_CLOCKS_PER_BIT))


SYSTEM_RUN_PRESET = "minilm"


def bench_system(out_dir="reports", simulator="verilator"):
    """``spattn run`` on the simulated board: the ``minilm`` system's Verilog behind its UART pins
    (:mod:`spattn.sim.benches.system_bench`, ``spattn_run_command``), the link at
    :func:`fastest_link`. Writes the command's output (its PASS is asserted by the bench) and the
    wall time. The accelerator's cycles there are mostly the link's: it waits on the UART for every
    plane row it reads (``spattn bench accelerator`` measures it with memory that answers at once)."""
    cfg = fastest_link(preset(SYSTEM_RUN_PRESET))
    started = time.monotonic()
    results = run_bench("system", cfg, "spattn.sim.benches.system_bench", simulator=simulator,
                        testcase=["spattn_run_command"])
    seconds = time.monotonic() - started
    output = (Path(results).parent / "spattn_run.txt").read_text()
    table = "\n".join([
        f"# `spattn run` on the simulated board ({cfg.name} preset)", "",
        f"The board system's Verilog on {simulator}, its UART pins bridged to a pseudo-terminal that "
        f"`spattn run` opens as it would the board's serial port; the link at {cfg.link_clocks_per_bit} "
        f"cycles per bit. {seconds:.0f} s wall time.", "", "```", output.rstrip(), "```"]) + "\n"
    _write_report(out_dir, "system_run", table, {"config": cfg.name, "simulator": simulator,
                                                "clocks_per_bit": cfg.link_clocks_per_bit,
                                                "seconds": round(seconds, 1), "output": output})
    return output


def _indices(text):
    return [int(part) for part in text.split(",") if part]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="spattn bench", description=__doc__)
    parser.add_argument("block", choices=["topk", "pe_array", "attention", "softmax", "accelerator", "system"])
    parser.add_argument("-o", "--out", default="reports", help="report directory (default: reports)")
    parser.add_argument("--simulator", default="verilator", choices=["verilator", "icarus"])
    parser.add_argument("--trials", type=int, default=5, help="random score sets per point")
    parser.add_argument("--no-speed-check", action="store_true",
                        help="topk: do not hold the engine to the figures recorded in reports/topk_cycles.json")
    parser.add_argument("--no-pnr", action="store_true", help="pe_array: skip synthesis and nextpnr")
    parser.add_argument("--sentences", type=_indices, default=list(ATTN_SENTENCES),
                        help="attention: evaluation sentences (default: %(default)s)")
    parser.add_argument("--layers", type=_indices, default=list(ATTN_LAYERS),
                        help="attention: MiniLM layers (default: %(default)s)")
    parser.add_argument("--heads", type=_indices, default=list(ATTN_HEADS),
                        help="attention: heads, empty for all (default: %(default)s)")
    parser.add_argument("--latency", type=int, default=4, help="attention: memory latency in cycles")
    parser.add_argument("--tokens", type=_indices, default=list(ACCEL_TOKENS),
                        help="accelerator: sentence lengths (default: %(default)s)")
    parser.add_argument("--clock-mhz", type=float,
                        help="accelerator: clock of the throughput figures (default: the Fmax in "
                             "accelerator_pnr.json of the report directory)")
    parser.add_argument("--pnr", action="store_true",
                        help="accelerator: place and route it first (about 30 minutes); topk: place and "
                             "route the default preset's engine too")
    parser.add_argument("--reuse", help="accelerator: report the layers of this earlier JSON instead of "
                                        "simulating")
    args = parser.parse_args(argv)
    if args.block == "softmax":
        bench_softmax(args.out)
    elif args.block == "system":
        bench_system(args.out, args.simulator)
    elif args.block == "accelerator":
        bench_accelerator(args.out, args.simulator, args.tokens, clock_mhz=args.clock_mhz, reuse=args.reuse,
                          pnr=args.pnr)
    elif args.block == "attention":
        bench_attention(args.out, args.simulator, args.sentences, args.layers, args.heads,
                        latency=args.latency)
    elif args.block == "pe_array":
        bench_pe_array(args.out, args.simulator, pnr=not args.no_pnr)
    else:
        recorded = None if args.no_speed_check or not TOPK_RECORDED.exists() else json.loads(TOPK_RECORDED.read_text())
        bench_topk(args.out, args.simulator, trials=args.trials, limits=recorded)
        if args.pnr:
            pnr_topk(args.out)
