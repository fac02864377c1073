"""How far the integer path's cascade-pruning decisions and embeddings are from the float path's.

For the token- and head-pruning settings of :func:`spattn.sim.eval.sweep` (and one setting with
both), every evaluation sentence is run through :func:`~spattn.sim.golden.sparse.run_sentence` in
both arithmetics: ``"int"`` (bit-exact integer attention, the pruning controller's integer
importance accumulators, fixed-point keep ratios) and ``"float"`` (float attention, float
importances, ``keep_count``). Per setting:

* tokens / heads: the fraction of (sentence, layer) pairs, layers 1-5 (layer 0 sees everything in
  both), whose alive set differs between the two paths, and the mean Jaccard similarity of the two
  alive sets over the same pairs;
* the cosine between the int-path and the float-path sentence embedding (mean and minimum), and each
  path's mean cosine against the dense float model (:func:`~spattn.sim.golden.bert.dense_embedding`);
* the count rule alone: the float path is rerun with the controller's count
  ``kept_count(value_keep_int(r), n)`` in place of ``keep_count(r, n)`` (float importances
  unchanged); reported are the (sentence, layer) decisions whose two counts differ and the pairs whose
  alive sets then differ from the float path's. Independently, every ratio of the settings is
  checked against every count ``n = 1 .. max_tokens``.

Writes ``pruning_agreement.md`` and ``pruning_agreement.json`` into the output directory.

    python -m spattn.sim.pruning_agreement [--quick] [-o DIR]
"""

import argparse
import json
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch

from spattn.config import preset
from spattn.formats import AttentionFormats, kept_count, value_keep_int

from .eval import Setting, sweep
from .golden import sparse
from .golden.bert import dense_embedding
from .golden.corpus import eval_sentences
from .golden.minilm import load_minilm
from .golden.pruning import keep_count, schedule_at, survivors

__all__ = ["FAMILIES", "COMBINED", "settings", "count_rule_differences", "pruning_agreement",
           "format_table", "main"]

#: The sweep families whose settings are measured.
FAMILIES = ("token pruning", "head pruning")

#: Both pruning kinds at once.
COMBINED = Setting("token keep 0.8/layer + head keep 0.85/layer", "combined",
                   (("token_keep", (0.8,)), ("head_keep", (0.85,))))

#: Layers compared (layer 0 has every token and head alive in both paths).
FIRST_LAYER = 1


def settings():
    """The token- and head-pruning settings of the sweep and :data:`COMBINED`."""
    return [s for s in sweep() if s.family in FAMILIES] + [COMBINED]


def count_rule_differences(ratios, max_n):
    """``(ratio, n, keep_count, kept_count)`` for every ratio and ``n = 1 .. max_n`` where the float
    rule ``keep_count(r, n)`` and the controller's ``kept_count(value_keep_int(r), n)`` disagree."""
    return [(r, n, keep_count(r, n), kept_count(value_keep_int(r), n))
            for r in sorted(set(ratios)) for n in range(1, max_n + 1)
            if keep_count(r, n) != kept_count(value_keep_int(r), n)]


@contextmanager
def _recorded(calls, integer_count=False):
    """Within the block, every cascade-pruning decision of ``run_sentence`` is appended to ``calls``
    (in call order: per layer, tokens then heads) as ``(importance, ratio, survivors)``. With
    ``integer_count`` the selection uses the controller's count ``kept_count(value_keep_int(r), n)``
    on whatever importances the run has (float ones in a float run)."""
    def recording(importance, ratio, integer, forced=None):
        chosen = survivors(importance, ratio, integer or integer_count, forced)
        calls.append((importance.clone(), ratio, chosen))
        return chosen

    with mock.patch.object(sparse, "survivors", recording):
        yield


def _run(model, cfg, ids, arith, integer_count=False):
    """``run_sentence`` and its pruning decisions (see :func:`_recorded`)."""
    calls = []
    with _recorded(calls, integer_count):
        result = sparse.run_sentence(model, cfg, ids, arith)
    if len(calls) != 2 * cfg.layers:
        raise RuntimeError(f"expected {2 * cfg.layers} pruning decisions, got {len(calls)}")
    return result, calls


def _first_divergence(int_calls, float_calls, fmt):
    """The first decision the two paths take differently (all earlier ones agree, so both rank the
    same candidates), or None: where, and the margins. The last layer's decisions are left out:
    nothing uses them (the embedding pools the tokens alive in the last layer). ``float_margin``:
    by how much the float path's lowest kept-only-by-float entry beats its highest kept-only-by-int
    entry, in LSBs of the integer accumulator (prob LSBs for tokens, act LSBs for heads) and
    relative to the former;
    ``int_error``: the largest |integer - float| importance of those entries, in the same LSBs and
    relative to the float importance."""
    used = len(int_calls) - 2  # the last layer's token and head decisions
    for c, ((imp_i, _, kept_i), (imp_f, _, kept_f)) in enumerate(zip(int_calls[:used], float_calls[:used],
                                                                     strict=True)):
        if torch.equal(kept_i, kept_f):
            continue
        kind = ("tokens", "heads")[c % 2]
        scale = 1 << (fmt.prob.frac if kind == "tokens" else fmt.act.frac)
        int_only = sorted(set(kept_i.tolist()) - set(kept_f.tolist()))
        float_only = sorted(set(kept_f.tolist()) - set(kept_i.tolist()))
        f = imp_f.double() * scale  # float importances in integer-accumulator LSBs
        i = imp_i.double()
        swapped = int_only + float_only
        margin = float(f[float_only].min() - f[int_only].max())
        error = (i[swapped] - f[swapped]).abs()
        return {"layer": c // 2, "kind": kind, "candidates": len(imp_f), "swapped": len(int_only),
                "float_margin_lsb": round(margin, 2),
                "float_margin_rel": margin / float(f[float_only].min()),
                "int_error_lsb": round(float(error.max()), 2),
                "int_error_rel": float((error / f[swapped]).max())}
    return None


def _jaccard(a, b):
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def _compare_sets(first, second, attr):
    """(differing pairs, Jaccard sum, pairs) of ``attr`` over layers >= FIRST_LAYER of two results."""
    differ, jaccard, pairs = 0, 0.0, 0
    for a, b in zip(first.layers[FIRST_LAYER:], second.layers[FIRST_LAYER:], strict=True):
        sa, sb = getattr(a, attr), getattr(b, attr)
        differ += sa != sb
        jaccard += _jaccard(sa, sb)
        pairs += 1
    return differ, jaccard, pairs


def _measure(setting, base, model, encoded, reference):
    cfg = setting.config(base)
    tokens, heads = [0, 0.0, 0], [0, 0.0, 0]
    sentences_differ = 0
    per_layer = [[0, 0] for _ in range(cfg.layers)]  # (token sets differ, head sets differ)
    cos_int_float, cos_int_dense, cos_float_dense = [], [], []
    count_decisions = count_differ = count_sets_differ = 0
    count_cases, divergences = [], []
    fmt = AttentionFormats.of(cfg)
    for index, (ids, ref) in enumerate(zip(encoded, reference, strict=True)):
        res_int, int_calls = _run(model, cfg, ids, "int")
        res_float, float_calls = _run(model, cfg, ids, "float")
        first = _first_divergence(int_calls, float_calls, fmt)
        if first is not None:
            divergences.append({"sentence": index, "tokens_in_sentence": len(ids), **first})
        for acc, attr in ((tokens, "alive_tokens"), (heads, "alive_heads")):
            for i, value in enumerate(_compare_sets(res_int, res_float, attr)):
                acc[i] += value
        any_differ = False
        for layer, (a, b) in enumerate(zip(res_int.layers, res_float.layers, strict=True)):
            per_layer[layer][0] += a.alive_tokens != b.alive_tokens
            per_layer[layer][1] += a.alive_heads != b.alive_heads
            any_differ |= a.alive_tokens != b.alive_tokens or a.alive_heads != b.alive_heads
        sentences_differ += any_differ
        cos_int_float.append(_cos(res_int.embedding, res_float.embedding))
        cos_int_dense.append(_cos(res_int.embedding, ref))
        cos_float_dense.append(_cos(res_float.embedding, ref))

        res_count, count_calls = _run(model, cfg, ids, "float", integer_count=True)
        for c, (importance, ratio, _) in enumerate(count_calls):
            n = len(importance)
            float_count, int_count = keep_count(ratio, n), kept_count(value_keep_int(ratio), n)
            count_decisions += 1
            if float_count != int_count:
                count_differ += 1
                count_cases.append({"sentence": index, "layer": c // 2, "kind": ("tokens", "heads")[c % 2],
                                    "ratio": ratio, "n": n, "keep_count": float_count,
                                    "kept_count": int_count})
        count_sets_differ += sum(a.alive_tokens != b.alive_tokens or a.alive_heads != b.alive_heads
                                 for a, b in zip(res_count.layers, res_float.layers, strict=True))
    n_sent = len(encoded)
    return {
        "setting": setting.label, "family": setting.family,
        "token_keep": list(cfg.token_keep), "head_keep": list(cfg.head_keep),
        "sentences": n_sent, "pairs": tokens[2],
        "tokens_differ": tokens[0] / tokens[2], "tokens_jaccard": tokens[1] / tokens[2],
        "heads_differ": heads[0] / heads[2], "heads_jaccard": heads[1] / heads[2],
        "sentences_differ": sentences_differ,
        "per_layer_differ": [{"layer": layer, "tokens": t / n_sent, "heads": h / n_sent}
                             for layer, (t, h) in enumerate(per_layer)],
        "cos_int_float_mean": sum(cos_int_float) / n_sent, "cos_int_float_min": min(cos_int_float),
        "cos_int_float_min_sentence": cos_int_float.index(min(cos_int_float)),
        "cos_int_dense_mean": sum(cos_int_dense) / n_sent,
        "cos_float_dense_mean": sum(cos_float_dense) / n_sent,
        "first_divergences": divergences,
        "count_rule": {"decisions": count_decisions, "counts_differ": count_differ,
                       "pairs_differ": count_sets_differ, "cases": count_cases},
    }


def pruning_agreement(out_dir="reports", sentences=None, quick=False, chosen=None, command=None):
    """Measure int-vs-float pruning agreement; return one dict per setting.

    ``sentences``: texts (default: the evaluation corpus, its first 4 with ``quick``); ``chosen``:
    the settings (default :func:`settings`); ``out_dir``: where the Markdown and JSON reports go
    (``None``: write nothing); ``command``: the command line recorded in the report.
    """
    started = time.time()
    torch.set_num_threads(1)  # the golden model's small kernels: far faster single-threaded
    model, base = load_minilm(), preset("minilm")
    if sentences is None:
        sentences = eval_sentences()[:4] if quick else eval_sentences()
    chosen = settings() if chosen is None else list(chosen)
    with torch.no_grad():
        encoded = [model.encode(text) for text in sentences]
        reference = [dense_embedding(model, ids) for ids in encoded]
        rows = [_measure(s, base, model, encoded, reference) for s in chosen]
    ratios = [r for s in chosen for field in ("token_keep", "head_keep")
              for r in (schedule_at(getattr(s.config(base), field), layer) for layer in range(base.layers))]
    exhaustive = count_rule_differences(ratios, base.max_tokens)
    wall = time.time() - started
    if out_dir is not None:
        _write(Path(out_dir), rows, exhaustive, sorted(set(ratios)), base.max_tokens,
               [len(ids) for ids in encoded], wall, command or "python -m spattn.sim.pruning_agreement")
    return rows


def format_table(rows):
    """The Markdown table of :func:`pruning_agreement`'s rows."""
    lines = ["| setting | token sets differ | token Jaccard | head sets differ | head Jaccard "
             "| sentences with a difference | cos int~float mean | cos int~float min | cos int~dense "
             "| cos float~dense | count rule: counts differ / decisions |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['tokens_differ']:.1%} | {r['tokens_jaccard']:.4f} "
            f"| {r['heads_differ']:.1%} | {r['heads_jaccard']:.4f} "
            f"| {r['sentences_differ']}/{r['sentences']} "
            f"| {r['cos_int_float_mean']:.6f} | {r['cos_int_float_min']:.6f} | {r['cos_int_dense_mean']:.5f} "
            f"| {r['cos_float_dense_mean']:.5f} "
            f"| {r['count_rule']['counts_differ']}/{r['count_rule']['decisions']} |")
    return "\n".join(lines)


def _write(out, rows, exhaustive, ratios, max_tokens, lengths, wall, command):
    out.mkdir(parents=True, exist_ok=True)
    differ = [r for r in rows if r["tokens_differ"] or r["heads_differ"]]
    count_cases = sum(r["count_rule"]["counts_differ"] for r in rows)
    count_sets = sum(r["count_rule"]["pairs_differ"] for r in rows)
    decisions = sum(r["count_rule"]["decisions"] for r in rows)
    cause = ("So the differences between the paths come from the importances (integer attention's "
             "rounded probabilities and outputs, and the drift they cause in later layers), not from "
             "the count arithmetic." if not count_cases and not exhaustive else
             "Some differences can come from the count arithmetic (see the cases in the JSON).")
    firsts = [d for r in rows for d in r["first_divergences"]]
    if firsts:
        diverge_text = (
            f"Where the paths first part ({len(firsts)} sentence-setting runs, in sentences "
            f"{', '.join(str(i) for i in sorted({d['sentence'] for d in firsts}))} of the corpus, "
            f"{', '.join(str(n) for n in sorted({d['tokens_in_sentence'] for d in firsts}))} tokens), "
            "the entries the two paths swap were near-ties in the float ranking, "
            f"{min(d['float_margin_rel'] for d in firsts):.3%} to "
            f"{max(d['float_margin_rel'] for d in firsts):.2%} "
            "apart, while the integer importances of those entries were "
            f"{min(d['int_error_rel'] for d in firsts):.2%} to {max(d['int_error_rel'] for d in firsts):.2%} "
            "off the float ones (Q/K/V quantized to the act format, integer scores and softmax "
            "rounded to prob LSBs; JSON: first_divergences). ")
    else:
        diverge_text = "The two paths took every pruning decision alike. "
    worst = min(rows, key=lambda r: r["cos_int_float_min"])
    worst_text = (f"The lowest int~float cosine, {worst['cos_int_float_min']:.4f}, is sentence "
                  f"{worst['cos_int_float_min_sentence']} ({lengths[worst['cos_int_float_min_sentence']]} "
                  f"tokens) at {worst['setting']}. ")
    exhaustive_text = ("none" if not exhaustive else ", ".join(
        f"r={r} n={n} ({a} vs {b})" for r, n, a, b in exhaustive))
    text = (
        "# Cascade pruning: integer path against float path\n\n"
        f"all-MiniLM-L6-v2, `minilm` preset, {len(lengths)} evaluation sentences ({min(lengths)} to "
        f"{max(lengths)} tokens), {len(rows)} settings: the token- and head-pruning settings of the "
        "eval sweep and one with both. Each sentence runs through `run_sentence` with `arith=\"int\"` "
        "(bit-exact integer attention, integer importance accumulators in prob / act LSBs, "
        "fixed-point keep ratios `value_keep_int` and `kept_count`) and `arith=\"float\"` (float "
        "attention and importances, `keep_count`). Set columns compare the alive-token and "
        "alive-head sets of the two paths over the (sentence, layer) pairs of layers 1-5 (layer 0 "
        "has everything alive in both); Jaccard = |int ∩ float| / |int ∪ float|, averaged over the "
        "same pairs; a sentence with a difference has some layer whose sets differ (the last layer's "
        "pruning decisions are never used: the embedding pools the tokens alive in the last layer). "
        "Cosines are between sentence embeddings (mean over sentences unless marked min); dense = the dense "
        "float model. Count rule: the float path rerun with the controller's count "
        "`kept_count(value_keep_int(r), n)` instead of `keep_count(r, n)` (same float importances); "
        f"{count_cases} of {decisions} pruning decisions got a different count and {count_sets} "
        "(sentence, layer) alive sets changed; over every ratio of these settings "
        f"({', '.join(str(r) for r in ratios)}) and every n = 1..{max_tokens} the two rules differ "
        f"for: {exhaustive_text}. {cause} {diverge_text}{worst_text}"
        f"{len(differ)} of {len(rows)} settings have "
        f"any differing set.\n\n"
        f"`{command}`, {wall:.0f} s wall (single thread).\n\n"
        f"{format_table(rows)}\n")
    (out / "pruning_agreement.md").write_text(text)
    (out / "pruning_agreement.json").write_text(json.dumps({
        "command": command, "wall_s": round(wall, 1), "sentences": len(lengths), "lengths": lengths,
        "layers_compared": "1-5", "ratios": ratios, "max_tokens": max_tokens,
        "count_rule_exhaustive_differences": [
            {"ratio": r, "n": n, "keep_count": a, "kept_count": b} for r, n, a, b in exhaustive],
        "rows": rows}, indent=1) + "\n")
    return out / "pruning_agreement.md", out / "pruning_agreement.json"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m spattn.sim.pruning_agreement",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first 4 evaluation sentences only")
    parser.add_argument("-o", "--out", type=Path, default=Path("reports"), help="report directory")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", "spattn.sim.pruning_agreement", *argv])
    started = time.time()
    rows = pruning_agreement(args.out, quick=args.quick, command=command)
    print(format_table(rows))
    print(f"{time.time() - started:.0f} s; {args.out / 'pruning_agreement.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
