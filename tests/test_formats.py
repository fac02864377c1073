import dataclasses
import math
from decimal import Decimal, localcontext

import pytest
import torch

from spattn.config import PRESETS
from spattn.formats import SCALE_MULT_BITS, AttentionFormats, IntFormat, Overflow, Rounding, bits_for


def test_ranges():
    assert (IntFormat(8).min, IntFormat(8).max) == (-128, 127)
    assert (IntFormat(8, signed=False).min, IntFormat(8, signed=False).max) == (0, 255)


def test_wrap_and_saturate():
    fmt = IntFormat(4)
    values = torch.tensor([-9, -8, 7, 8, 23])
    assert fmt.wrap(values).tolist() == [7, -8, 7, -8, 7]
    assert fmt.saturate(values).tolist() == [-8, -8, 7, 7, 7]
    assert fmt.fit(values, Overflow.WRAP).tolist() == fmt.wrap(values).tolist()


def test_rounding_modes_on_ties():
    fmt = IntFormat(8, frac=1)
    reals = torch.tensor([0.25, 0.75, -0.25, -0.75])   # exactly half an LSB away from two codes
    assert fmt.quantize(reals, Rounding.FLOOR).tolist() == [0, 1, -1, -2]
    assert fmt.quantize(reals, Rounding.HALF_UP).tolist() == [1, 2, 0, -1]
    assert fmt.quantize(reals, Rounding.HALF_EVEN).tolist() == [0, 2, 0, -2]


def test_quantize_saturates_by_default():
    assert IntFormat(8, frac=4).quantize(torch.tensor([100.0, -100.0])).tolist() == [127, -128]


@pytest.mark.parametrize("bits, signed, frac, message", [
    (0, True, 0, "format width must be a positive integer, not 0"),
    (1, True, 0, "a signed format needs at least 2 bits, not 1"),
    (8, True, -1, "format fraction bits must be a non-negative integer, not -1"),
])
def test_bad_formats(bits, signed, frac, message):
    with pytest.raises(ValueError, match=message):
        IntFormat(bits, signed, frac)


def test_bits_for():
    assert [bits_for(v) for v in (0, 1, 2, 3, 4, 255, 256)] == [1, 1, 2, 2, 3, 8, 9]
    with pytest.raises(ValueError):
        bits_for(-1)


def test_value_keep_counts_never_exceed_the_ratio():
    from spattn.formats import VALUE_KEEP_FRAC, kept_count, value_keep_int
    assert value_keep_int(1.0) == 1 << VALUE_KEEP_FRAC
    for tenths in range(1, 11):
        ratio = tenths / 10
        for present in range(1, 1025):
            want = min(present, max(1, math.ceil(ratio * present - 1e-9)))
            assert kept_count(value_keep_int(ratio), present) == want, (ratio, present)
    # The smallest ratios keep one row; an empty row keeps none.
    assert kept_count(value_keep_int(1e-9), 50) == 1
    assert kept_count(1, 0) == 0


def test_recompute_threshold_and_row_bytes():
    from spattn.formats import IntFormat, plane_row_bytes, recompute_threshold_int
    prob = IntFormat(15, signed=False, frac=15)
    assert recompute_threshold_int(0.0, prob) == 0
    assert recompute_threshold_int(1.0, prob) == 1 << 15          # above every probability
    t = recompute_threshold_int(0.1, prob)
    assert (t - 1) / 2 ** 15 < 0.1 <= t / 2 ** 15
    assert plane_row_bytes(32, 8) == 32 and plane_row_bytes(16, 6) == 12 and plane_row_bytes(3, 3) == 2


def _constant_problems(cfg, fmt):
    """What is wrong with the exponent table and the score scaling of ``fmt`` for ``cfg``, against
    references computed here with 60-digit decimals (not the module's float code)."""
    problems = []
    frac, exp_frac = fmt.score.frac, fmt.exp_frac
    with localcontext(prec=60):
        if len(fmt.exp_lut) != 1 << frac:
            problems.append(f"exp_lut has {len(fmt.exp_lut)} entries, not 2**{frac}")
        if fmt.exp_lut[0] != 1 << exp_frac:
            problems.append(f"exp_lut[0] = {fmt.exp_lut[0]}, not 2**exp_frac = {1 << exp_frac}")
        for f, got in enumerate(fmt.exp_lut):
            exact = Decimal(2) ** exp_frac * Decimal(2) ** (Decimal(-f) / 2 ** frac)
            if got != int(exact.to_integral_value()) or abs(got - exact) > Decimal("0.5"):
                problems.append(f"exp_lut[{f}] = {got}, not the nearest integer to {exact:.6f}")
        # log2(e) / sqrt(head_dim), from an acc LSB (2**-2*act_frac) to a score LSB (2**-frac)
        factor = 1 / Decimal(2).ln() / Decimal(cfg.head_dim).sqrt() * Decimal(2) ** (frac - 2 * cfg.act_frac)
        mult, shift = fmt.scale_mult, fmt.scale_shift
        exact = factor * Decimal(2) ** shift
        error = abs(mult - exact) / exact
        if not error < Decimal(2) ** -(SCALE_MULT_BITS - 1):
            problems.append(f"scale_mult / 2**scale_shift = {mult} / 2**{shift} is {error:.2e} off")
        if abs(mult - exact) > Decimal("0.5"):
            problems.append(f"scale_mult = {mult} is not the nearest integer to {exact:.3f}")
        low, high = 1 << (SCALE_MULT_BITS - 1), 1 << SCALE_MULT_BITS
        if not low <= mult < high:
            problems.append(f"scale_mult = {mult} is not in {low}..{high - 1}")
    return problems


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_attention_constants_against_decimal_references(name):
    cfg = PRESETS[name]
    assert _constant_problems(cfg, AttentionFormats.of(cfg)) == []


def _lut_plus_one(fmt, f):
    lut = list(fmt.exp_lut)
    lut[f] += 1
    return dataclasses.replace(fmt, exp_lut=tuple(lut))


PERTURBATIONS = {
    "exp_lut[0]+1": lambda fmt: _lut_plus_one(fmt, 0),
    "exp_lut[1]+1": lambda fmt: _lut_plus_one(fmt, 1),
    "exp_lut[-1]+1": lambda fmt: _lut_plus_one(fmt, len(fmt.exp_lut) - 1),
    "scale_mult+1": lambda fmt: dataclasses.replace(fmt, scale_mult=fmt.scale_mult + 1),
    "scale_shift+1": lambda fmt: dataclasses.replace(fmt, scale_shift=fmt.scale_shift + 1),
    # the same ratio, one bit too wide
    "scale_mult*2": lambda fmt: dataclasses.replace(fmt, scale_mult=2 * fmt.scale_mult,
                                                    scale_shift=fmt.scale_shift + 1),
}


@pytest.mark.parametrize("perturbation", sorted(PERTURBATIONS))
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_constant_check_catches_small_errors(name, perturbation):
    cfg = PRESETS[name]
    assert _constant_problems(cfg, PERTURBATIONS[perturbation](AttentionFormats.of(cfg))) != []
