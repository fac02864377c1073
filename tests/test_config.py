import dataclasses

import pytest

from spattn.config import BOARDS, PRESETS, AccelConfig, ConfigError, check_topk_run, preset


def make(**changes):
    return dataclasses.replace(preset("default"), **changes)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_round_trip(name):
    cfg = preset(name)
    assert AccelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.estimated_dsps() <= BOARDS[cfg.board].dsps
    assert cfg.estimated_brams() <= BOARDS[cfg.board].brams


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match=r"preset must be one of \['default', 'minilm', 'tiny'\], not 'huge'"):
        preset("huge")


@pytest.mark.parametrize("field", ["max_tokens", "heads", "head_dim", "act_bits", "acc_bits", "score_bits",
                                   "pe_rows", "pe_cols", "topk_comparators", "topk_stream_lanes"])
@pytest.mark.parametrize("value", [0, -3, 2.5])
def test_sizes_must_be_positive_integers(field, value):
    with pytest.raises(ConfigError, match=rf"{field} must be a positive integer, not {value!r}"):
        make(**{field: value})


@pytest.mark.parametrize("changes, message", [
    (dict(board="de10"), r"board must be one of \['icebreaker', 'ulx3s-85f'\], not 'de10'"),
    (dict(clock_mhz=0), r"clock_mhz must be a positive number, not 0"),
    (dict(link_baud=0), r"link_baud must be a positive integer, not 0"),
    (dict(link_baud=10_000_000), r"link_baud must be at most clock_mhz / 4 = 6250000 baud, not 10000000"),
    (dict(link_baud=3_000_000), r"link_baud 3000000 is 4.0% off a whole number of cycles at clock_mhz = 25.0 "
                                r"\(limit 2%\)"),
    (dict(act_msb_bits=12), r"act_msb_bits must be in 1..act_bits-1 = 1..11, not 12"),
    (dict(act_frac=12), r"act_frac must be below act_bits = 12, not 12"),
    (dict(acc_bits=29), r"acc_bits must be at least 30 to accumulate 64 products of 12-bit values, not 29"),
    (dict(score_bits=33), r"score_bits must be in 2..32, not 33"),
    (dict(topk_comparators=33, topk_stream_lanes=33),
     r"topk_comparators must be in 1..32, not 33"),
    (dict(topk_comparators=3), r"topk_comparators \(3\) must divide topk_stream_lanes \(16\)"),
    (dict(topk_pair_tokens=33), r"topk_pair_tokens must be in 0..32 \(its comparators grow as the square\), "
                                r"not 33"),
    (dict(topk_pair_tokens=-1), r"topk_pair_tokens must be in 0..32 .*, not -1"),
    (dict(topk_pair_tokens=4.0), r"topk_pair_tokens must be in 0..32 .*, not 4.0"),
    (dict(pe_rows=16, pe_cols=16), r"pe_rows x pe_cols = 16 x 16 needs 256 multipliers, more than the 156 "
                                   r"of board ulx3s-85f"),
    (dict(act_bits=24, act_msb_bits=8, acc_bits=60),
     r"needs 512 multipliers, more than the 156 of board ulx3s-85f"),
    (dict(layers=100000), r"importance_bits \(from max_tokens = 1024, heads = 12, layers = 100000, score_bits, "
                          r"head_dim and act_bits\) must be at most 40, not 47"),
    (dict(heads=2000), r"heads must be at most max_tokens = 1024 \(the controller ranks heads on its token "
                       r"top-k engine\), not 2000"),
    (dict(max_tokens=65536), r"max_tokens = 65536 with topk_comparators = 16 needs up to 1440 block RAMs, "
                             r"more than the 208 of board ulx3s-85f"),
    (dict(max_tokens=5462), r"max_tokens must be at most 5461 \(6 plane rows a token through the attention "
                            r"core's 16-bit fetch counters\), not 5462"),
])
def test_impossible_configurations_name_parameter_value_and_limit(changes, message):
    with pytest.raises(ConfigError, match=message):
        make(**changes)


def test_token_limit_is_exact():
    assert make(max_tokens=5461).max_tokens == 5461
    with pytest.raises(ConfigError, match="max_tokens must be at most 5461"):
        make(max_tokens=5462)


def test_accumulator_width_limit_is_exact():
    need = 2 * 12 + 6    # 64 products of 12-bit signed values, (-2048)**2 included
    assert make(acc_bits=need).acc_bits == need
    with pytest.raises(ConfigError):
        make(acc_bits=need - 1)


def test_tiny_fits_the_icebreaker_but_not_with_more_multipliers():
    with pytest.raises(ConfigError, match="more than the 8 of board icebreaker"):
        dataclasses.replace(preset("tiny"), pe_rows=3, pe_cols=3)


@pytest.mark.parametrize("n, k, message", [
    (0, 0, r"n must be in 1..max_tokens = 1..1024, not 0"),
    (1025, 3, r"n must be in 1..max_tokens = 1..1024, not 1025"),
    (10, 11, r"k must be in 0..n = 0..10, not 11"),
    (10, -1, r"k must be in 0..n = 0..10, not -1"),
])
def test_topk_run_limits(n, k, message):
    with pytest.raises(ConfigError, match=message):
        check_topk_run(preset("default"), n, k)


def test_topk_run_limits_accept_the_edges():
    check_topk_run(preset("default"), 1, 0)
    check_topk_run(preset("default"), 1024, 1024)


def test_derived_widths():
    cfg = preset("tiny")
    assert cfg.index_bits == 6 and cfg.count_bits == 7
    assert cfg.topk_rows == 16
    assert cfg.act_lsb_bits == 2
    assert cfg.score_format.min == -2048 and cfg.score_format.max == 2047
