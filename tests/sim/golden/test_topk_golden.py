import pytest
import torch

from spattn.config import ConfigError, preset
from spattn.sim.golden.topk import topk_indices


def test_matches_torch_topk_as_a_set_on_random_data_with_ties():
    gen = torch.Generator().manual_seed(7)
    for _ in range(300):
        n = int(torch.randint(1, 200, (1,), generator=gen))
        k = int(torch.randint(0, n + 1, (1,), generator=gen))
        high = int(torch.randint(1, 40, (1,), generator=gen))    # small ranges: many ties
        scores = torch.randint(-high, high, (n,), generator=gen)
        got = topk_indices(scores, k)
        assert got == sorted(got) and len(set(got)) == k
        reference = torch.topk(scores, k).values
        assert sorted(scores[got].tolist()) == sorted(reference.tolist())


def test_ties_at_the_kth_value_go_to_the_lower_index():
    assert topk_indices([5, 7, 5, 5, 7, 1], 3) == [0, 1, 4]
    assert topk_indices([2, 2, 2, 2], 2) == [0, 1]
    assert topk_indices([2, 2, 2, 2], 0) == []
    assert topk_indices([2, 2, 2, 2], 4) == [0, 1, 2, 3]


def test_extremes_and_length_one():
    cfg = preset("tiny")
    fmt = cfg.score_format
    assert topk_indices([fmt.min, fmt.max, fmt.min], 1, cfg) == [1]
    assert topk_indices([fmt.min], 1, cfg) == [0]
    assert topk_indices([fmt.min], 0, cfg) == []


def test_refuses_impossible_runs():
    cfg = preset("tiny")
    with pytest.raises(ConfigError, match=r"k must be in 0..n = 0..3, not 4"):
        topk_indices([1, 2, 3], 4, cfg)
    with pytest.raises(ConfigError, match=r"n must be in 1..max_tokens = 1..64, not 65"):
        topk_indices([0] * 65, 1, cfg)
    with pytest.raises(ValueError, match="12-bit signed score format"):
        topk_indices([4096], 1, cfg)
