"""The metrics, effective counts, cost model and search of ``spattn eval``, each against a plain
reference or a hand count, and the evaluation sets it ships."""

import dataclasses
import itertools
import random
import re
import tomllib
from pathlib import Path

import pytest
import torch
from spattn.config import ConfigError, preset
from spattn.sim import eval as ev
from spattn.sim.golden.bert import dense_embedding
from spattn.sim.golden.corpus import EVAL_SETS, EvalSet, RetrievalGroup, load_eval_set
from spattn.sim.golden.sparse import run_sentence
from spattn.sim.report import pareto_front

ROOT = Path(__file__).resolve().parents[3]
BASE = preset("minilm")


def plain_spearman(a, b):
    """Spearman's rho from its definition, in plain Python: Pearson's r of average ranks."""
    def rank(xs):
        out = [0.0] * len(xs)
        ordered = sorted(range(len(xs)), key=lambda i: xs[i])
        for _, group in itertools.groupby(enumerate(ordered), key=lambda p: xs[p[1]]):
            group = list(group)
            average = (group[0][0] + group[-1][0]) / 2 + 1
            for _, i in group:
                out[i] = average
        return out
    ra, rb = rank(a), rank(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def test_spearman_matches_the_plain_definition_with_ties():
    rng = random.Random(3)
    for n in (2, 5, 40, 300):
        a = [rng.randint(0, 6) for _ in range(n)]  # many ties
        b = [x + rng.random() for x in a] if n % 2 else [rng.randint(0, 4) for _ in range(n)]
        want = plain_spearman(a, b)
        assert ev.spearman(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)) \
            == pytest.approx(want, abs=1e-12)
    x = torch.tensor([3.0, 1.0, 2.0, 2.0])
    assert ev.ranks(x).tolist() == [4.0, 1.0, 2.5, 2.5]
    # a monotone but non-linear relation is perfectly rank-correlated (Pearson's r would not be 1)
    t = torch.linspace(0, 1, 50)
    assert ev.spearman(t, t ** 5) == pytest.approx(1.0)
    assert ev.spearman(t, -t) == pytest.approx(-1.0)


def _tiny_set():
    group = RetrievalGroup("q", "p", ("n1", "n2"))
    return EvalSet("tiny", ("s",), (), (group, group))


def _unit(*rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_retrieval_ranks_every_candidate_of_the_set():
    # texts: s | q1 p1 n1 n2 | q2 p2 n3 n4 ; q1's paraphrase ranks first, q2's third (behind n3 and p1)
    e = _unit([0, 0, 1], [1, 0, 0], [0.9, 0.1, 0], [0.5, 0.5, 0], [0, 1, 0],
              [0, 1, 0.1], [0.3, 1, 0], [0, 1, 0.05], [0.2, 0.2, 1])
    accuracy, mrr = ev.retrieval(e, _tiny_set())
    assert accuracy == 0.5 and mrr == pytest.approx((1 + 1 / 3) / 2)


def test_shuffled_embeddings_lose_retrieval(minilm):
    test = load_eval_set("test")
    e = torch.stack([dense_embedding(minilm, minilm.encode(t)) for t in test.texts])
    accuracy, mrr = ev.retrieval(e, test)
    assert accuracy >= 0.4 and mrr >= 0.65  # the dense model solves a good part of the hard task
    shuffled = e[torch.randperm(len(e), generator=torch.Generator().manual_seed(0))]
    lost_accuracy, lost_mrr = ev.retrieval(shuffled, test)
    assert lost_accuracy <= accuracy / 3 and lost_mrr <= mrr / 2
    reference = ev.Reference(e, accuracy, mrr)
    same, other = ev.fidelity(e, reference, test), ev.fidelity(shuffled, reference, test)
    assert same.mean_cos == pytest.approx(1) and same.spearman == pytest.approx(1)
    assert other.mean_cos < 0.5 and other.spearman < 0.5
    assert (same.accuracy, same.mrr) == (accuracy, mrr)
    assert (other.accuracy, other.mrr) == (lost_accuracy, lost_mrr)


def test_pareto_front():
    points = [(1.0, 1.0), (1.5, 0.99), (1.2, 0.98), (2.0, 0.9), (1.5, 0.95), (1.0, 0.99)]
    assert pareto_front(points) == [0, 1, 3]


def _run(minilm, cfg, texts, layer_cfgs=None):
    return [run_sentence(minilm, cfg, minilm.encode(t), "int", None, layer_cfgs) for t in texts]


SHORT = ("The printer jammed again just before the report was due.",
         "My aunt still writes letters by hand and posts them every Friday.")


def test_effect_flags_what_did_nothing(minilm):
    def did_nothing(**changes):
        cfg = dataclasses.replace(BASE, **changes)
        return ev.effect(cfg, None, _run(minilm, cfg, SHORT))

    assert max(len(minilm.encode(t)) for t in SHORT) <= 20
    e = did_nothing(token_keep=(0.95,))  # ceil(0.95 n) = n for n <= 20
    assert e.did_nothing == ("token pruning",) and e.nothing_at_all and e.tokens_alive == (1.0,) * 6
    e = did_nothing(token_keep=(1, 1, 1, 1, 1, 0.5))  # the last layer's pruning never acts
    assert e.nothing_at_all
    e = did_nothing(token_keep=(0.9,), head_keep=(0.95,))  # 12 heads: ceil(0.95 * 12) = 12
    assert e.did_nothing == ("head pruning",) and not e.nothing_at_all and e.tokens_alive[-1] < 1
    e = did_nothing(recompute_threshold=0.003)  # below 1/n: no row has so flat a softmax
    assert e.did_nothing == ("recomputation",) and not e.nothing_at_all and e.recomputed == (0.0,) * 6
    e = did_nothing(recompute_threshold=0.3, dynatran_threshold=0.001, value_keep=0.99)
    assert e.did_nothing == ("local value pruning", "DynaTran") and max(e.recomputed) > 0
    assert did_nothing(dynatran_threshold=0.05, value_keep=0.5).did_nothing == ()
    assert did_nothing().did_nothing == () and not did_nothing().nothing_at_all


def test_cost_counts_the_work_pruning_saves(minilm):
    text = SHORT[0]
    n = len(minilm.encode(text))
    cfg = dataclasses.replace(BASE, token_keep=(1, 1, 1, 1, 0.5, 1), head_keep=(1, 1, 1, 1, 11 / 12, 1))
    (result,) = _run(minilm, cfg, [text])
    k = (n + 1) // 2
    assert [s.tokens for s in result.layers] == [n] * 5 + [k] and result.layers[-1].heads == 11
    hidden, d, inner = 384, 32, 1536

    def host(tokens, heads):
        return tokens * (4 * hidden * heads * d + 2 * hidden * inner)

    c = ev.cost(minilm, [result])
    assert c.host_macs == pytest.approx(6 * host(n, 12) / (5 * host(n, 12) + host(k, 11)))
    dense_attention = 6 * 2 * d * 12 * n * n
    assert c.attention_macs == pytest.approx(dense_attention / (5 * 2 * d * 12 * n * n + 2 * d * 11 * k * k))
    assert c.softmax == pytest.approx(6 * 12 * n * n / (5 * 12 * n * n + 11 * k * k))
    assert c.traffic == pytest.approx(6 * 12 * n / (5 * 12 * n + 11 * k))
    assert c.total_macs == pytest.approx((6 * host(n, 12) + dense_attention)
                                         / (5 * host(n, 12) + host(k, 11) + 5 * 2 * d * 12 * n * n
                                            + 2 * d * 11 * k * k))
    # value pruning and recomputation: P·V over the V rows used, Q·Kᵀ again for recomputed rows
    cfg = dataclasses.replace(BASE, value_keep=0.5, recompute_threshold=1.0)  # every row recomputed
    (result,) = _run(minilm, cfg, [text])
    used = 12 * n * ((n + 1) // 2)
    c = ev.cost(minilm, [result])
    assert c.attention_macs == pytest.approx(dense_attention / (6 * d * (2 * 12 * n * n + used)))
    assert c.softmax == pytest.approx(0.5) and c.host_macs == 1 and c.traffic >= 1  # V rows no query keeps


def test_layer_cfgs_set_runtime_fields_per_layer(minilm):
    ids = minilm.encode(SHORT[1])
    plain = run_sentence(minilm, BASE, ids)
    same = run_sentence(minilm, BASE, ids, layer_cfgs=(BASE,) * 6)
    assert torch.equal(plain.embedding, same.embedding) and plain.layers == same.layers
    layer_cfgs = tuple(dataclasses.replace(BASE, recompute_threshold=1.0 if i == 2 else None)
                       for i in range(6))
    mixed = run_sentence(minilm, BASE, ids, layer_cfgs=layer_cfgs)
    assert [s.recomputed for s in mixed.layers] == [0, 0, 12 * len(ids), 0, 0, 0]
    assert [s.traffic for s in mixed.layers[:2]] == [s.traffic for s in plain.layers[:2]]
    with pytest.raises(ConfigError, match="act_msb_bits"):
        run_sentence(minilm, BASE, ids, layer_cfgs=(dataclasses.replace(BASE, act_msb_bits=6),) * 6)
    with pytest.raises(ConfigError, match="6 configs"):
        run_sentence(minilm, BASE, ids, layer_cfgs=(BASE,))


class _Fake:
    """A calibration result of the fake search below."""
    def __init__(self, traffic, mean_cos):
        self.cost = ev.Cost(traffic, 1, 1, 1, 1)
        self.fidelity = ev.Fidelity(mean_cos, mean_cos, 1, 1, 1)
        self.retrieval_kept = True


def test_search_steps_each_coordinate_while_the_target_holds():
    a = ev.Knob("token_keep", 4, (1.0, 0.9, 0.8, 0.65, 0.5))   # 0.0025 of cosine and +1 traffic per step
    b = ev.Knob("head_keep", 3, (1.0, 11 / 12, 10 / 12))        # 0.005 of cosine and +1 traffic per step
    c = ev.Knob("dynatran", None, (0.0, 0.02, 0.05))            # free but saves nothing: never taken
    seen = []

    def run(point):
        i, j = a.ladder.index(point.get(a)), b.ladder.index(point.get(b))
        seen.append(point)
        return _Fake(1 + i + j, 1 - 0.0025 * i - 0.005 * j)

    chosen, evaluations = ev.search(run, (0.99, 0.995, 0.98), (a, b, c), ev.Point())
    assert [goal for goal, _, _ in chosen] == [0.995, 0.99, 0.98]
    # each target is met with CALIBRATION_MARGIN (0.002) to spare
    assert [(p.get(a), p.get(b)) for _, p, _ in chosen] == [(0.9, 1.0), (0.65, 1.0), (0.5, 11 / 12)]
    assert [cal.fidelity.mean_cos for _, _, cal in chosen] == pytest.approx([0.9975, 0.9925, 0.985])
    assert all(p.dynatran == 0 for _, p, _ in chosen) and evaluations == len(seen)
    # every point is evaluated once: the start, then per target the new steps taken and the steps that
    # end each coordinate (0.995: a 0.9, a 0.8, b, c; 0.99: a 0.65, a 0.5, b, c (a 0.8 is known);
    # 0.98: b 11/12, b 10/12, c (a 0.5 is known))
    assert len(set(seen)) == len(seen) == evaluations == 1 + 4 + 4 + 3


def test_knobs_never_search_the_last_layers_pruning():
    ks = ev.knobs(6)
    assert {k.layer for k in ks if k.field in ("token_keep", "head_keep")} == {0, 1, 2, 3, 4}
    assert all(k.ladder[0] == ev.Point().get(k) for k in ks)  # every ladder starts at the dense point
    cfg, layer_cfgs = (ev.Point(thresholds=(None, 0.2, 0, 0, 0, 0)).setting("x").config(BASE),
                       ev.Point(thresholds=(None, 0.2, 0, 0, 0, 0)).setting("x").layer_cfgs(BASE))
    assert cfg.act_msb_bits == 8 and [lc.recompute_threshold for lc in layer_cfgs] == [None, 0.2, 0, 0, 0, 0]


def _words(text):
    return set(re.findall(r"[a-z]{3,}", text.lower())) - {"the", "and", "was", "his", "her", "for"}


def test_evaluation_sets_are_separate_real_and_shipped(minilm):
    sets = {name: load_eval_set(name) for name in EVAL_SETS}
    cal, test = sets["calibration"], sets["test"]
    assert not set(cal.texts) & set(test.texts)
    for s in sets.values():
        assert len(s.sentences) >= 10 and len(s.passages) >= 6 and len(s.retrieval) >= 12
        lengths = [len(minilm.encode(p)) for p in s.passages]
        assert all(60 <= n <= 250 for n in lengths) and max(lengths) >= 200
        for g in s.retrieval:  # hard negatives share words with the query
            assert len(g.negatives) == 3 and all(len(_words(g.query) & _words(n)) >= 2 for n in g.negatives)
        assert len(set(s.texts)) == len(s.texts)
    with pytest.raises(ValueError, match="calibration, test"):
        load_eval_set("train")
    # pyproject ships the files as package data of spattn.sim.golden
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["spattn.sim.golden"]
    files = sorted(p.relative_to(ROOT / "sim/golden") for p in (ROOT / "sim/golden/data").iterdir())
    assert files == [Path(f"data/{name}.json") for name in EVAL_SETS]
    assert all(any(f.match(pattern) for pattern in patterns) for f in files)
