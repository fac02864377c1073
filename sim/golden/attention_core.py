"""Executable specification of the attention core (:class:`spattn.hw.attention.AttentionCore`).

:func:`attention_head` is what the RTL core must produce for one head, bit for bit: the final
probabilities, the P·V outputs and their L1 magnitudes, which rows were computed at full precision,
and the plane rows fetched from memory. Per query row ``i`` over the ``n`` tokens:

1. Present keys: ``j <= i`` with ``causal``, and ``mask[i][j]`` with a static mask.
2. DynaTran: every Q, K, V value as the PE array sees it (the MSB-only value in the MSB pass, the
   full value in the full-precision pass) becomes 0 when ``|x| < dynatran`` (act LSBs; 0 prunes
   nothing): :func:`spattn.formats.dynatran_zero` on each of the two, since zeroing a full value
   does not zero its MSB-only value alike. Values are zeroed on their way into the PE array, so the
   fetch rules of step 6 do not change.
3. Progressive quantization: probabilities from the MSB planes alone (``x`` with its LSB plane
   zeroed); a row whose maximum probability is below ``threshold`` (prob LSBs) is computed again
   from both planes and is *full precision*. Without it, every row is full precision.
4. Local value pruning: the row keeps the V rows of its ``kept_count(value_keep, present)`` most
   probable present keys (ties to the lower key); the others get probability 0 in P·V only (the
   reported probabilities are not pruned, nor renormalised).
5. P·V with both planes of V for full-precision rows, with the MSB plane only for the others.
6. Fetched plane rows (each at most once per head): Q MSB of every row, Q LSB of full-precision
   rows; K MSB of keys some row has present, K LSB of keys some full-precision row has present;
   V MSB of V rows some row keeps, V LSB of V rows some full-precision row keeps.

Steps 3-6 are :func:`attend` and :func:`fetched_rows`, which the whole-model golden model
(:mod:`.sparse`) runs batched over heads, in either arithmetic of :mod:`.arith`; it does step 2 with
``IntArith.zero_small``, the same rule with a real threshold.
"""

from dataclasses import dataclass

import torch

from spattn.config import ConfigError
from spattn.formats import VALUE_KEEP_FRAC, AttentionFormats, dynatran_zero, plane_row_bytes

from .arith import IntArith
from .pruning import kept_counts, top_count_per_row

__all__ = ["HeadResult", "present_keys", "attend", "fetched_rows", "attention_head"]


@dataclass(frozen=True)
class HeadResult:
    """One head's results, as the core streams and counts them."""
    probs: torch.Tensor           # (n, n) int64 final probabilities (fmt.prob), 0 for absent keys
    out: torch.Tensor             # (n, d) int64 P·V outputs, fmt.act
    magnitude: torch.Tensor       # (n,) int64 L1 magnitude of each output row
    full_precision: torch.Tensor  # (n,) bool: the row's probs and out come from both planes
    kept: torch.Tensor            # (n, n) bool: V rows each query uses
    fetched: dict                 # {(tensor, plane): rows ascending}; "q"/"k"/"v", "msb"/"lsb"
    bytes_fetched: int
    rows_recomputed: int          # rows computed a second time (0 without progressive quantization)


def present_keys(n, causal=False, mask=None):
    """``(n, n)`` bool: key ``j`` is present for query ``i``; ``mask`` may be larger (its
    ``[:n, :n]`` is used)."""
    present = torch.ones(n, n, dtype=torch.bool)
    if causal:
        present = torch.tril(present)
    if mask is not None:
        present = present & torch.as_tensor(mask, dtype=torch.bool)[:n, :n]
    return present


def attend(arith, q, k, v, mask=None, threshold=None, value_keep=1 << VALUE_KEEP_FRAC):
    """Steps 3-5 over any leading (head) dimensions. ``q``, ``k``, ``v``: ``(msb_only, full)`` pairs
    of ``(.., n, d)`` tensors of ``arith``; ``mask``: bool ``(.., n, n)`` present keys (None: all);
    ``threshold``: None (no progressive quantization) or in ``arith``'s probability units.
    Returns ``(probs, out, full_precision, kept)``."""
    full = arith.probs(q[1], k[1], mask)
    if threshold is None:
        probs, full_precision = full, torch.ones(full.shape[:-1], dtype=torch.bool)
    else:
        low = arith.probs(q[0], k[0], mask)
        full_precision = low.amax(dim=-1) < threshold
        probs = torch.where(full_precision.unsqueeze(-1), full, low)
    present = torch.ones_like(probs, dtype=torch.bool) if mask is None else mask
    present_count = present.sum(dim=-1)
    counts = kept_counts(value_keep, present_count)
    if torch.equal(counts, present_count):
        kept, probs_kept = present, probs
    else:
        kept = top_count_per_row(probs, counts, present)
        probs_kept = torch.where(kept, probs, torch.zeros_like(probs))
    out = arith.pv(probs_kept, v[1])
    if threshold is not None:
        out = torch.where(full_precision.unsqueeze(-1), out, arith.pv(probs_kept, v[0]))
    return probs, out, full_precision, kept


def fetched_rows(present, kept, full_precision):
    """Step 6 over any leading (head) dimensions: ``{(tensor, plane): bool (.., n)}`` of the rows
    fetched, from the present keys, the kept V rows (``(.., n, n)``) and the full-precision rows."""
    fp = full_precision.unsqueeze(-1)
    return {("q", "msb"): torch.ones_like(full_precision), ("q", "lsb"): full_precision,
            ("k", "msb"): present.any(dim=-2), ("k", "lsb"): (present & fp).any(dim=-2),
            ("v", "msb"): kept.any(dim=-2), ("v", "lsb"): (kept & fp).any(dim=-2)}


def _check(cfg, fmt, q, k, v, threshold, value_keep, dynatran):
    n = q.shape[0] if q.dim() == 2 else -1
    if not 1 <= n <= cfg.max_tokens:
        raise ConfigError(f"n must be in 1..max_tokens = 1..{cfg.max_tokens}, not {n}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if tuple(t.shape) != (n, cfg.head_dim):
            raise ValueError(f"{name} must have shape (n, head_dim) = ({n}, {cfg.head_dim}), "
                             f"not {tuple(t.shape)}")
        if not fmt.act.contains(t):
            raise ValueError(f"{name} must hold stored integers of the act format "
                             f"({fmt.act.min}..{fmt.act.max})")
    if not 0 <= threshold <= 1 << fmt.prob.bits:
        raise ConfigError(f"threshold must be in 0..2**prob.bits = 0..{1 << fmt.prob.bits}, "
                          f"not {threshold}")
    if not 0 <= value_keep <= 1 << VALUE_KEEP_FRAC:
        raise ConfigError(f"value_keep must be in 0..2**VALUE_KEEP_FRAC = 0..{1 << VALUE_KEEP_FRAC}, "
                          f"not {value_keep}")
    if not 0 <= dynatran <= (1 << cfg.act_bits) - 1:
        raise ConfigError(f"dynatran must be in 0..2**act_bits - 1 = 0..{(1 << cfg.act_bits) - 1}, "
                          f"not {dynatran}")


def attention_head(cfg, q, k, v, *, causal=False, mask=None, progressive=True, threshold=0,
                   value_keep=1 << VALUE_KEEP_FRAC, dynatran=0) -> HeadResult:
    """One head of the core over ``n`` tokens. ``q``, ``k``, ``v``: ``(n, head_dim)`` int64 stored
    integers of ``AttentionFormats.of(cfg).act``; ``threshold``: prob LSBs (``2**prob.bits``
    recomputes every row); ``value_keep``: integer ratio (:func:`spattn.formats.value_keep_int`);
    ``dynatran``: act LSBs in ``0..2**act_bits - 1`` (:func:`spattn.formats.dynatran_threshold_int`):
    the MSB-only and the full values with ``|x| < dynatran`` become 0, each on its own, after the
    fetch (0 prunes nothing, ``2**(act_bits - 1) + 1`` everything)."""
    fmt = AttentionFormats.of(cfg)
    q, k, v = (torch.as_tensor(t, dtype=torch.int64) for t in (q, k, v))
    _check(cfg, fmt, q, k, v, threshold, value_keep, dynatran)
    n = q.shape[0]
    present = present_keys(n, causal, mask)
    if not present.any(dim=-1).all():
        raise ValueError(f"query row {int((~present.any(dim=-1)).nonzero()[0])} has no present key")
    arith = IntArith(cfg)
    pairs = [(dynatran_zero(arith.msb_only(t), dynatran), dynatran_zero(t, dynatran)) for t in (q, k, v)]
    probs, out, full_precision, kept = attend(arith, *pairs, present, threshold if progressive else None,
                                              value_keep)
    rows = fetched_rows(present, kept, full_precision)
    fetched = {key: tuple(rows[key].nonzero().flatten().tolist()) for key in rows}
    plane_bits = {"msb": cfg.act_msb_bits, "lsb": cfg.act_lsb_bits}
    return HeadResult(
        probs=probs, out=out, magnitude=out.abs().sum(dim=-1), full_precision=full_precision,
        kept=kept, fetched=fetched,
        bytes_fetched=sum(len(r) * plane_row_bytes(cfg.head_dim, plane_bits[plane])
                          for (_, plane), r in fetched.items()),
        rows_recomputed=int(full_precision.sum()) if progressive else 0)
