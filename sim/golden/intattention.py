"""Bit-exact integer attention core: Q·Kᵀ scores, integer softmax, P·V — the benches' oracle.

All functions take and return ``int64`` tensors of stored integers in the formats of
:class:`spattn.formats.AttentionFormats` (where each rounding, shift and division is specified),
batched over any leading dimensions (heads, rows). ``mask`` (bool, broadcastable to the scores,
True = key present) removes keys: they take no part in the row maximum or sum and get probability 0.
Every row must keep at least one key. :func:`float_probs` is the float counterpart of the same
computation on the dequantized Q and K, against which the integer path's error is measured.
"""

import math

import torch

from spattn.formats import AttentionFormats

__all__ = ["int_matmul", "scores_int", "softmax_int", "pv_int", "attention_int", "float_probs"]


def int_matmul(a, b):
    """Exact integer ``a @ b`` of ``int64`` tensors. When every partial sum is bounded below 2**53 it
    goes through a float64 matmul (exact for such integers in any summation order, and many times
    faster than torch's int64 matmul); otherwise through the int64 matmul."""
    if a.numel() and b.numel() and int(a.abs().max()) * int(b.abs().max()) * a.shape[-1] < 1 << 53:
        return (a.to(torch.float64) @ b.to(torch.float64)).to(torch.int64)
    return a @ b


def scores_int(q, k, fmt: AttentionFormats):
    """``(.., n, d) x (.., m, d) -> (.., n, m)`` scores: exact dot products, scaled, rounded, saturated."""
    acc = int_matmul(q, k.transpose(-1, -2))
    shift = fmt.scale_shift
    return fmt.score.saturate((acc * fmt.scale_mult + (1 << (shift - 1))) >> shift)


def softmax_int(scores, fmt: AttentionFormats, mask=None):
    """Probabilities in ``fmt.prob`` from scores in ``fmt.score``, along the last dimension."""
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    lowest = torch.full_like(scores, fmt.score.min)
    row_max = torch.where(mask, scores, lowest).amax(dim=-1, keepdim=True)
    x = row_max - scores
    frac_bits = fmt.score.frac
    lut = torch.tensor(fmt.exp_lut, dtype=torch.int64)
    # 2**-u by a shift that rounds half up: one extra bit below the table value, then drop it
    exps = (((lut[x & ((1 << frac_bits) - 1)] << 1) >> torch.clamp(x >> frac_bits, max=62)) + 1) >> 1
    exps = torch.where(mask, exps, torch.zeros_like(exps))
    total = exps.sum(dim=-1, keepdim=True)
    recip = ((1 << (fmt.exp_frac + fmt.prob.frac)) + (total >> 1)) // total
    probs = (exps * recip + (1 << (fmt.exp_frac - 1))) >> fmt.exp_frac
    return torch.clamp(probs, max=fmt.prob.max)


def pv_int(probs, v, fmt: AttentionFormats):
    """``(.., n, m) x (.., m, d) -> (.., n, d)`` outputs in ``fmt.act``: exact sum, rounded, saturated."""
    shift = fmt.prob.frac
    return fmt.act.saturate((int_matmul(probs, v) + (1 << (shift - 1))) >> shift)


def attention_int(q, k, v, fmt: AttentionFormats, mask=None):
    """Scores, softmax and P·V in one call; returns ``(probs, outputs)``."""
    probs = softmax_int(scores_int(q, k, fmt), fmt, mask)
    return probs, pv_int(probs, v, fmt)


def float_probs(q, k, fmt: AttentionFormats, mask=None):
    """Float64 ``softmax(Q Kᵀ / sqrt(d))`` of the dequantized integers ``q``, ``k`` (same masking)."""
    qr, kr = fmt.act.to_real(q), fmt.act.to_real(k)
    logits = qr @ kr.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask, -math.inf)
    return torch.softmax(logits, dim=-1)
