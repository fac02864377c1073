"""The int-vs-float pruning agreement report: structure, sane figures, and the agreement it must show."""

import json

from spattn.sim.eval import Setting
from spattn.sim.golden.corpus import eval_sentences
from spattn.sim.pruning_agreement import COMBINED, count_rule_differences, pruning_agreement, settings

NOTHING_PRUNED = Setting("keep 1.0", "token pruning", (("token_keep", (1.0,)), ("head_keep", (1.0,))))


def test_report_structure_and_agreement_without_pruning(tmp_path):
    sentences = eval_sentences()[:2]
    rows = pruning_agreement(tmp_path, sentences=sentences, chosen=[NOTHING_PRUNED, COMBINED])
    assert [r["setting"] for r in rows] == [NOTHING_PRUNED.label, COMBINED.label]
    for r in rows:
        assert r["sentences"] == 2 and r["pairs"] == 2 * 5  # layers 1-5
        for key in ("tokens_differ", "heads_differ", "tokens_jaccard", "heads_jaccard"):
            assert 0.0 <= r[key] <= 1.0, key
        for key in ("cos_int_float_mean", "cos_int_float_min", "cos_int_dense_mean", "cos_float_dense_mean"):
            assert -1.0 - 1e-9 <= r[key] <= 1.0 + 1e-9, key
        assert r["cos_int_float_min"] <= r["cos_int_float_mean"] + 1e-12
        assert 0 <= r["sentences_differ"] <= 2
        assert r["count_rule"]["decisions"] == 2 * 6 * 2  # sentences x layers x (tokens, heads)
        assert 0 <= r["count_rule"]["counts_differ"] <= r["count_rule"]["decisions"]
        assert len(r["per_layer_differ"]) == 6
    # Nothing pruned: both paths keep everything, and the integer path stays close to the float one.
    dense = rows[0]
    assert dense["tokens_differ"] == 0 and dense["heads_differ"] == 0
    assert dense["tokens_jaccard"] == 1 and dense["heads_jaccard"] == 1
    assert dense["sentences_differ"] == 0 and dense["first_divergences"] == []
    assert dense["cos_int_float_min"] > 0.999 and dense["cos_float_dense_mean"] > 0.999999
    assert dense["count_rule"]["counts_differ"] == 0

    text = (tmp_path / "pruning_agreement.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 2 and "cos int~float mean" in table[0]
    report = json.loads((tmp_path / "pruning_agreement.json").read_text())
    assert report["sentences"] == 2 and len(report["rows"]) == 2


def test_controller_count_rule_matches_float_rule():
    """For every keep ratio of the measured settings and every count up to max_tokens, the fixed-point
    ``kept_count(value_keep_int(r), n)`` keeps as many as ``keep_count(r, n)``."""
    ratios = [r for s in settings() for _, values in s.changes for r in values] + [0.3, 0.5, 0.7, 1.0]
    assert count_rule_differences(ratios, 256) == []
    assert count_rule_differences([0.3], 10) == []  # half-up rounding of the ratio once kept 4 of 10
