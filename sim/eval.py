"""``spattn eval``: choose an operating point of the sparse-attention algorithm on all-MiniLM-L6-v2.

Two sets of English text written for this repository (:func:`.golden.corpus.load_eval_set`):
operating points and static masks are chosen on ``calibration``; every reported figure is
measured on ``test``. Each setting runs the bit-exact integer attention path over the set and is
compared with the dense float model:

* fidelity (:class:`Fidelity`): cosine of each embedding with the dense float one (mean, minimum);
  retrieval with hard negatives (each query ranks every candidate of the set: accuracy and mean
  reciprocal rank of its paraphrase); Spearman correlation of all pairwise similarities of the
  set's texts with the dense float model's;
* what the setting really did (:class:`Effect`): tokens and heads alive per layer, rows recomputed
  per layer, and the techniques it switches on that changed nothing on the set;
* cost against the dense model (:class:`Cost`): Q/K/V bits fetched, host MACs (Q/K/V and output
  projections and FFN of the alive tokens and heads), attention MACs (Q·Kᵀ, again for recomputed
  rows, and P·V over the V rows used) and softmax exponentials.

Calibrated operating points come from a coordinate search on the calibration set (:func:`search`).
Writes ``report.md``, ``report.json`` and ``pareto.png`` (:mod:`.report`) into the output directory.

    spattn eval [--out DIR] [--preset minilm] [--quick]
"""

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass

import torch

from spattn.config import preset

from .golden.bert import dense_embedding
from .golden.corpus import load_eval_set
from .golden.masks import calibrate_masks
from .golden.minilm import load_minilm
from .golden.pruning import schedule_at
from .golden.sparse import run_sentence
from .report import write_report

__all__ = ["FIDELITY_TARGET", "TARGETS", "Setting", "Fidelity", "Effect", "Cost", "Summary", "Point",
           "Knob", "Reference", "ranks", "spearman", "retrieval", "pairwise_similarities", "fidelity",
           "effect", "cost", "evaluate", "sweep", "knobs", "search", "main"]

#: Mean cosine an operating point must keep on the test set (with retrieval accuracy kept).
FIDELITY_TARGET = 0.99
#: Mean-cosine targets the search calibrates for, each on the calibration set.
TARGETS = (0.995, 0.99, 0.98, 0.95)
#: The search asks the calibration set for this much more than the target, so the point still
#: meets the target on unseen text.
CALIBRATION_MARGIN = 0.002


@dataclass(frozen=True)
class Setting:
    """One setting: config fields for every layer and per-layer runtime fields."""
    label: str
    family: str
    changes: tuple = ()     # (field, value) pairs applied to the preset
    per_layer: tuple = ()   # (field, one value per layer) pairs of sparse.LAYER_FIELDS

    def config(self, base):
        return dataclasses.replace(base, **dict(self.changes))

    def layer_cfgs(self, base):
        """One config per layer, or None when no field is set per layer."""
        cfg = self.config(base)
        if not self.per_layer:
            return None
        return tuple(dataclasses.replace(cfg, **{name: values[layer] for name, values in self.per_layer})
                     for layer in range(cfg.layers))


@dataclass(frozen=True)
class Fidelity:
    mean_cos: float
    min_cos: float
    accuracy: float    # queries whose paraphrase ranks first among all candidates
    mrr: float         # mean reciprocal rank of the paraphrase
    spearman: float    # of all pairwise similarities, against the dense float model's


@dataclass(frozen=True)
class Effect:
    """What a setting did on a set, per layer L0 to L5."""
    tokens_alive: tuple   # alive tokens / tokens
    heads_alive: tuple    # mean alive heads per text
    recomputed: tuple     # rows recomputed / rows
    values_used: float    # V rows used in P·V / present keys
    dynatran_zeroed: float  # Q/K/V values DynaTran zeroed / values
    entries_kept: float   # attention entries the static mask keeps / entries
    did_nothing: tuple    # techniques the setting switches on that changed nothing
    nothing_at_all: bool  # every technique it switches on did nothing


@dataclass(frozen=True)
class Cost:
    """Reductions against the dense model: dense work / this setting's work."""
    traffic: float          # Q/K/V bits fetched
    host_macs: float        # Q/K/V and output projections and FFN on the host
    attention_macs: float   # Q·Kᵀ (and its recomputation) and P·V
    softmax: float          # exponentials
    total_macs: float       # host and attention


@dataclass(frozen=True)
class Summary:
    setting: Setting
    fidelity: Fidelity
    effect: Effect
    cost: Cost
    retrieval_kept: bool   # retrieval accuracy at least the dense float model's


@dataclass(frozen=True)
class Reference:
    """The dense float model on one set: its embeddings and its retrieval figures."""
    embeddings: torch.Tensor
    accuracy: float
    mrr: float


def ranks(x):
    """1-based ranks of the 1-D ``x``, ties sharing their average rank (float64)."""
    order = torch.argsort(x, stable=True)
    _, inverse, counts = torch.unique_consecutive(x[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    average = ends - (counts.to(torch.float64) - 1) / 2
    out = torch.empty(len(x), dtype=torch.float64)
    out[order] = average[inverse]
    return out


def spearman(a, b):
    """Spearman's rank correlation of two 1-D tensors: Pearson's correlation of their ranks."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def pairwise_similarities(embeddings):
    """Cosine of every pair ``i < j`` of the unit-length rows of ``embeddings``."""
    i, j = torch.triu_indices(len(embeddings), len(embeddings), 1)
    return (embeddings @ embeddings.T)[i, j]


def retrieval(embeddings, eval_set):
    """``(accuracy, mean reciprocal rank)``: each query ranks all candidates of ``eval_set``
    (``embeddings`` in the order of its texts) by cosine; ties rank in the paraphrase's favour."""
    queries, candidates, answers = eval_set.retrieval_positions()
    sims = embeddings[queries] @ embeddings[candidates].T
    right = sims[torch.arange(len(queries)), answers]
    rank = 1 + (sims > right.unsqueeze(1)).sum(dim=1)
    return float((rank == 1).double().mean()), float((1 / rank.double()).mean())


def fidelity(embeddings, reference, eval_set):
    cos = (embeddings * reference.embeddings).sum(dim=1)
    accuracy, mrr = retrieval(embeddings, eval_set)
    return Fidelity(mean_cos=float(cos.mean()), min_cos=float(cos.min()), accuracy=accuracy, mrr=mrr,
                    spearman=spearman(pairwise_similarities(embeddings),
                                      pairwise_similarities(reference.embeddings)))


def _share(part, whole):
    return part / whole if whole else 0.0


def effect(cfg, layer_cfgs, results):
    """Effective pruning of ``results`` (one :class:`.sparse.SentenceResult` per text) under ``cfg``."""
    layer_cfgs = layer_cfgs or (cfg,) * cfg.layers
    layers = list(zip(*(r.layers for r in results), strict=True))
    stats = [s for layer in layers for s in layer]
    pq_layers = [layer for layer, lc in zip(layers, layer_cfgs) if lc.recompute_threshold is not None]
    redo_layers = [layer for layer, lc in zip(layers, layer_cfgs) if lc.recompute_threshold]
    switched = {  # technique: (switched on, changed something)
        "token pruning": (any(schedule_at(cfg.token_keep, i) < 1 for i in range(cfg.layers)),
                          any(r.layers[-1].tokens < r.layers[0].tokens for r in results)),
        "head pruning": (any(schedule_at(cfg.head_keep, i) < 1 for i in range(cfg.layers)),
                         any(r.layers[-1].heads < r.layers[0].heads for r in results)),
        "local value pruning": (any(lc.value_keep < 1 for lc in layer_cfgs),
                                sum(s.values_used for s in stats) < sum(s.mask_nonzeros for s in stats)),
        "MSB-only rows": (bool(pq_layers), any(s.recomputed < s.rows for layer in pq_layers for s in layer)),
        "recomputation": (bool(redo_layers), any(s.recomputed for layer in redo_layers for s in layer)),
        "DynaTran": (any(lc.dynatran_threshold > 0 for lc in layer_cfgs),
                     any(s.dynatran_zeroed for s in stats)),
        "static mask": (cfg.static_mask_density < 1,
                        any(s.mask_nonzeros < s.heads * s.tokens ** 2 for s in stats)),
    }
    on = [name for name, (switched_on, _) in switched.items() if switched_on]
    idle = tuple(name for name in on if not switched[name][1])
    tokens = sum(r.layers[0].tokens for r in results)
    return Effect(
        tokens_alive=tuple(sum(s.tokens for s in layer) / tokens for layer in layers),
        heads_alive=tuple(sum(s.heads for s in layer) / len(layer) for layer in layers),
        recomputed=tuple(_share(sum(s.recomputed for s in layer), sum(s.rows for s in layer))
                         for layer in layers),
        values_used=_share(sum(s.values_used for s in stats), sum(s.mask_nonzeros for s in stats)),
        dynatran_zeroed=_share(sum(s.dynatran_zeroed for s in stats), sum(s.values for s in stats)),
        entries_kept=_share(sum(s.mask_nonzeros for s in stats), sum(s.heads * s.tokens ** 2 for s in stats)),
        did_nothing=idle, nothing_at_all=bool(on) and len(idle) == len(on))


def _host_macs(model, tokens, heads):
    """MACs of one layer on the host for ``tokens`` alive tokens and ``heads`` alive heads: Q/K/V
    projections of the alive heads, output projection of their context, FFN."""
    width = heads * model.head_dim
    inner = model.weights["encoder.layer.0.intermediate.dense.weight"].shape[0]
    return tokens * (3 * model.hidden * width + width * model.hidden + 2 * model.hidden * inner)


def cost(model, results):
    """:class:`Cost` of ``results`` against the dense model on the same texts."""
    work, dense = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    for r in results:
        n = r.layers[0].tokens
        for s in r.layers:
            scores = s.mask_nonzeros + s.recomputed_entries
            work += torch.tensor([s.traffic.bits, _host_macs(model, s.tokens, s.heads),
                                  model.head_dim * (scores + s.values_used), scores], dtype=torch.float64)
            dense += torch.tensor([s.dense.bits, _host_macs(model, n, model.heads),
                                   2 * model.head_dim * model.heads * n * n, model.heads * n * n],
                                  dtype=torch.float64)
    ratio = (dense / work).tolist()
    return Cost(traffic=ratio[0], host_macs=ratio[1], attention_macs=ratio[2], softmax=ratio[3],
                total_macs=float((dense[1] + dense[2]) / (work[1] + work[2])))


def evaluate(setting, base, model, eval_set, ids, reference, masks=None):
    """Run ``setting`` over ``eval_set`` (``ids``: its tokenised texts)."""
    cfg, layer_cfgs = setting.config(base), setting.layer_cfgs(base)
    results = [run_sentence(model, cfg, t, "int", masks if cfg.static_mask_density < 1 else None, layer_cfgs)
               for t in ids]
    fid = fidelity(torch.stack([r.embedding for r in results]), reference, eval_set)
    return Summary(setting=setting, fidelity=fid, effect=effect(cfg, layer_cfgs, results),
                   cost=cost(model, results), retrieval_kept=fid.accuracy >= reference.accuracy)


def _late(ratio, layers=6, start=3):
    """A schedule that keeps everything before layer ``start`` and ``ratio`` per layer after it."""
    return tuple(1.0 if layer < start else ratio for layer in range(layers))


def sweep(quick=False):
    """Hand-picked settings of each technique, fixed before any evaluation; some are no-ops by
    construction (head keep 0.95 keeps ceil(0.95 * 12) = 12 heads, a recompute threshold of 0.003
    is below 1/n for every text of at most 256 tokens), to show that the report flags them."""
    msb = (("recompute_threshold", 0.0),)
    s = [Setting("dense, integer path", "dense")]
    s += [Setting(f"token keep {r}/layer", "token pruning", (("token_keep", (r,)),)) for r in (0.98, 0.9)]
    s += [Setting(f"token keep {r}/layer from L3", "token pruning", (("token_keep", _late(r)),))
          for r in (0.8, 0.6)]
    s += [Setting("head keep 0.95/layer", "head pruning", (("head_keep", (0.95,)),)),
          Setting("head keep 11/12 from L3", "head pruning", (("head_keep", _late(11 / 12)),))]
    s += [Setting(f"value keep {r}", "local value pruning", (("value_keep", r),)) for r in (0.7, 0.3, 0.1)]
    s += [Setting("MSB planes only", "progressive quantization", msb)]
    s += [Setting(f"recompute < {t}", "progressive quantization", (("recompute_threshold", t),))
          for t in (0.003, 0.2)]
    s += [Setting(f"MSB planes only, {m} MSB", "progressive quantization", msb + (("act_msb_bits", m),))
          for m in (7, 6)]
    s += [Setting(f"DynaTran |x| < {t}", "DynaTran", (("dynatran_threshold", t),)) for t in (0.02, 0.1)]
    s += [Setting(f"static mask {d}", "static mask", (("static_mask_density", d),)) for d in (0.7, 0.5)]
    s += [Setting("MSB planes only + value 0.7 + token 0.98", "combined",
                  msb + (("value_keep", 0.7), ("token_keep", (0.98,)))),
          Setting("MSB planes only + token 0.8 from L3", "combined", msb + (("token_keep", _late(0.8)),))]
    if quick:
        s = [s[0], s[2], s[5], s[10]]
    return s


@dataclass(frozen=True)
class Point:
    """A state of the search: everything it may change."""
    layers: int = 6
    msb_bits: int = 8
    thresholds: tuple = (None,) * 6  # per layer: None = full precision, else MSB pass and recompute
    token_keep: tuple = (1.0,) * 6
    head_keep: tuple = (1.0,) * 6
    value_keep: float = 1.0
    dynatran: float = 0.0

    def get(self, knob):
        value = getattr(self, knob.field)
        return value if knob.layer is None else value[knob.layer]

    def with_value(self, knob, value):
        if knob.layer is not None:
            old = getattr(self, knob.field)
            value = old[:knob.layer] + (value,) + old[knob.layer + 1:]
        return dataclasses.replace(self, **{knob.field: value})

    def describe(self):
        def schedule(values):
            return "/".join("full" if v is None else "MSB" if v == 0 else f"{v:.3g}" for v in values)
        parts = [f"{self.msb_bits} MSB, recompute " + schedule(self.thresholds)]
        parts += [f"{name} keep " + schedule(values) for name, values in
                  (("token", self.token_keep), ("head", self.head_keep)) if min(values) < 1]
        parts += [f"value keep {self.value_keep}"] * (self.value_keep < 1)
        parts += [f"DynaTran {self.dynatran}"] * (self.dynatran > 0)
        return "; ".join(parts)

    def setting(self, label):
        return Setting(label, "calibrated",
                       (("act_msb_bits", self.msb_bits), ("token_keep", self.token_keep),
                        ("head_keep", self.head_keep), ("value_keep", self.value_keep),
                        ("dynatran_threshold", self.dynatran)),
                       (("recompute_threshold", self.thresholds),))


@dataclass(frozen=True)
class Knob:
    """One coordinate of the search: a field of :class:`Point` (of one layer) and its values, from
    the least to the most aggressive."""
    field: str
    layer: int | None
    ladder: tuple


def knobs(layers, quick=False):
    """The coordinates, in the order the search visits them: the precision of each layer first (the
    largest traffic saving per fidelity lost), then the MSB width, token and head keep of each layer
    but the last (whose pruning never acts) from the last to the first, value keep, DynaTran."""
    k = [Knob("thresholds", layer, (None, 0.2, 0.05, 0.0)) for layer in range(layers)]
    k += [Knob("msb_bits", None, (8, 7, 6))]
    k += [Knob("token_keep", layer, (1.0, 0.9, 0.8, 0.65, 0.5)) for layer in reversed(range(layers - 1))]
    k += [Knob("head_keep", layer, (1.0, 11 / 12, 10 / 12, 9 / 12)) for layer in reversed(range(layers - 1))]
    k += [Knob("value_keep", None, (1.0, 0.7, 0.5, 0.3)), Knob("dynatran", None, (0.0, 0.02, 0.05))]
    return k[::3] if quick else k


def _gains(new, old, eps=1e-9):
    """More Q/K/V traffic saved, or as much and less host and attention work."""
    if new.cost.traffic > old.cost.traffic + eps:
        return True
    return new.cost.traffic >= old.cost.traffic - eps and new.cost.total_macs > old.cost.total_macs + eps


def search(run, targets, coordinates, start, on_knob=None):
    """Coordinate search for the largest traffic reduction at each mean-cosine target.

    ``run(point)`` evaluates a :class:`Point` on the calibration set (a :class:`Summary`). For each
    target, from the most faithful down, one pass over ``coordinates`` starting from the previous
    target's point: each coordinate steps along its ladder while the result keeps mean cosine
    >= target + :data:`CALIBRATION_MARGIN` and retrieval accuracy, and gains (:func:`_gains`); the
    first step that fails or gains nothing ends that coordinate. A point is evaluated once (a later
    target often probes the same step from the same point). ``on_knob(text)`` is called after each
    coordinate. Returns ``[(target, point, calibration summary)]`` and the number of evaluations."""
    results = {}

    def evaluated(point):
        if point not in results:
            results[point] = run(point)
        return results[point]

    point, chosen = start, []
    for target in sorted(targets, reverse=True):
        for knob in coordinates:
            ladder = knob.ladder
            for value in ladder[ladder.index(point.get(knob)) + 1:]:
                trial = point.with_value(knob, value)
                result = evaluated(trial)
                fits = result.fidelity.mean_cos >= target + CALIBRATION_MARGIN and result.retrieval_kept
                if not (fits and _gains(result, evaluated(point))):
                    break
                point = trial
            if on_knob:
                on_knob(f"target {target}: {knob.field}" + ("" if knob.layer is None else f" L{knob.layer}"))
        chosen.append((target, point, evaluated(point)))
    return chosen, len(results)


class Progress:
    """A progress bar on stderr: ``[#####.....] done/total what (elapsed, time left)``."""

    def __init__(self, total, title):
        self.total, self.title, self.done, self.started = total, title, 0, time.time()

    def step(self, what):
        self.done += 1
        elapsed = time.time() - self.started
        left = elapsed / self.done * (self.total - self.done)
        bar = "#" * (20 * self.done // self.total)
        sys.stderr.write(f"\r{self.title} [{bar:<20}] {self.done}/{self.total} {what[:50]:<50} "
                         f"({elapsed:.0f} s, {left:.0f} s left)")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _reference(model, eval_set, ids):
    embeddings = torch.stack([dense_embedding(model, t) for t in ids])
    return Reference(embeddings, *retrieval(embeddings, eval_set))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="spattn eval", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports", help="report directory (default: reports)")
    parser.add_argument("--preset", default="minilm", help="config preset (default: minilm)")
    parser.add_argument("--quick", action="store_true",
                        help="a few texts, settings, coordinates and one target (a smoke run for tests)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # these small kernels run far faster single-threaded on a shared machine
    started = time.time()
    model, base = load_minilm(), preset(args.preset)
    sets = {name: load_eval_set(name) for name in ("calibration", "test")}
    if args.quick:
        sets = {name: s.subset(2, 1, 3) for name, s in sets.items()}
    ids = {name: [model.encode(t) for t in s.texts] for name, s in sets.items()}
    with torch.no_grad():
        refs = {name: _reference(model, s, ids[name]) for name, s in sets.items()}

        def calibrate(point):
            return evaluate(point.setting(""), base, model, sets["calibration"], ids["calibration"],
                            refs["calibration"])

        targets = (FIDELITY_TARGET,) if args.quick else TARGETS
        coordinates = knobs(base.layers, args.quick)
        searching = Progress(len(targets) * len(coordinates), "search, calibration set")
        chosen, evaluations = search(calibrate, targets, coordinates, Point(layers=base.layers),
                                     searching.step)
        search_seconds = time.time() - started

        settings = sweep(args.quick) + [point.setting(f"calibrated for {target}: {point.describe()}")
                                        for target, point, _ in chosen]
        masks = {}
        testing = Progress(len(settings), "test set")
        summaries = []
        for setting in settings:
            cfg = setting.config(base)
            density = cfg.static_mask_density
            if density < 1 and density not in masks:
                masks[density] = calibrate_masks(model, cfg, sets["calibration"].texts)
            summaries.append(evaluate(setting, base, model, sets["test"], ids["test"], refs["test"],
                                      masks.get(density)))
            testing.step(setting.label)
    calibrated = [(target, cal, test) for (target, _, cal), test in
                  zip(chosen, summaries[-len(chosen):], strict=True)]
    lengths = {name: [len(t) for t in ids[name]] for name in sets}
    paths = write_report(args.out, summaries[:-len(chosen)], calibrated, base, sets, lengths, refs,
                         FIDELITY_TARGET, CALIBRATION_MARGIN,
                         {"search evaluations": evaluations, "search seconds": search_seconds,
                          "seconds": time.time() - started, "quick": args.quick})
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
