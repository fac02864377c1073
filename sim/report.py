"""The report of ``spattn eval``: Markdown tables, a JSON dump and a Pareto plot (PNG)."""

import dataclasses
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

__all__ = ["SPATTEN_REDUCTION", "METRICS", "best_setting", "pareto_front", "markdown", "plot", "write_report"]

#: SpAtten's reported DRAM-access reduction with no accuracy loss (its own benchmarks).
SPATTEN_REDUCTION = 10.0

#: The fidelity metrics plotted against traffic: (field of ``Fidelity``, axis label).
METRICS = (("mean_cos", "mean cosine vs dense float"), ("min_cos", "minimum cosine vs dense float"),
           ("accuracy", "retrieval accuracy (hard negatives)"), ("mrr", "retrieval MRR"),
           ("spearman", "Spearman of pairwise similarities"))


def best_setting(summaries, target):
    """The summary with the largest traffic reduction whose mean cosine is at least ``target`` and
    whose retrieval accuracy is at least the dense float model's; None if there is none."""
    fitting = [s for s in summaries if s.fidelity.mean_cos >= target and s.retrieval_kept]
    return max(fitting, key=lambda s: s.cost.traffic) if fitting else None


def pareto_front(points):
    """Indices of the ``(x, y)`` points no other point matches or beats in both, by ascending x."""
    front = [i for i, (x, y) in enumerate(points)
             if not any(x2 >= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def _cell(text):
    """Text for a Markdown table cell: a ``|`` would end the cell."""
    return text.replace("|", "\\|")


def _per_layer(values, fmt):
    return "/".join(fmt(v) for v in values)


def _percent(v):
    return f"{100 * v:.0f}"


def _fidelity_cells(s):
    f = s.fidelity
    return (f"{s.cost.traffic:.2f}x | {f.mean_cos:.4f} | {f.min_cos:.4f} | {f.accuracy:.2f} | {f.mrr:.3f} "
            f"| {f.spearman:.4f}")


def _cost_cells(s):
    c = s.cost
    return f"{c.host_macs:.2f}x | {c.attention_macs:.2f}x | {c.softmax:.2f}x | {c.total_macs:.2f}x"


def _effect_cells(s):
    e = s.effect
    idle = ", ".join(e.did_nothing) if e.did_nothing else ""
    return (f"{_per_layer(e.tokens_alive, _percent)} | {_per_layer(e.heads_alive, lambda v: f'{v:.1f}')} "
            f"| {_per_layer(e.recomputed, _percent)} | {_percent(e.values_used)}% "
            f"| {'**nothing at all**' if e.nothing_at_all else idle}")


def _set_line(name, eval_set, lengths):
    passages = lengths[len(eval_set.sentences):len(eval_set.sentences) + len(eval_set.passages)]
    return (f"- `{name}`: {len(eval_set.sentences)} sentences, {len(eval_set.passages)} passages "
            f"({min(passages)} to {max(passages)} tokens), {len(eval_set.retrieval)} retrieval groups "
            f"(query, paraphrase, {len(eval_set.retrieval[0].negatives)} hard negatives): "
            f"{len(lengths)} texts, {sum(lengths)} tokens.")


def markdown(sweep, calibrated, cfg, sets, lengths, refs, target, margin, run):
    """The report text. ``sweep``: test-set summaries of the hand-picked settings; ``calibrated``:
    ``(target, calibration summary, test summary)`` per searched target; ``sets``/``lengths``/
    ``refs``: per set name, the set, its token counts and its dense float :class:`Reference`."""
    test = refs["test"]
    fid_head = "traffic reduction | mean cos | min cos | retrieval acc | MRR | Spearman"
    cost_head = "host MACs | attention MACs | softmax | total MACs"
    effect_head = ("tokens alive per layer (%) | heads alive per layer | rows recomputed per layer (%) "
                   "| V rows used | switched on but did nothing")
    lines = [
        f"# Sparse attention on all-MiniLM-L6-v2: preset `{cfg.name}`",
        "",
        "Texts written for this repository (`sim/golden/data/`); nothing is downloaded:",
        _set_line("calibration", sets["calibration"], lengths["calibration"]),
        _set_line("test", sets["test"], lengths["test"]),
        "",
        f"Integer attention path (Q/K/V {cfg.act_bits}-bit, {cfg.act_msb_bits} MSB + {cfg.act_lsb_bits} "
        f"LSB, {cfg.act_frac} fraction bits unless the setting says otherwise) against the dense float "
        "model. Cosine: of each text's embedding with the dense float one. Retrieval: each query ranks "
        "every candidate of the set (paraphrases and hard negatives of all groups); accuracy is the share "
        "of queries whose paraphrase ranks first, MRR the mean reciprocal rank of the paraphrase. "
        "Spearman: rank correlation of the cosines of all pairs of texts with the dense float model's. "
        "Reductions are dense work over the setting's work: Q/K/V bits fetched from memory; host MACs "
        "(Q/K/V and output projections and FFN of the alive tokens and heads); attention MACs (Q·Kᵀ, "
        "again for recomputed rows, and P·V over the V rows used); softmax exponentials. Per-layer "
        "columns run from L0 to L5. *Switched on but did nothing* names the techniques a setting "
        "switches on that changed nothing on the test set.",
        "",
        f"Dense float model on the test set: retrieval accuracy {test.accuracy:.2f}, MRR {test.mrr:.3f} "
        f"(calibration set: {refs['calibration'].accuracy:.2f}, {refs['calibration'].mrr:.3f}). "
        "Retrieval is *kept* when a setting's accuracy is at least this.",
        "",
        "## Calibrated operating points",
        "",
        f"Chosen on the calibration set by a coordinate search ({run['search evaluations']} evaluations, "
        f"{run['search seconds']:.0f} s): for each mean-cosine target, from the most faithful down and "
        "starting from the previous target's point, one pass over per-layer precision (full, recompute "
        "below 0.2 or 0.05, MSB planes only), the MSB width, per-layer token and head keep ratios "
        "(L4 to L0), value keep and the DynaTran threshold; each steps while the calibration set keeps "
        f"mean cosine >= target + {margin} and its retrieval accuracy, and the step saves traffic (or, at "
        "equal traffic, host and attention work). Figures on the **test set** only:",
        "",
        f"| calibrated for | setting | calibration: traffic, mean cos | {fid_head} | {cost_head} |",
        "|---|---|---|" + "---:|" * 10,
    ]
    for goal, cal, point in calibrated:
        lines.append(f"| {goal} | {_cell(point.setting.label.split(': ', 1)[1])} "
                     f"| {cal.cost.traffic:.2f}x, {cal.fidelity.mean_cos:.4f} | {_fidelity_cells(point)} "
                     f"| {_cost_cells(point)} |")
    lines += ["", f"| calibrated for | {effect_head} |", "|---|---|---|---|---:|---|"]
    lines += [f"| {goal} | {_effect_cells(point)} |" for goal, _, point in calibrated]
    best = best_setting([point for _, _, point in calibrated], target)
    lines.append("")
    if best is None:
        lines.append(f"No calibrated point keeps mean cosine >= {target} and retrieval on the test set.")
    else:
        f = best.fidelity
        lines.append(
            f"**Largest Q/K/V traffic reduction on the test set with mean cosine >= {target} and retrieval "
            f"kept: {best.cost.traffic:.2f}x** ({_cell(best.setting.label)}; mean cosine {f.mean_cos:.4f}, "
            f"minimum {f.min_cos:.4f}, retrieval accuracy {f.accuracy:.2f}, MRR {f.mrr:.3f}, Spearman "
            f"{f.spearman:.4f}; host MACs {best.cost.host_macs:.2f}x, attention MACs "
            f"{best.cost.attention_macs:.2f}x, softmax {best.cost.softmax:.2f}x fewer). SpAtten reports "
            f"{SPATTEN_REDUCTION:.0f}x DRAM-access reduction with no accuracy loss on its benchmarks: this "
            f"is {best.cost.traffic / SPATTEN_REDUCTION:.0%} of that.")
    lines += ["", "## Hand-picked settings", "",
              "Fixed before any evaluation, one technique family at a time, on the test set:", "",
              f"| setting | family | {fid_head} | {cost_head} |", "|---|---|" + "---:|" * 10]
    lines += [f"| {_cell(s.setting.label)} | {s.setting.family} | {_fidelity_cells(s)} | {_cost_cells(s)} |"
              for s in sweep]
    lines += ["", f"| setting | {effect_head} |", "|---|---|---|---|---:|---|"]
    lines += [f"| {_cell(s.setting.label)} | {_effect_cells(s)} |" for s in sweep]
    smoke = " (`--quick`: a smoke run on a few texts)" if run["quick"] else ""
    lines += ["", f"Run time {run['seconds']:.0f} s{smoke}.", ""]
    return "\n".join(lines)


def plot(sweep, calibrated, target, refs, path):
    """Each fidelity metric against traffic reduction: hand-picked settings by family, calibrated
    points as stars, the Pareto front of all of them as a line through its points."""
    points = sweep + [point for _, _, point in calibrated]
    stars = [point for _, _, point in calibrated]
    families = list(dict.fromkeys(s.setting.family for s in sweep))
    fig, grid = plt.subplots(2, 3, figsize=(15, 9))
    axes = grid.flatten()
    for ax, (field, label) in zip(axes, METRICS):
        for i, family in enumerate(families):
            mine = [s for s in sweep if s.setting.family == family]
            ax.plot([s.cost.traffic for s in mine], [getattr(s.fidelity, field) for s in mine],
                    "osD^v<>pPXh"[i % 11], alpha=0.7, label=family)
        ax.plot([s.cost.traffic for s in stars], [getattr(s.fidelity, field) for s in stars], "*",
                color="red", markersize=13, label="calibrated (searched on the calibration set)")
        xy = [(s.cost.traffic, getattr(s.fidelity, field)) for s in points]
        front = [xy[i] for i in pareto_front(xy)]
        ax.plot([x for x, _ in front], [y for _, y in front], "o-", color="black", markerfacecolor="none",
                markersize=10, linewidth=1, label="Pareto front")
        if field == "mean_cos":
            ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"mean cosine {target}")
            ax.set_ylim(max(min(y for _, y in xy) - 0.005, 0.9), 1.001)
        if field in ("accuracy", "mrr"):
            ax.axhline(getattr(refs["test"], field), color="grey", linestyle=":", linewidth=1,
                       label="dense float (retrieval)")
        ax.set_xlabel("Q/K/V traffic reduction vs dense (x)")
        ax.set_title(label, fontsize=10)
        ax.grid(True, alpha=0.3)
    legend = {}
    for ax in axes[:len(METRICS)]:
        legend |= {lab: h for h, lab in zip(*ax.get_legend_handles_labels(), strict=True)}
    axes[-1].axis("off")
    axes[-1].legend(legend.values(), legend.keys(), loc="center", fontsize=9)
    fig.suptitle("all-MiniLM-L6-v2, test set: fidelity against Q/K/V traffic")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out, sweep, calibrated, cfg, sets, lengths, refs, target, margin, run):
    """Write ``report.md``, ``report.json`` and ``pareto.png`` into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = out / "report.md", out / "report.json", out / "pareto.png"
    md.write_text(markdown(sweep, calibrated, cfg, sets, lengths, refs, target, margin, run))
    js.write_text(json.dumps({
        "preset": cfg.name, "target": target, "calibration_margin": margin, "run": run,
        "dense_float": {name: {"accuracy": r.accuracy, "mrr": r.mrr} for name, r in refs.items()},
        "calibrated": [{"target": goal, "calibration": dataclasses.asdict(cal),
                        "test": dataclasses.asdict(point)} for goal, cal, point in calibrated],
        "sweep": [dataclasses.asdict(s) for s in sweep]}, indent=1) + "\n")
    plot(sweep, calibrated, target, refs, png)
    return md, js, png
