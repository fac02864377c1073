"""The attention core's specification (``attention_head``) against independent computations."""

import dataclasses

import pytest
import torch
from spattn.sim.golden.arith import IntArith
from spattn.sim.golden.attention_core import attend, attention_head, fetched_rows, present_keys
from spattn.sim.golden.bert import embed_tokens, project_qkv
from spattn.sim.golden.corpus import CALIBRATION, PASSAGES
from spattn.sim.golden.intattention import attention_int, pv_int, scores_int, softmax_int
from spattn.sim.golden.masks import calibrate_masks
from spattn.sim.golden.sparse import run_sentence

from spattn.config import ConfigError, preset
from spattn.formats import (
    VALUE_KEEP_FRAC,
    AttentionFormats,
    dynatran_threshold_int,
    dynatran_zero,
    join_planes,
    kept_count,
    plane_row_bytes,
    recompute_threshold_int,
    split_planes,
    value_keep_int,
)

TINY, MINILM = preset("tiny"), preset("minilm")
FULL = 1 << VALUE_KEEP_FRAC
KEYS = [(t, p) for t in "qkv" for p in ("msb", "lsb")]


def _qkv(cfg, n, seed, spread=2.0):
    """Random Q, K, V stored integers, uniform within ``+-spread`` real units (clipped to the format)."""
    g = torch.Generator().manual_seed(seed)
    fmt = cfg.act_format
    top = min(fmt.max, int(spread * (1 << fmt.frac)))
    return tuple(torch.randint(-top, top + 1, (n, cfg.head_dim), generator=g) for _ in range(3))


def _random_mask(n, seed, density=0.4):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, n, generator=g) < density
    mask[torch.arange(n), torch.randint(0, n, (n,), generator=g)] = True  # every row keeps a key
    return mask


def _msb_only(cfg, x):
    return join_planes(split_planes(x, cfg.act_lsb_bits)[0], 0, cfg.act_lsb_bits)


def _rows(mask):
    return tuple(int(i) for i in mask.nonzero().flatten())


def _kept_by_hand(probs, present, value_keep):
    """Per row, the ``kept_count`` largest present probabilities, ties to the lower key, in Python."""
    kept = torch.zeros_like(present)
    for i in range(probs.shape[0]):
        keys = [j for j in range(probs.shape[1]) if present[i, j]]
        ranked = sorted(keys, key=lambda j: (-int(probs[i, j]), j))
        kept[i, ranked[:kept_count(value_keep, len(keys))]] = True
    return kept


@pytest.mark.parametrize("cfg", [TINY, MINILM], ids=lambda c: c.name)
@pytest.mark.parametrize("n", [1, 2, 7, 33, "max"])
def test_dense_is_the_integer_attention_path(cfg, n):
    n = cfg.max_tokens if n == "max" else n
    fmt = AttentionFormats.of(cfg)
    q, k, v = _qkv(cfg, n, seed=n)
    r = attention_head(cfg, q, k, v, progressive=False)
    probs, out = attention_int(q, k, v, fmt)
    assert torch.equal(r.probs, probs) and torch.equal(r.out, out)
    assert torch.equal(r.magnitude, out.abs().sum(dim=1))
    assert r.full_precision.all() and r.kept.all() and r.rows_recomputed == 0
    assert all(r.fetched[key] == tuple(range(n)) for key in KEYS)
    row = plane_row_bytes(cfg.head_dim, cfg.act_msb_bits) + plane_row_bytes(cfg.head_dim, cfg.act_lsb_bits)
    assert r.bytes_fetched == 3 * n * row
    # progressive with a threshold above every probability recomputes every row: the same results
    everything = attention_head(cfg, q, k, v, threshold=1 << fmt.prob.bits)
    for name in ("probs", "out", "full_precision", "kept"):
        assert torch.equal(getattr(r, name), getattr(everything, name))
    assert (everything.fetched, everything.bytes_fetched) == (r.fetched, r.bytes_fetched)
    assert everything.rows_recomputed == n


def test_plane_row_bytes_by_hand():
    # tiny: 16 values of 6 MSB bits = 12 bytes, of 2 LSB bits = 4 bytes; minilm: 32 x 8 bits, 32 x 4
    assert (plane_row_bytes(16, 6), plane_row_bytes(16, 2)) == (12, 4)
    assert (plane_row_bytes(32, 8), plane_row_bytes(32, 4)) == (32, 16)
    q, k, v = _qkv(TINY, 5, seed=1)
    assert attention_head(TINY, q, k, v, progressive=False).bytes_fetched == 3 * 5 * 16
    assert attention_head(TINY, q, k, v, threshold=0).bytes_fetched == 3 * 5 * 12


@pytest.mark.parametrize("cfg", [TINY, MINILM], ids=lambda c: c.name)
def test_threshold_zero_uses_the_msb_planes_only(cfg):
    fmt = AttentionFormats.of(cfg)
    n = 40
    q, k, v = _qkv(cfg, n, seed=5)
    r = attention_head(cfg, q, k, v, threshold=0)
    low_q, low_k, low_v = (_msb_only(cfg, t) for t in (q, k, v))
    probs, out = attention_int(low_q, low_k, low_v, fmt)
    assert torch.equal(r.probs, probs) and torch.equal(r.out, out)
    assert not r.full_precision.any() and r.rows_recomputed == 0
    assert all(r.fetched[(t, "lsb")] == () for t in "qkv")
    assert all(r.fetched[(t, "msb")] == tuple(range(n)) for t in "qkv")
    assert r.bytes_fetched == 3 * n * plane_row_bytes(cfg.head_dim, cfg.act_msb_bits)
    # the MSB planes alone are not the full-precision result on these inputs
    assert not torch.equal(r.probs, attention_int(q, k, v, fmt)[0])


@pytest.mark.parametrize("cfg", [TINY, MINILM], ids=lambda c: c.name)
@pytest.mark.parametrize("causal, masked", [(False, False), (True, False), (False, True), (True, True)])
def test_progressive_rows_come_from_the_right_pass(cfg, causal, masked):
    """Full-precision rows equal the non-progressive result, the others the MSB-only one; the LSB
    planes fetched are exactly those the full-precision rows need."""
    n = min(cfg.max_tokens, 50)
    fmt = AttentionFormats.of(cfg)
    q, k, v = _qkv(cfg, n, seed=11 + causal + 2 * masked, spread=1.0)
    mask = _random_mask(n, seed=3) if masked else None
    if causal and masked:
        mask[:, 0] = True  # key 0 keeps every causal row alive
    present = present_keys(n, causal, mask)
    low = softmax_int(scores_int(_msb_only(cfg, q), _msb_only(cfg, k), fmt), fmt, present)
    threshold = int(low.amax(dim=1).median())  # recomputes about half the rows
    keep = value_keep_int(0.5)
    r = attention_head(cfg, q, k, v, causal=causal, mask=mask, threshold=threshold, value_keep=keep)
    fp = low.amax(dim=1) < threshold
    assert torch.equal(r.full_precision, fp) and 0 < r.rows_recomputed == int(fp.sum()) < n
    dense = attention_head(cfg, q, k, v, causal=causal, mask=mask, progressive=False, value_keep=keep)
    msb = attention_head(cfg, q, k, v, causal=causal, mask=mask, threshold=0, value_keep=keep)
    for x in ("probs", "out", "kept"):
        assert torch.equal(getattr(r, x)[fp], getattr(dense, x)[fp])
        assert torch.equal(getattr(r, x)[~fp], getattr(msb, x)[~fp])
    assert torch.equal(r.probs[~present], torch.zeros(int((~present).sum()), dtype=torch.int64))
    assert not (r.kept & ~present).any()
    assert r.fetched[("q", "msb")] == tuple(range(n)) and r.fetched[("q", "lsb")] == _rows(fp)
    assert r.fetched[("k", "msb")] == _rows(present.any(dim=0))
    assert r.fetched[("k", "lsb")] == _rows(present[fp].any(dim=0))
    assert r.fetched[("v", "msb")] == _rows(r.kept.any(dim=0))
    assert r.fetched[("v", "lsb")] == _rows(r.kept[fp].any(dim=0))
    bits = {"msb": cfg.act_msb_bits, "lsb": cfg.act_lsb_bits}
    assert r.bytes_fetched == sum(len(r.fetched[(t, p)]) * plane_row_bytes(cfg.head_dim, bits[p])
                                  for t, p in KEYS)


def test_causal_rows_are_prefix_attention():
    cfg = MINILM
    fmt = AttentionFormats.of(cfg)
    n = 30
    q, k, v = _qkv(cfg, n, seed=2)
    r = attention_head(cfg, q, k, v, causal=True, progressive=False)
    for i in range(n):
        probs, out = attention_int(q[i:i + 1], k[:i + 1], v[:i + 1], fmt)
        assert torch.equal(r.probs[i, :i + 1], probs[0]) and not r.probs[i, i + 1:].any()
        assert torch.equal(r.out[i], out[0])
    assert r.fetched[("k", "msb")] == tuple(range(n))  # the last row sees every key


def test_static_mask_fetches_only_present_keys():
    cfg = TINY
    n = 6
    mask = torch.zeros(cfg.max_tokens, cfg.max_tokens, dtype=torch.bool)  # larger than n: [:n, :n]
    mask[:n, 1] = True
    mask[2, 4] = True
    mask[5, 3] = True
    mask[:, 5] = True
    mask[n:, 0] = True  # outside the head: ignored
    q, k, v = _qkv(cfg, n, seed=8)
    r = attention_head(cfg, q, k, v, mask=mask, progressive=False, value_keep=1)
    assert r.fetched[("k", "msb")] == r.fetched[("k", "lsb")] == (1, 3, 4, 5)
    assert set(r.fetched[("v", "msb")]) <= {1, 3, 4, 5}
    assert r.kept.sum(dim=1).tolist() == [1] * n  # value_keep 1/65536: one V row per query
    fmt = AttentionFormats.of(cfg)
    probs, _ = attention_int(q, k, v, fmt, mask[:n, :n])
    assert torch.equal(r.probs, probs)
    # causal on top: row 0 keeps no key (key 1 > 0) -> an error naming the row
    with pytest.raises(ValueError, match="query row 0 has no present key"):
        attention_head(cfg, q, k, v, mask=mask, causal=True)


@pytest.mark.parametrize("cfg", [TINY, MINILM], ids=lambda c: c.name)
@pytest.mark.parametrize("ratio", [1 / 65536, 0.1, 0.3, 0.5, 0.7, 0.999, 1.0])
def test_value_pruning_keeps_the_most_probable_rows(cfg, ratio):
    fmt = AttentionFormats.of(cfg)
    n = min(cfg.max_tokens, 45)
    q, k, v = _qkv(cfg, n, seed=int(ratio * 1000))
    mask = _random_mask(n, seed=4, density=0.6)
    keep = value_keep_int(ratio)
    r = attention_head(cfg, q, k, v, mask=mask, progressive=False, value_keep=keep)
    assert torch.equal(r.kept, _kept_by_hand(r.probs, mask, keep))
    counts = [kept_count(keep, int(c)) for c in mask.sum(dim=1)]
    assert r.kept.sum(dim=1).tolist() == counts
    assert torch.equal(r.probs, attention_int(q, k, v, fmt, mask)[0])  # probabilities are not pruned
    assert torch.equal(r.out, pv_int(torch.where(r.kept, r.probs, 0), v, fmt))
    if ratio == 1.0:
        assert torch.equal(r.kept, mask)
    if ratio == 1 / 65536:
        assert counts == [1] * n
        assert torch.equal(r.kept.nonzero()[:, 1], torch.where(mask, r.probs, -1).argmax(dim=1))


@pytest.mark.parametrize("causal", [False, True])
def test_all_equal_inputs_tie_to_the_lower_key(causal):
    cfg = TINY
    n = cfg.max_tokens
    one = torch.full((n, cfg.head_dim), 1 << cfg.act_frac)
    for keep, want in ((1, lambda c: 1), (value_keep_int(0.5), lambda c: -(-c // 2)), (FULL, lambda c: c)):
        r = attention_head(cfg, one, one, one, causal=causal, threshold=0, value_keep=keep)
        present = present_keys(n, causal)
        for i in range(n):
            c = int(present[i].sum())
            assert r.kept[i].nonzero().flatten().tolist() == list(range(want(c)))
            assert len(set(r.probs[i, :c].tolist())) == 1  # equal scores, equal probabilities
        assert r.fetched[("v", "msb")] == tuple(range(max(want(int(c)) for c in present.sum(dim=1))))


def _same_results(a, b):
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
               for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b)))


@pytest.mark.parametrize("cfg", [TINY, MINILM], ids=lambda c: c.name)
@pytest.mark.parametrize("progressive", [False, True])
def test_dynatran_zero_prunes_nothing(cfg, progressive):
    n = min(cfg.max_tokens, 40)
    q, k, v = _qkv(cfg, n, seed=21, spread=1.0)
    mask = _random_mask(n, seed=6, density=0.6)
    msb = attention_head(cfg, q, k, v, causal=True, mask=mask, threshold=0)
    args = dict(causal=True, mask=mask, progressive=progressive,
                threshold=int(msb.probs.amax(dim=1).median()), value_keep=value_keep_int(0.5))
    default = attention_head(cfg, q, k, v, **args)
    assert _same_results(attention_head(cfg, q, k, v, dynatran=0, **args), default)
    if progressive:
        assert 0 < default.rows_recomputed < n


@pytest.mark.parametrize("cfg", [TINY, MINILM], ids=lambda c: c.name)
@pytest.mark.parametrize("progressive", [False, True])
def test_dynatran_can_prune_everything(cfg, progressive):
    """``2**(act_bits - 1) + 1`` zeroes every value: equal probabilities for the present keys, zero
    outputs, and the same rows fetched; one less keeps the most negative value."""
    n = min(cfg.max_tokens, 40)
    q, k, v = _qkv(cfg, n, seed=41, spread=1000.0)  # the whole act range
    q[-1, 0] = k[0, 0] = v[0, 0] = cfg.act_format.min  # the largest magnitude
    mask = _random_mask(n, seed=9)
    mask[:, 0] = True
    present = present_keys(n, True, mask)
    everything = (1 << (cfg.act_bits - 1)) + 1
    r = attention_head(cfg, q, k, v, causal=True, mask=mask, progressive=progressive, dynatran=everything)
    for i in range(n):
        assert len(set(r.probs[i][present[i]].tolist())) == 1
    assert not r.probs[~present].any() and not r.out.any() and not r.magnitude.any()
    dense = attention_head(cfg, q, k, v, causal=True, mask=mask, progressive=progressive)
    assert (r.fetched, r.bytes_fetched) == (dense.fetched, dense.bytes_fetched)
    almost = attention_head(cfg, q, k, v, causal=True, mask=mask, progressive=progressive,
                            dynatran=everything - 1)
    assert almost.probs[-1, 0] > r.probs[-1, 0] and almost.out[-1, 0] < 0


@pytest.mark.parametrize("cfg", [TINY, MINILM], ids=lambda c: c.name)
@pytest.mark.parametrize("causal", [False, True])
def test_dynatran_zeroes_the_values_the_pe_array_sees(cfg, causal):
    """Each MSB-only and each full value is zeroed on its own (zeroing the full values and then
    taking their MSB-only values is not the same), then steps 3-6 run on the zeroed pairs."""
    n = min(cfg.max_tokens, 50)
    q, k, v = _qkv(cfg, n, seed=31 + causal, spread=1.0)
    mask = _random_mask(n, seed=7, density=0.6)
    mask[:, 0] = True
    present = present_keys(n, causal, mask)
    dynatran = (1 << cfg.act_frac) // 4 + 1  # 0.25 plus an LSB: no multiple of the MSB step
    pairs = [tuple(torch.where(x.abs() < dynatran, 0, x) for x in (_msb_only(cfg, t), t)) for t in (q, k, v)]
    assert not torch.equal(pairs[0][0], _msb_only(cfg, pairs[0][1]))
    msb = attention_head(cfg, q, k, v, causal=causal, mask=mask, threshold=0, dynatran=dynatran)
    threshold, keep = int(msb.probs.amax(dim=1).median()), value_keep_int(0.5)
    r = attention_head(cfg, q, k, v, causal=causal, mask=mask, threshold=threshold, value_keep=keep,
                       dynatran=dynatran)
    probs, out, full_precision, kept = attend(IntArith(cfg), *pairs, present, threshold, keep)
    assert 0 < int(full_precision.sum()) < n
    for name, want in (("probs", probs), ("out", out), ("full_precision", full_precision), ("kept", kept)):
        assert torch.equal(getattr(r, name), want)
    rows = fetched_rows(present, kept, full_precision)
    assert r.fetched == {key: _rows(rows[key]) for key in KEYS}
    plain = attention_head(cfg, q, k, v, causal=causal, mask=mask, threshold=threshold, value_keep=keep)
    assert not torch.equal(r.probs, plain.probs) and not torch.equal(r.out, plain.out)


@pytest.mark.parametrize("cfg", [TINY, MINILM], ids=lambda c: c.name)
def test_zero_small_is_the_cores_dynatran_rule(cfg):
    """The whole-model golden model's DynaTran (a real threshold) is ``dynatran_zero`` with the
    threshold converted, also for thresholds that are exact multiples of an act LSB."""
    fmt = AttentionFormats.of(cfg)
    x = fmt.act.random((2, 50, cfg.head_dim), torch.Generator().manual_seed(9))
    lsb = 1 / (1 << fmt.act.frac)
    for real in (0.0, 0.02, 0.1, 0.3, 1.3, lsb, 5 * lsb, 0.5, 2.0, fmt.act.max * lsb):
        want = dynatran_zero(x, dynatran_threshold_int(real, fmt.act))
        assert torch.equal(IntArith(cfg).zero_small(x, real), want), real


def test_checks():
    q, k, v = _qkv(TINY, TINY.max_tokens + 1, seed=0)
    with pytest.raises(ConfigError, match=r"n must be in 1..max_tokens = 1..64, not 65"):
        attention_head(TINY, q, k, v)
    empty = torch.zeros(0, TINY.head_dim, dtype=torch.int64)
    with pytest.raises(ConfigError, match=r"n must be in 1..max_tokens = 1..64, not 0"):
        attention_head(TINY, empty, empty, empty)
    q, k, v = _qkv(TINY, 4, seed=0)
    with pytest.raises(ValueError, match=r"k must have shape \(n, head_dim\) = \(4, 16\)"):
        attention_head(TINY, q, k[:3], v)
    with pytest.raises(ValueError, match="act format"):
        attention_head(TINY, q, k, v + 1000)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[2] = False
    with pytest.raises(ValueError, match="query row 2 has no present key"):
        attention_head(TINY, q, k, v, mask=mask)
    with pytest.raises(ConfigError, match=r"threshold must be in 0..2\*\*prob.bits = 0..2048, not 2049"):
        attention_head(TINY, q, k, v, threshold=2049)
    with pytest.raises(ConfigError, match=r"value_keep must be in 0..2\*\*VALUE_KEEP_FRAC"):
        attention_head(TINY, q, k, v, value_keep=FULL + 1)
    with pytest.raises(ConfigError, match=r"dynatran must be in 0..2\*\*act_bits - 1 = 0..255, not 256"):
        attention_head(TINY, q, k, v, dynatran=256)
    with pytest.raises(ConfigError, match=r"dynatran must be in 0..2\*\*act_bits - 1 = 0..255, not -1"):
        attention_head(TINY, q, k, v, dynatran=-1)
    assert not attention_head(TINY, q, k, v, dynatran=255).out.any()  # the largest accepted value


@pytest.mark.parametrize("dynatran", [0.0, 0.2])
def test_the_sparse_model_runs_the_core_per_head(minilm, dynatran):
    """Layer 0 of the whole-model golden model (static mask, progressive quantization, value
    pruning, DynaTran) counts exactly the rows ``attention_head`` fetches and recomputes, head by
    head."""
    cfg = dataclasses.replace(MINILM, static_mask_density=0.5, recompute_threshold=0.3, value_keep=0.4,
                              dynatran_threshold=dynatran)
    masks = calibrate_masks(minilm, cfg, CALIBRATION[:2])
    ids = minilm.encode(PASSAGES[1])
    layer0 = run_sentence(minilm, cfg, ids, "int", masks).layers[0]
    arith = IntArith(cfg)
    q, k, v = (arith.planes(t)[1] for t in project_qkv(minilm, 0, embed_tokens(minilm, ids)))
    bits = {"msb": cfg.act_msb_bits, "lsb": cfg.act_lsb_bits}
    traffic, recomputed = dict.fromkeys(KEYS, 0), 0
    fmt = AttentionFormats.of(cfg)
    for h in range(cfg.heads):
        r = attention_head(cfg, q[h], k[h], v[h], mask=masks[0][h],
                           threshold=recompute_threshold_int(cfg.recompute_threshold, fmt.prob),
                           value_keep=value_keep_int(cfg.value_keep),
                           dynatran=dynatran_threshold_int(cfg.dynatran_threshold, fmt.act))
        recomputed += r.rows_recomputed
        for key in KEYS:
            traffic[key] += len(r.fetched[key]) * cfg.head_dim * bits[key[1]]
    assert 0 < recomputed < cfg.heads * len(ids) and layer0.recomputed == recomputed
    assert {key: getattr(layer0.traffic, f"{key[0]}_{key[1]}") for key in KEYS} == traffic
    # with a static mask, fewer K LSB rows than K MSB rows of the recomputing heads
    assert traffic[("k", "lsb")] // bits["lsb"] < traffic[("k", "msb")] // bits["msb"]
