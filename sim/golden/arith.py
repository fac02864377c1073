"""The two arithmetics the sparse golden model runs its attention core in.

:class:`IntArith` is the bit-exact integer path of the hardware (:mod:`.intattention`, formats from
:class:`spattn.formats.AttentionFormats`); :class:`FloatArith` is its float counterpart, with no
quantization except the MSB truncation that progressive quantization asks for. Both offer the same
methods on ``(heads, tokens, head_dim)`` tensors, so the algorithm is written once.
"""

import math

import torch

from spattn.formats import (
    AttentionFormats,
    dynatran_threshold_int,
    dynatran_zero,
    join_planes,
    recompute_threshold_int,
    split_planes,
)

from .intattention import pv_int, scores_int, softmax_int

__all__ = ["IntArith", "FloatArith", "arith_for"]


class IntArith:
    """Q, K, V quantized to the act format; integer scores, softmax and P·V."""

    def __init__(self, cfg):
        self.fmt = AttentionFormats.of(cfg)
        self.lsb_bits = cfg.act_lsb_bits

    def planes(self, x):
        """``(msb_only, full)`` stored integers of real values ``x``."""
        full = self.fmt.act.quantize(x)
        return self.msb_only(full), full

    def msb_only(self, full):
        """Stored integers with their LSB plane zeroed: what the MSB plane alone gives."""
        return join_planes(split_planes(full, self.lsb_bits)[0], 0, self.lsb_bits)

    def zero_small(self, x, threshold: float):
        """DynaTran: values with ``|x| < threshold`` (real units) become 0; the attention core's rule
        (:func:`spattn.formats.dynatran_zero`) with the threshold in act LSBs."""
        return dynatran_zero(x, dynatran_threshold_int(threshold, self.fmt.act))

    def probs(self, q, k, mask):
        return softmax_int(scores_int(q, k, self.fmt), self.fmt, mask)

    def pv(self, probs, v):
        return pv_int(probs, v, self.fmt)

    def prob_real(self, probs):
        return self.fmt.prob.to_real(probs)

    def prob_threshold(self, threshold: float):
        """A real recompute threshold in this arithmetic's probability units (prob LSBs)."""
        return recompute_threshold_int(threshold, self.fmt.prob)

    def out_real(self, out):
        return self.fmt.act.to_real(out).to(torch.float32)


class FloatArith:
    """Float32 attention on the unquantized Q, K, V (the dense model's own arithmetic)."""

    def __init__(self, cfg):
        self.step = 2.0 ** (cfg.act_lsb_bits - cfg.act_frac)

    def planes(self, x):
        """``(msb_only, full)``: ``x`` floored to the MSB plane's step, and ``x`` itself."""
        return torch.floor(x / self.step) * self.step, x

    def zero_small(self, x, threshold: float):
        return torch.where(x.abs() < threshold, torch.zeros_like(x), x)

    def probs(self, q, k, mask):
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            logits = logits.masked_fill(~mask, -math.inf)
        return torch.softmax(logits, dim=-1)

    def pv(self, probs, v):
        return probs @ v

    def prob_real(self, probs):
        return probs

    def prob_threshold(self, threshold: float):
        return threshold

    def out_real(self, out):
        return out


def arith_for(name: str, cfg):
    """``"int"`` or ``"float"``."""
    try:
        return {"int": IntArith, "float": FloatArith}[name](cfg)
    except KeyError:
        raise ValueError(f"arithmetic must be 'int' or 'float', not {name!r}") from None
