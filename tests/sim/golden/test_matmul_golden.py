"""The PE array's golden model: pruning, overflow rules, the tile counters and the run limits."""

import dataclasses

import pytest
import torch

from spattn.config import ConfigError, check_matmul_run, pe_buffer_depths, preset
from spattn.formats import PE_ACC_OVERFLOW, Overflow, dynatran_threshold_int, dynatran_zero
from spattn.sim.golden.arith import IntArith
from spattn.sim.golden.matmul import ideal_cycles, matmul_int, tile_stats

TINY = preset("tiny")


def test_dense_matches_float_matmul():
    gen = torch.Generator().manual_seed(5)
    a = TINY.act_format.random((9, 7), gen)
    b = TINY.act_format.random((7, 11), gen)
    got = matmul_int(a, b, 0, TINY)
    assert torch.equal(got, (a.double() @ b.double()).round().long())   # small: no overflow here
    assert PE_ACC_OVERFLOW is Overflow.WRAP


def test_threshold_zeroes_small_magnitudes_only():
    a = torch.tensor([[-5, -4, -3, 0, 3, 4, 5]])
    b = torch.arange(1, 8).reshape(7, 1)
    assert dynatran_zero(a, 4).tolist() == [[-5, -4, 0, 0, 0, 4, 5]]
    assert matmul_int(a, b, 4, TINY).item() == -5 - 8 + 24 + 35
    assert matmul_int(a, b, 0, TINY).item() == -5 - 8 - 9 + 15 + 24 + 35
    assert matmul_int(a, b, 6, TINY).item() == 0
    # The same rule as the attention golden model's DynaTran, with the real threshold converted.
    x = TINY.act_format.random((50,), torch.Generator().manual_seed(1))
    real = 1.3
    assert torch.equal(dynatran_zero(x, dynatran_threshold_int(real, TINY.act_format)),
                       IntArith(TINY).zero_small(x, real))


def test_overflow_rules_apply_to_the_exact_sum():
    k = TINY.max_tokens
    fmt = TINY.act_format
    a = torch.full((1, k), fmt.min)
    b = torch.full((k, 1), fmt.min)
    exact = k * fmt.min * fmt.min                 # 2**20, one past the 20-bit accumulator
    assert exact > TINY.acc_format.max
    assert matmul_int(a, b, 0, TINY, Overflow.WRAP).item() == exact - (1 << TINY.acc_bits)
    assert matmul_int(a, b, 0, TINY, Overflow.SATURATE).item() == TINY.acc_format.max
    # Saturation clamps the final sum, not the partial ones: +2**19 then -2**19 gives 0.
    a2 = torch.tensor([[fmt.min] * 32 + [fmt.min] * 32])
    b2 = torch.tensor([[fmt.min]] * 32 + [[fmt.max + 0]] * 31 + [[fmt.max]])
    want = 32 * fmt.min * fmt.min + 32 * fmt.min * fmt.max
    assert matmul_int(a2, b2, 0, TINY, Overflow.SATURATE).item() == want


def test_tile_stats():
    cfg = TINY                                   # 2 x 2 array
    a = torch.tensor([[1, 0, 0, 2, 0],
                      [0, 0, 0, 3, 0],
                      [0, 0, 0, 0, 0]])          # panels: rows 0-1, row 2 (+ a padding row)
    s = tile_stats(a, 3, 0, cfg, k_tile=1)       # n = 3: two column panels
    # panel 0: columns 1, 2, 4 zero; panel 1: all 5 zero.
    assert s.zero_tiles == 3 + 5 and s.skipped_tiles == 8 * 2
    assert s.macs == 2 * 2 * 3 and s.mac_cycles == 2 * 2
    s2 = tile_stats(a, 3, 0, cfg, k_tile=2)      # tiles: columns 0-1, 2-3, 4
    assert s2.zero_tiles == 1 + 3 and s2.macs == (2 + 2) * 2 * 3 and s2.mac_cycles == 4 * 2
    s3 = tile_stats(a, 3, 4, cfg, k_tile=1)      # the threshold prunes everything
    assert s3.zero_tiles == 10 and s3.macs == 0
    assert ideal_cycles(64, 32, 64, preset("default")) == 64 * 32 * 64 / 128


def test_run_limits_name_parameter_value_and_limit():
    a_depth, b_depth = pe_buffer_depths(TINY)
    assert (a_depth, b_depth) == (512, 512)
    check_matmul_run(TINY, 64, 16, 64, 255)
    with pytest.raises(ConfigError, match=r"m must be in 1\.\.max_tokens = 1\.\.64, not 0"):
        check_matmul_run(TINY, 0, 1, 1)
    with pytest.raises(ConfigError, match=r"k must be in 1\.\.max_tokens = 1\.\.64, not 65"):
        check_matmul_run(TINY, 1, 65, 1)
    with pytest.raises(ConfigError, match=r"m x k = 64 x 17 needs 576 rows of the A buffer, "
                                          r"more than its 512"):
        check_matmul_run(TINY, 64, 17, 1)
    # 60 x 17 fits the output-stationary layout (30 x 17 = 510 rows), not the weight-stationary one
    # (9 x 60 = 540): runs must fit both.
    with pytest.raises(ConfigError, match=r"m x k = 60 x 17 needs 540 rows of the A buffer"):
        check_matmul_run(TINY, 60, 17, 1)
    with pytest.raises(ConfigError, match=r"k x n = 17 x 64 needs 544 rows of the B buffer, "
                                          r"more than its 512"):
        check_matmul_run(TINY, 1, 17, 64)
    with pytest.raises(ConfigError, match=r"threshold must be in 0\.\.255, not 256"):
        check_matmul_run(TINY, 1, 1, 1, 256)
    with pytest.raises(ValueError, match="act format"):
        matmul_int([[128]], [[1]], 0, TINY)
    with pytest.raises(ValueError, match="m x k and k x n"):
        matmul_int([[1, 2]], [[1, 2]], 0, TINY)


def test_buffers_hold_the_attention_products():
    for name in ("tiny", "default", "minilm"):
        cfg = preset(name)
        t, d, r = cfg.max_tokens, cfg.head_dim, cfg.pe_rows
        check_matmul_run(cfg, t, d, t)               # Q·Kᵀ
        check_matmul_run(cfg, r, t, d)               # P·V for a block of pe_rows queries
    odd = dataclasses.replace(TINY, name="odd", max_tokens=10, head_dim=3, acc_bits=20, pe_rows=3)
    check_matmul_run(odd, 10, 3, 10)
    check_matmul_run(odd, 3, 10, 3)
    assert pe_buffer_depths(odd)[0] == max(4 * 3, 1 * 10, 4 * 3)
