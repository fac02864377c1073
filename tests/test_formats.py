import math

import pytest
import torch

from spattn.formats import IntFormat, Overflow, Rounding, bits_for


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
