"""The bit-exact integer attention path: hand-checked values, invariants, and its error against float.

Measured error bounds (asserted below) of the integer softmax, in probability LSBs (2**-15 for the
``minilm``/``default`` presets, 2**-11 for ``tiny``):
* against the exact softmax of the same integer scores: <= 1.5 LSB on random 64-key rows, <= 8 LSB
  on real MiniLM rows of 172 tokens (measured 5.6: the roundings of the many small exponent terms
  add up in the sum, so the error grows with the row length);
* against float64 ``softmax(Q Kᵀ / sqrt(d))`` of the same quantized Q, K (this adds the score
  rounding, 2**-8 in log2 units): <= 1e-3 absolute for minilm, <= 1e-2 for tiny.
"""

import math

import pytest
import torch
from spattn.sim.golden.bert import embed_tokens, finish_layer, float_attention, project_qkv
from spattn.sim.golden.corpus import PASSAGES
from spattn.sim.golden.intattention import (
    attention_int,
    float_probs,
    int_matmul,
    pv_int,
    scores_int,
    softmax_int,
)

from spattn.config import preset
from spattn.formats import AttentionFormats, join_planes, split_planes

MINILM = AttentionFormats.of(preset("minilm"))
TINY = AttentionFormats.of(preset("tiny"))


def _exact_softmax(scores, fmt):
    """Float64 softmax of integer scores read as base-2 logits (what the integer softmax approximates)."""
    return torch.softmax(fmt.score.to_real(scores) * math.log(2), dim=-1)


def _lsb_error(probs, reference, fmt):
    return float((fmt.prob.to_real(probs) - reference).abs().max()) * (1 << fmt.prob.frac)


def test_formats_of_minilm():
    f = MINILM
    assert (f.score.bits, f.score.frac, f.prob.bits, f.prob.frac, f.exp_frac) == (16, 8, 15, 15, 16)
    assert 1 << 15 <= f.scale_mult < 1 << 16  # the multiplier uses its full width
    factor = math.log2(math.e) / math.sqrt(32) * 2.0 ** (8 - 2 * preset("minilm").act_frac)
    assert abs(f.scale_mult / 2 ** f.scale_shift - factor) < 2.0 ** -f.scale_shift
    assert len(f.exp_lut) == 256 and f.exp_lut[0] == 1 << 16
    assert all(a > b for a, b in zip(f.exp_lut, f.exp_lut[1:], strict=False))
    assert f.prob.max < 1 << (preset("minilm").score_bits - 1)  # fits the top-k engine's signed scores


def test_planes_round_trip():
    cfg = preset("minilm")
    values = torch.arange(cfg.act_format.min, cfg.act_format.max + 1)
    msb, lsb = split_planes(values, cfg.act_lsb_bits)
    assert torch.equal(join_planes(msb, lsb, cfg.act_lsb_bits), values)
    assert int(lsb.min()) == 0 and int(lsb.max()) == (1 << cfg.act_lsb_bits) - 1
    half = 1 << (cfg.act_msb_bits - 1)
    assert int(msb.min()) == -half and int(msb.max()) == half - 1
    assert split_planes(torch.tensor([-1]), 4) == (torch.tensor([-1]), torch.tensor([15]))


def test_hand_checked_row():
    one = 1 << MINILM.act.frac
    q = torch.tensor([[one] + [0] * 31])
    k = torch.tensor([[one] + [0] * 31, [one] + [0] * 31, [0] * 32])
    scores = scores_int(q, k, MINILM)
    # 1.0 * log2(e) / sqrt(32) = 0.2550 in log2 units, times 2**8 = 65.29 -> 65
    assert scores.tolist() == [[65, 65, 0]]
    # exponents: 2**16, 2**16 and the table entry 65 (no shift): round(2**16 * 2**(-65/256)) = 54960
    assert MINILM.exp_lut[65] == 54960
    # sum 186032; reciprocal floor((2**31 + 93016) / 186032) = 11544; p = (e * r + 2**15) >> 16
    probs = softmax_int(scores, MINILM)
    assert probs.tolist() == [[11544, 11544, 9681]]
    v = torch.tensor([[one] * 32, [-one] * 32, [2 * one] * 32])
    # P·V: (11544 - 11544 + 2 * 9681) * 256 = 4956672; (4956672 + 2**14) >> 15 = 151 (0.59 in act units)
    assert pv_int(probs, v, MINILM).tolist() == [[151] * 32]


def test_masked_keys_get_zero_and_ties_split_evenly():
    scores = torch.tensor([[100, 100, 3000, -5]])
    mask = torch.tensor([[True, True, False, True]])
    probs = softmax_int(scores, MINILM, mask)
    assert probs[0, 2] == 0 and probs[0, 0] == probs[0, 1]
    equal = softmax_int(torch.tensor([[7, 7]]), MINILM)
    assert equal.tolist() == [[1 << 14, 1 << 14]]  # exactly one half each
    assert softmax_int(torch.tensor([[5]]), MINILM).tolist() == [[MINILM.prob.max]]  # 1.0 saturates


def test_int_matmul_is_exact_on_both_paths():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-2**11, 2**11, (3, 40, 32), generator=g)
    b = torch.randint(-2**11, 2**11, (3, 32, 40), generator=g)
    assert torch.equal(int_matmul(a, b), a @ b)
    big = a << 20  # partial sums beyond 2**53: the int64 path
    assert torch.equal(int_matmul(big, b), big @ b)


@pytest.mark.parametrize("fmt, name, scale, bound_lsb, bound_abs", [
    (MINILM, "minilm", 0.05, 1.5, 1e-3), (MINILM, "minilm", 0.2, 1.5, 1e-3),
    (TINY, "tiny", 0.05, 1.5, 1e-2), (TINY, "tiny", 0.2, 1.5, 1e-2),
])
def test_error_on_random_rows(fmt, name, scale, bound_lsb, bound_abs):
    cfg = preset(name)
    g = torch.Generator().manual_seed(7)
    q, k = (fmt.act.saturate(torch.round(torch.randn(cfg.heads, 64, cfg.head_dim, generator=g) / scale * (
        2 ** fmt.act.frac / 64))) for _ in range(2))
    scores = scores_int(q, k, fmt)
    probs = softmax_int(scores, fmt)
    assert _lsb_error(probs, _exact_softmax(scores, fmt), fmt) <= bound_lsb
    assert float((fmt.prob.to_real(probs) - float_probs(q, k, fmt)).abs().max()) <= bound_abs
    # the row sum stays within a few LSB of 1.0, and the argmax is kept
    assert int((probs.sum(-1) - (1 << fmt.prob.frac)).abs().max()) <= q.shape[-2]
    assert torch.equal(probs.argmax(-1), scores.argmax(-1))


def test_error_on_real_minilm_rows(minilm):
    cfg = preset("minilm")
    ids = minilm.encode(PASSAGES[4])  # 172 tokens
    x = embed_tokens(minilm, ids)
    for layer in range(3):
        q, k, v = project_qkv(minilm, layer, x)
        qi, ki, vi = (MINILM.act.quantize(t) for t in (q, k, v))
        probs, out = attention_int(qi, ki, vi, MINILM)
        scores = scores_int(qi, ki, MINILM)
        assert _lsb_error(probs, _exact_softmax(scores, MINILM), MINILM) <= 8
        assert float((MINILM.prob.to_real(probs) - float_probs(qi, ki, MINILM)).abs().max()) <= 1e-3
        # P·V against float attention on the same quantized tensors: within a few act LSBs (the
        # quantization itself saturates a few layer-0 values at +-8: not this test's subject)
        real = [MINILM.act.to_real(t).to(torch.float32) for t in (qi, ki, vi)]
        error = float((MINILM.act.to_real(out) - float_attention(*real)).abs().max())
        assert error < 8 * 2.0 ** -cfg.act_frac
        x = finish_layer(minilm, layer, x, float_attention(q, k, v))
