"""The integer cascade-pruning rule (:func:`spattn.sim.golden.pruning.select_survivors`, the pruning
controller's specification) against an independent plain-Python implementation: sorted lists and
integer arithmetic, no torch. Which positions survive is compared, not only how many."""

import random

import pytest
import torch

from spattn.config import preset
from spattn.formats import VALUE_KEEP_FRAC
from spattn.sim.golden.pruning import select_survivors, survivors


def reference(importance, keep, forced=None):
    """Keep ceil(keep * n / 2**16) (at least 1, at most n); ``forced`` first, then the highest
    importance, the lower position first among equals; positions ascending."""
    n = len(importance)
    count = min(n, max(1, -(-keep * n // (1 << VALUE_KEEP_FRAC))))
    order = sorted(range(n), key=lambda i: (i != forced, -importance[i], i))
    return sorted(order[:count])


@pytest.mark.parametrize("seed", range(20))
def test_random_importances_with_ties(seed):
    rng = random.Random(seed)
    for _ in range(50):
        n = rng.randint(1, 80)
        pool = [rng.randint(0, 1 << 30) for _ in range(rng.randint(1, 6))]
        importance = [rng.choice(pool) for _ in range(n)]
        keep = rng.choice([1, 1 << VALUE_KEEP_FRAC, rng.randint(1, 1 << VALUE_KEEP_FRAC)])
        forced = rng.choice([None, 0])
        got = select_survivors(torch.tensor(importance), keep, forced).tolist()
        assert got == reference(importance, keep, forced)


def test_integer_keep_count_rounds_like_the_hardware():
    """``survivors`` in integer mode floors the ratio to 16 fraction bits before the ceiling:
    0.5 of 7 keeps 4; a ratio just below 1/n of n keeps 1; 1.0 keeps everything."""
    imp = torch.arange(7)
    assert len(survivors(imp, 0.5, integer=True)) == 4
    assert len(survivors(torch.arange(300), 1 / 301, integer=True)) == 1
    assert survivors(imp, 1.0, integer=True).tolist() == list(range(7))


def test_cls_survives_even_with_the_lowest_importance():
    imp = torch.tensor([0, 5, 5, 9, 1])
    assert select_survivors(imp, 1, forced=0).tolist() == [0]
    assert select_survivors(imp, 1 << (VALUE_KEEP_FRAC - 1), forced=0).tolist() == [0, 1, 3]


def test_accumulator_widths_hold_the_worst_case():
    """The config's widths hold the largest sums the accumulators can see, with nothing to spare
    for a wrong formula: one bit less would not."""
    for name in ("tiny", "minilm", "default"):
        cfg = preset(name)
        prob_max = (1 << (cfg.score_bits - 1)) - 1
        token_worst = cfg.layers * cfg.heads * cfg.max_tokens * prob_max
        head_worst = cfg.layers * cfg.max_tokens * cfg.head_dim * (1 << (cfg.act_bits - 1))
        assert token_worst < 1 << cfg.token_importance_bits <= 2 * token_worst
        assert head_worst < 1 << cfg.head_importance_bits <= 2 * head_worst
        assert max(token_worst, head_worst) < 1 << (cfg.importance_bits - 1)
