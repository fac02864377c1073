"""The evaluation report: a quick run writes the table and the plot; the best-setting rule."""

from spattn.sim import eval as spattn_eval
from spattn.sim.report import best_setting


def test_quick_eval_writes_report(tmp_path):
    assert spattn_eval.main(["--quick", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    table = text.split("\n\n")[2]  # title, explanation, then the table of settings
    rows = [line for line in table.splitlines() if "---" not in line]
    assert len(rows) == 1 + 4  # header and the quick sweep's settings
    dense = rows[1].split("|")
    assert dense[1].strip() == "dense, integer path" and dense[2].strip() == "1.00x"
    assert float(dense[3]) > 0.999 and dense[5].strip() == "4/4"
    assert "| local value pruning | value keep 0.7 | 1.0" in text  # the per-family operating points
    assert "Best setting with mean cosine >= 0.99" in text and "SpAtten reports 10x" in text
    assert (tmp_path / "fidelity_vs_traffic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_setting_needs_the_fidelity_target():
    class S:
        def __init__(self, reduction, mean_cos):
            self.reduction, self.mean_cos = reduction, mean_cos

    points = [S(1.0, 0.9999), S(3.0, 0.95), S(1.5, 0.991), S(1.4, 0.999)]
    assert best_setting(points, 0.99) is points[2]
    assert best_setting(points, 0.99999) is None
