"""``spattn eval``: the sparse-attention techniques on all-MiniLM-L6-v2, fidelity against traffic.

Runs every setting of a sweep over the corpus of :mod:`spattn.sim.golden.corpus` with the bit-exact
integer attention path, and compares each sentence embedding with the dense float model's.
Writes ``report.md`` (one table row per setting, the best setting keeping mean cosine >= 0.99)
and ``fidelity_vs_traffic.png`` into the output directory (default ``reports/``).

    python -m spattn.sim.eval [--out DIR] [--preset minilm] [--quick]
"""

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from spattn.config import preset

from .golden.bert import dense_embedding
from .golden.corpus import CALIBRATION, eval_sentences, paraphrase_sentences
from .golden.masks import calibrate_masks
from .golden.minilm import load_minilm
from .golden.sparse import run_sentence
from .golden.traffic import Traffic
from .report import write_report

__all__ = ["Setting", "Summary", "sweep", "evaluate", "main"]

#: Mean cosine an operating point must keep.
FIDELITY_TARGET = 0.99


@dataclass(frozen=True)
class Setting:
    """One point of the sweep: a technique family and the config fields it changes."""
    label: str
    family: str
    changes: tuple = ()  # (field, value) pairs applied to the preset

    def config(self, base):
        return dataclasses.replace(base, **dict(self.changes))


@dataclass(frozen=True)
class Summary:
    """A setting's results over the corpus."""
    setting: Setting
    reduction: float           # dense bytes / fetched bytes, over all sentences
    mean_cos: float
    min_cos: float
    retrieval: tuple           # (nearest neighbours unchanged, paraphrase sentences)
    tokens_alive: tuple        # per layer: alive tokens / all tokens, over all sentences
    heads_alive: tuple         # per layer: mean alive heads
    recomputed: float          # rows recomputed / rows
    sparsity: float            # zero Q/K/V values / values
    entries_kept: float        # attention entries kept by the static mask / entries
    dense_share: float         # of the kept entries, those in key columns for the dense engine


def _late(ratio, layers=6, start=3):
    """A schedule that keeps everything before layer ``start`` and ``ratio`` per layer after it."""
    return tuple(1.0 if layer < start else ratio for layer in range(layers))


def _pq(threshold, msb=None, frac=None):
    """Progressive-quantization changes, optionally with another MSB split or binary point."""
    changes = (("recompute_threshold", threshold),)
    changes += (("act_msb_bits", msb),) if msb else ()
    return changes + ((("act_frac", frac),) if frac else ())


def _pq_label(threshold, msb=None, frac=None):
    label = "MSB planes only" if threshold == 0 else f"recompute < {threshold}"
    label += f", {msb} MSB" if msb and msb != 8 else ""
    return label + (f", act_frac {frac}" if frac else "")


def sweep(quick=False):
    """The settings, per technique family and combined.

    The ``minilm`` preset's Q/K/V format has 8 fraction bits (range +-8; MiniLM's layer-0 Q and K
    reach +-12.1, so a few values saturate); the ``act_frac 7`` settings show what one more integer
    bit costs: the 8-bit MSB planes then keep 3 fraction bits instead of 4.
    """
    s = [Setting("dense, integer path", "dense")]
    s += [Setting(f"token keep {r}/layer", "token pruning", (("token_keep", (r,)),))
          for r in (0.98, 0.95, 0.9, 0.8)]
    s += [Setting(f"token keep {r}/layer from L3", "token pruning", (("token_keep", _late(r)),))
          for r in (0.9, 0.8, 0.6)]
    s += [Setting(f"head keep {r}/layer", "head pruning", (("head_keep", (r,)),)) for r in (0.9, 0.85)]
    s += [Setting("head keep 0.9/layer from L3", "head pruning", (("head_keep", _late(0.9)),))]
    s += [Setting(f"value keep {r}", "local value pruning", (("value_keep", r),))
          for r in (0.7, 0.5, 0.3, 0.2, 0.1)]
    s += [Setting(_pq_label(t), "progressive quantization", _pq(t)) for t in (0.0, 0.05, 0.2, 0.5, 0.8)]
    s += [Setting(_pq_label(t, frac=7), "progressive quantization, act_frac 7", _pq(t, frac=7))
          for t in (0.0, 0.2, 0.5)]
    s += [Setting(_pq_label(t, m), "progressive quantization", _pq(t, m))
          for m in (7, 6) for t in (0.0, 0.2, 0.5)]
    s += [Setting(f"DynaTran |x| < {t}", "DynaTran", (("dynatran_threshold", t),))
          for t in (0.02, 0.05, 0.1, 0.2)]
    s += [Setting(f"static mask {d}", "static mask", (("static_mask_density", d),)) for d in (0.7, 0.5, 0.3)]
    for msb, t in ((8, 0.0), (7, 0.2)):
        for v, r in ((0.7, 1.0), (0.7, 0.98), (0.5, 0.98), (0.7, 0.95)):
            label = f"{_pq_label(t, msb)} + value {v}" + (f" + token {r}" if r < 1 else "")
            s += [Setting(label, "combined", _pq(t, msb) + (("value_keep", v), ("token_keep", (r,))))]
    if quick:
        s = [s[0], s[3], s[11], s[14]]
    return s


def _nearest(embeddings):
    sims = embeddings @ embeddings.T
    sims.fill_diagonal_(-2)
    return sims.argmax(dim=1)


def evaluate(setting, base, model, sentences, reference, masks, paraphrases):
    """Run one setting over ``sentences``; ``reference`` holds their dense float embeddings; the
    first ``paraphrases`` sentences form the retrieval set."""
    cfg = setting.config(base)
    results = [run_sentence(model, cfg, model.encode(text), "int",
                            masks if cfg.static_mask_density < 1 else None) for text in sentences]
    embeddings = torch.stack([r.embedding for r in results])
    cos = (embeddings * reference).sum(dim=1)
    same = int((_nearest(embeddings[:paraphrases]) == _nearest(reference[:paraphrases])).sum())
    layers = list(zip(*(r.layers for r in results), strict=True))
    fetched = sum((s.traffic for layer in layers for s in layer), start=Traffic())
    dense = sum((s.dense for layer in layers for s in layer), start=Traffic())
    total = sum(len(r.layers[0].alive_tokens) for r in results)
    stats = [s for layer in layers for s in layer]
    return Summary(
        setting=setting, reduction=dense.bits / fetched.bits, mean_cos=float(cos.mean()),
        min_cos=float(cos.min()), retrieval=(same, paraphrases),
        tokens_alive=tuple(sum(s.tokens for s in layer) / total for layer in layers),
        heads_alive=tuple(sum(s.heads for s in layer) / len(layer) for layer in layers),
        recomputed=sum(s.recomputed for s in stats) / sum(s.rows for s in stats),
        sparsity=sum(s.zeros for s in stats) / sum(s.values for s in stats),
        entries_kept=sum(s.mask_nonzeros for s in stats) / sum(s.heads * s.tokens ** 2 for s in stats),
        dense_share=sum(s.dense_nonzeros for s in stats) / sum(s.mask_nonzeros for s in stats))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="spattn eval", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports"), help="report directory")
    parser.add_argument("--preset", default="minilm", help="config preset (default: minilm)")
    parser.add_argument("--quick", action="store_true", help="few sentences and settings (a smoke run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # these small kernels run far faster single-threaded on a shared machine
    started = time.time()
    model, base = load_minilm(), preset(args.preset)
    sentences = eval_sentences()
    if args.quick:
        sentences = paraphrase_sentences()[:4]
    with torch.no_grad():
        reference = torch.stack([dense_embedding(model, model.encode(t)) for t in sentences])
        masks = {}
        summaries = []
        for setting in sweep(args.quick):
            cfg = setting.config(base)
            if cfg.static_mask_density < 1 and cfg.static_mask_density not in masks:
                masks[cfg.static_mask_density] = calibrate_masks(model, cfg, CALIBRATION)
            summaries.append(evaluate(setting, base, model, sentences, reference,
                                      masks.get(cfg.static_mask_density),
                                      min(len(sentences), len(paraphrase_sentences()))))
            print(f"{setting.label}: x{summaries[-1].reduction:.2f}, cos {summaries[-1].mean_cos:.4f}",
                  flush=True)
    lengths = [len(model.encode(t)) for t in sentences]
    paths = write_report(args.out, summaries, base, lengths, FIDELITY_TARGET, time.time() - started)
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
