"""``spattn bench softmax``: the integer softmax's error table (a small run) and its helpers."""

import json

import torch
from spattn.sim.bench import bench_softmax
from spattn.sim.softmax_error import row_errors, shape_heads

from spattn.config import preset


def test_shape_heads():
    t = torch.arange(12 * 5 * 32, dtype=torch.float64).reshape(12, 5, 32)
    tiny = shape_heads(preset("tiny"), t, 32)
    assert torch.equal(tiny, t[:2, :, :16])
    joined = shape_heads(preset("default"), t, 32)  # heads 2h and 2h+1 side by side: 6 heads of 64
    assert joined.shape == (6, 5, 64)
    assert torch.equal(joined[1, 3], torch.cat([t[2, 3], t[3, 3]]))
    # so a joined head's dot products are the sums of the two heads' dot products
    assert torch.equal(joined[2] @ joined[2].T, t[4] @ t[4].T + t[5] @ t[5].T)


def test_one_key_rows_are_exact():
    cfg = preset("minilm")
    q = torch.randint(-100, 100, (3, 7, cfg.head_dim), generator=torch.Generator().manual_seed(1))
    abs_max, abs_sum, sum_err, argmax, softmax_only = row_errors(cfg, q, q[:, :1])
    assert abs_max.shape == (21,) and not argmax.any()
    # a single key gets probability prob.max = 1 - 1 LSB (the format has no 1.0)
    assert torch.allclose(abs_max, torch.full((21,), 2.0 ** -15, dtype=torch.float64))
    assert torch.equal(abs_max, softmax_only)


def test_bench_writes_the_table(tmp_path, capsys):
    rows = bench_softmax(tmp_path, presets=("tiny", "minilm"), lengths=(16,), sentences=(0, 41), layers=(0,))
    keys = [(r["preset"], r["source"], r["n"]) for r in rows]
    assert keys == [("tiny", "random", 16), ("tiny", "random", 64), ("tiny", "minilm", 12),
                    ("tiny", "minilm", 44), ("minilm", "random", 16), ("minilm", "random", 256),
                    ("minilm", "minilm", 12), ("minilm", "minilm", 44)]
    for r in rows:
        lsbs = r["max_abs"] / r["prob_lsb"]
        assert 0 < r["mean_abs"] < r["max_abs"] and 1 < lsbs < 40  # the score rounding dominates
        assert r["max_abs_softmax_only"] / r["prob_lsb"] < 10 and 0 <= r["argmax_differs"] < 0.05
    report = json.loads((tmp_path / "softmax_error.json").read_text())
    assert report["rows"] == rows
    table = (tmp_path / "softmax_error.md").read_text()
    assert table.count("\n| tiny |") == 4 and "| minilm | 2^-15 | minilm | 44 |" in table
    assert table in capsys.readouterr().out
