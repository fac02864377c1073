"""Golden model of the top-k engine: which indices survive, in which order."""

import torch

from spattn.config import AccelConfig, check_topk_run
from spattn.formats import TOPK_TIE_BREAK

__all__ = ["topk_indices"]


def topk_indices(scores, k, cfg: AccelConfig | None = None):
    """Indices of the ``k`` largest integer ``scores``, in ascending index order.

    Ties at the k-th largest value go to the lower index (``TOPK_TIE_BREAK``), exactly as the
    top-k engine does. With ``cfg``, the run is checked against its limits (``n`` up to
    ``max_tokens``, ``0 <= k <= n``) and the scores against the score format; an impossible run
    raises :class:`spattn.config.ConfigError`.
    """
    assert TOPK_TIE_BREAK == "lower_index"
    scores = torch.as_tensor(scores, dtype=torch.int64).flatten()
    n = scores.numel()
    if cfg is not None:
        check_topk_run(cfg, n, k)
        if not cfg.score_format.contains(scores):
            raise ValueError(f"scores must lie in the {cfg.score_bits}-bit signed score format "
                             f"[{cfg.score_format.min}, {cfg.score_format.max}]")
    elif not 0 <= k <= n:
        raise ValueError(f"k must be in 0..n = 0..{n}, not {k!r}")
    # A stable descending sort keeps equal scores in index order, so the first k hold the lower
    # indices among the ties at the k-th value.
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return sorted(order.tolist())
