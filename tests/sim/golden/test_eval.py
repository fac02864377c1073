"""``spattn eval --quick`` end to end: the report, its JSON and the Pareto plot; the operating-point rule."""

import json

from spattn.sim import eval as spattn_eval
from spattn.sim.report import best_setting


def test_quick_eval_writes_report(tmp_path):
    assert spattn_eval.main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "report.json").read_text())
    sweep = {s["setting"]["label"]: s for s in data["sweep"]}
    dense = sweep["dense, integer path"]
    assert dense["cost"]["traffic"] == 1 and dense["cost"]["total_macs"] == 1
    assert dense["fidelity"]["mean_cos"] > 0.999 and dense["retrieval_kept"]
    assert dense["fidelity"]["accuracy"] == data["dense_float"]["test"]["accuracy"]
    assert dense["effect"]["did_nothing"] == [] and not dense["effect"]["nothing_at_all"]
    # 12 heads: ceil(0.95 * 12) = 12, so head keep 0.95 prunes nothing and is flagged
    noop = sweep["head keep 0.95/layer"]
    assert noop["effect"]["nothing_at_all"] and noop["effect"]["did_nothing"] == ["head pruning"]
    assert noop["fidelity"] == dense["fidelity"]
    tokens = sweep["token keep 0.9/layer"]
    assert tokens["effect"]["tokens_alive"][-1] < 0.8 and tokens["cost"]["host_macs"] > 1.1
    msb = sweep["MSB planes only"]
    assert msb["cost"]["traffic"] == 1.5 and msb["cost"]["total_macs"] == 1  # 8 of 12 bits, same work
    (point,) = data["calibrated"]  # --quick calibrates for one target
    assert point["target"] == 0.99 and point["calibration"]["fidelity"]["mean_cos"] >= 0.992
    assert point["calibration"]["cost"]["traffic"] > 1 and point["test"]["setting"]["family"] == "calibrated"
    text = (tmp_path / "report.md").read_text()
    assert "## Calibrated operating points" in text and "**nothing at all**" in text
    assert "Largest Q/K/V traffic reduction on the test set" in text or "No calibrated point" in text
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _S:
    def __init__(self, traffic, mean_cos, kept=True):
        self.cost = type("C", (), {"traffic": traffic})
        self.fidelity = type("F", (), {"mean_cos": mean_cos})
        self.retrieval_kept = kept


def test_best_setting_needs_the_fidelity_target_and_retrieval():
    points = [_S(1.0, 0.9999), _S(3.0, 0.95), _S(1.5, 0.991), _S(1.4, 0.999), _S(2.0, 0.995, kept=False)]
    assert best_setting(points, 0.99) is points[2]
    assert best_setting(points, 0.99999) is None
