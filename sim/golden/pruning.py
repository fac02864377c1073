"""Selection rules of the pruning controller: keep counts, top-k with the shared tie-break, schedules.

Ties follow :data:`spattn.formats.TOPK_TIE_BREAK` (among equal scores the lower index wins), as
the top-k engine does, so the golden model and the gateware keep the same tokens and heads.

Cascade pruning (:func:`survivors`) has two arithmetics. The integer one is the specification of
the pruning controller (:class:`spattn.hw.pruning.PruningController`): importances are integer sums
(probabilities in prob LSBs, output magnitudes in act LSBs), the keep ratio is the fixed-point
integer :func:`spattn.formats.value_keep_int` and the count :func:`spattn.formats.kept_count`
(``ceil(w * alive / 2**16)``); [CLS] is kept by ranking it above every importance. The float one
(``keep_count``) is the algorithm as published, for comparison.
"""

import math

import torch

from spattn.formats import TOPK_TIE_BREAK, kept_count, value_keep_int

__all__ = ["schedule_at", "keep_count", "top_indices", "survivors", "select_survivors", "top_per_row", "top_count_per_row",
           "kept_counts"]

assert TOPK_TIE_BREAK == "lower_index"


def schedule_at(schedule: tuple, layer: int) -> float:
    """The value of a per-layer schedule (one value per layer, or one for all layers) at ``layer``."""
    return schedule[0] if len(schedule) == 1 else schedule[layer]


def keep_count(ratio: float, n: int) -> int:
    """How many of ``n`` survive a keep ratio: ``ceil(ratio * n)``, at least 1 when ``n > 0``."""
    return min(n, max(1, math.ceil(ratio * n - 1e-9))) if n else 0


def top_indices(scores, k: int, forced=None):
    """Positions of the ``k`` largest of a 1-D ``scores`` in ascending order; ``forced`` (a position)
    is always kept, taking one of the ``k`` places."""
    order = torch.sort(scores, descending=True, stable=True).indices
    if forced is not None:
        order = torch.cat([order.new_tensor([forced]), order[order != forced]])
    return torch.sort(order[:k]).values


def survivors(importance, ratio: float, integer: bool, forced=None):
    """Positions (ascending) of the entries of the 1-D ``importance`` that survive a keep ``ratio``.

    ``integer``: ``importance`` holds the controller's integer accumulators and the count is
    ``kept_count(value_keep_int(ratio), n)``, as the hardware computes it; else ``keep_count``.
    ``forced`` (a position, [CLS]) always survives, taking one of the places.
    """
    if integer:
        return select_survivors(importance, value_keep_int(ratio), forced)
    return top_indices(importance, keep_count(ratio, len(importance)), forced)


def select_survivors(importance, keep: int, forced=None):
    """The controller's selection: the ``kept_count(keep, n)`` entries of highest integer
    ``importance`` (``keep``: fixed-point ratio with ``VALUE_KEEP_FRAC`` fraction bits, ``1 ..
    2**VALUE_KEEP_FRAC``), ``forced`` among them, ties to the lower index; ascending positions."""
    return top_indices(importance, kept_count(keep, len(importance)), forced)


def top_per_row(scores, ratio: float, present):
    """Bool mask, per row of ``scores`` (``(.., m)``), of the ``keep_count(ratio, c)`` largest among
    the ``c`` entries where ``present`` is True; ties go to the lower index."""
    present_count = present.sum(dim=-1)
    counts = torch.clamp(torch.ceil(ratio * present_count - 1e-9), min=1).minimum(present_count)
    return top_count_per_row(scores, counts, present)


def top_count_per_row(scores, counts, present):
    """Bool mask, per row of ``scores`` (``(.., m)``), of the ``counts`` (``(..)``, integers) largest
    among the entries where ``present`` is True; ties go to the lower index."""
    floor = -torch.inf if scores.is_floating_point() else torch.iinfo(scores.dtype).min
    lowest = torch.full_like(scores, floor)
    order = torch.sort(torch.where(present, scores, lowest), dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(scores.shape[-1]).expand_as(order))
    return (rank < counts.unsqueeze(-1)) & present


def kept_counts(value_keep: int, present_count):
    """:func:`spattn.formats.kept_count` of the integer ratio ``value_keep`` for every entry of the
    integer tensor ``present_count``: V rows each query keeps (0 for a row with no present key)."""
    top = int(present_count.max()) if present_count.numel() else 0
    table = torch.tensor([kept_count(value_keep, c) for c in range(top + 1)])
    return table[present_count]
