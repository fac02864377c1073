"""The sparse-attention golden model: dense defaults, each technique's invariants, traffic, knobs."""

import dataclasses

import pytest
import torch
from spattn.sim.golden.bert import dense_embedding
from spattn.sim.golden.corpus import CALIBRATION, PASSAGES, paraphrase_sentences
from spattn.sim.golden.masks import calibrate_masks
from spattn.sim.golden.pruning import keep_count, top_indices, top_per_row
from spattn.sim.golden.sparse import run_sentence
from spattn.sim.golden.topk import topk_indices
from spattn.sim.golden.traffic import Traffic

from spattn.config import ConfigError, preset

BASE = preset("minilm")
TEXT = PASSAGES[1]  # 44 tokens


def _cfg(**changes):
    return dataclasses.replace(BASE, **changes)


def _total(result, field="traffic"):
    return sum((getattr(s, field) for s in result.layers), start=Traffic())


@pytest.fixture(scope="module")
def ids(minilm):
    return minilm.encode(TEXT)


@pytest.fixture(scope="module")
def dense_int(minilm, ids):
    return run_sentence(minilm, BASE, ids, "int")


def test_defaults_are_the_dense_model(minilm, ids, dense_int):
    for text in (paraphrase_sentences()[3], TEXT):
        tokens = minilm.encode(text)
        assert torch.equal(run_sentence(minilm, BASE, tokens, "float").embedding,
                           dense_embedding(minilm, tokens))
    # zero thresholds and keep ratios of 1.0, spelled out, change nothing in the integer path either
    explicit = _cfg(token_keep=(1.0,) * 6, head_keep=(1.0,), value_keep=1.0, dynatran_threshold=0.0,
                    static_mask_density=1.0)
    assert torch.equal(run_sentence(minilm, explicit, ids, "int").embedding, dense_int.embedding)
    # and the integer path is close to the float model
    assert float(dense_int.embedding @ dense_embedding(minilm, ids)) > 0.9995
    for layer in dense_int.layers:
        assert layer.tokens == len(ids) and layer.heads == 12 and layer.recomputed == 0
        assert layer.traffic.bits == layer.dense.bits


def test_selection_matches_the_topk_engine_golden_model():
    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        scores = torch.randint(0, 6, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g)
        k = int(torch.randint(1, len(scores) + 1, (1,), generator=g))
        assert top_indices(scores, k).tolist() == topk_indices(scores, k)
        everything = torch.ones(1, len(scores), dtype=torch.bool)
        row = top_per_row(scores[None], k / len(scores) - 1e-6, everything)[0]
        assert row.nonzero().flatten().tolist() == topk_indices(scores, k)
    assert top_indices(torch.tensor([0, 9, 9, 1]), 2, forced=0).tolist() == [0, 1]


def test_token_pruning_cascades(minilm, ids):
    schedule = (0.9, 0.8, 0.9, 0.7, 0.9, 0.5)
    result = run_sentence(minilm, _cfg(token_keep=schedule), ids, "int")
    alive = [set(layer.alive_tokens) for layer in result.layers]
    assert alive[0] == set(range(len(ids)))
    for layer in range(1, 6):
        assert alive[layer] <= alive[layer - 1]  # pruned tokens never return
        assert len(alive[layer]) == keep_count(schedule[layer - 1], len(alive[layer - 1]))
        assert 0 in alive[layer]  # [CLS] is always kept
    assert _total(result).bits < _total(result, "dense").bits
    assert float(result.embedding @ dense_embedding(minilm, ids)) > 0.5


def test_head_pruning_cascades(minilm, ids):
    result = run_sentence(minilm, _cfg(head_keep=(0.9,)), ids, "int")
    heads = [set(layer.alive_heads) for layer in result.layers]
    counts = [len(h) for h in heads]
    assert counts == [12, 11, 10, 9, 9, 9]  # ceil(0.9 * n) each layer
    assert all(later <= earlier for earlier, later in zip(heads, heads[1:], strict=False))


def test_local_value_pruning(minilm, ids, dense_int):
    result = run_sentence(minilm, _cfg(value_keep=0.25), ids, "int")
    # it never prunes tokens or heads of later layers
    assert all(layer.tokens == len(ids) and layer.heads == 12 for layer in result.layers)
    traffic, dense = _total(result), _total(result, "dense")
    assert traffic.q_msb + traffic.q_lsb == dense.q_msb and traffic.k_msb + traffic.k_lsb == dense.k_msb
    assert traffic.v_msb + traffic.v_lsb < dense.v_msb  # only V rows some query keeps are fetched
    cos = float(result.embedding @ dense_int.embedding)
    assert 0.8 < cos < 0.9999


def test_progressive_quantization(minilm, ids, dense_int):
    rows = 12 * len(ids)
    never = run_sentence(minilm, _cfg(recompute_threshold=0.0), ids, "int")
    always = run_sentence(minilm, _cfg(recompute_threshold=1.0), ids, "int")
    some = run_sentence(minilm, _cfg(recompute_threshold=0.3), ids, "int")
    assert all(layer.recomputed == 0 for layer in never.layers)
    assert all(layer.recomputed == rows for layer in always.layers)
    assert 0 < sum(layer.recomputed for layer in some.layers) < 6 * rows
    # recomputing every row is exactly full precision, and fetches exactly the dense bytes
    assert torch.equal(always.embedding, dense_int.embedding)
    assert _total(always).bits == _total(dense_int).bits
    # never recomputing fetches only MSB planes: act_bits / act_msb_bits less traffic
    t = _total(never)
    assert t.q_lsb == t.k_lsb == t.v_lsb == 0
    assert _total(never, "dense").bits * BASE.act_msb_bits == t.bits * BASE.act_bits
    assert _total(never).bits < _total(some).bits < _total(always).bits
    assert float(never.embedding @ dense_int.embedding) < float(some.embedding @ dense_int.embedding)


def test_dynatran_sparsity_grows_with_threshold(minilm, ids):
    sparsity = []
    for threshold in (0.0, 0.05, 0.2):
        result = run_sentence(minilm, _cfg(dynatran_threshold=threshold), ids, "int")
        sparsity.append(sum(s.zeros for s in result.layers) / sum(s.values for s in result.layers))
    assert sparsity[0] < 0.05 < sparsity[1] < sparsity[2]


def test_static_masks(minilm, ids):
    cfg = _cfg(static_mask_density=0.5)
    masks = calibrate_masks(minilm, cfg, CALIBRATION[:3])
    assert masks.shape == (6, 12, 256, 256) and masks[:, :, :, 0].all()
    n = max(len(minilm.encode(t)) for t in CALIBRATION[:3])
    density = float(masks[:, :, :n, :n].float().mean())
    assert 0.5 <= density < 0.55  # the requested fraction, plus the forced [CLS] column
    result = run_sentence(minilm, cfg, ids, "int", masks)
    for layer in result.layers:
        assert layer.mask_nonzeros < layer.heads * layer.tokens ** 2
        assert 0 <= layer.dense_nonzeros <= layer.mask_nonzeros
    with pytest.raises(ValueError, match="calibrated masks"):
        run_sentence(minilm, cfg, ids, "int")


@pytest.mark.parametrize("changes, message", [
    ({"token_keep": (0.5, 0.5)},
     r"token_keep must be a tuple of 1 or layers = 6 keep ratios, not \(0.5, 0.5\)"),
    ({"head_keep": (1.5,)}, r"head_keep\[0\] must be a number in \(0, 1\], not 1.5"),
    ({"value_keep": 0}, r"value_keep must be a number in \(0, 1\], not 0"),
    ({"recompute_threshold": 2.0}, r"recompute_threshold must be a number in \[0, 1\], not 2.0"),
    ({"dynatran_threshold": -1}, r"dynatran_threshold must be a number in \[0, 7.99609375\]"),
    ({"static_mask_density": 0.0}, r"static_mask_density must be a number in \(0, 1\], not 0.0"),
    ({"layers": 0}, r"layers must be a positive integer, not 0"),
])
def test_knob_validation(changes, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(**changes)


def test_model_shape_must_match(minilm, ids):
    with pytest.raises(ConfigError, match="heads must be 12 for this model, not 2"):
        run_sentence(minilm, preset("tiny"), ids, "int")
