"""Error of the integer softmax against float softmax, on random and on real MiniLM rows.

For integer Q, K in a preset's act format, the probabilities of the bit-exact path
(:func:`~spattn.sim.golden.intattention.softmax_int` after
:func:`~spattn.sim.golden.intattention.scores_int`) are compared with float64
``softmax(Q Kᵀ / sqrt(d))`` of the same integers (:func:`~spattn.sim.golden.intattention.float_probs`),
so the figures include the score rounding, the exponent table, the reciprocal and the final rounding.
``spattn bench softmax`` (:func:`spattn.sim.bench.bench_softmax`) writes the table.

* random: Q and K entries normal with standard deviation :data:`RANDOM_STD` real units (logits of
  standard deviation ``RANDOM_STD**2``), quantized; a fixed seed; :data:`RANDOM_ROWS` rows per length.
* minilm: the dense float model's Q, K of whole sentences, quantized. A preset with fewer or
  narrower heads than MiniLM takes the first heads, channels and tokens (as :mod:`spattn.sim.vectors`
  does); a wider one (``default``, 64 channels) joins consecutive MiniLM heads (0 and 1, 2 and 3,
  ...) into one head, so its scores are the sum of the two heads' dot products, scaled by 1/8.
"""

import math

import torch

from spattn.formats import AttentionFormats

from .golden.bert import embed_tokens, finish_layer, float_attention, project_qkv
from .golden.corpus import eval_sentences
from .golden.intattention import float_probs, scores_int, softmax_int
from .golden.minilm import load_minilm

__all__ = ["RANDOM_STD", "RANDOM_ROWS", "row_errors", "random_rows", "minilm_rows", "shape_heads"]

RANDOM_STD = 1.5
RANDOM_ROWS = 4096


def row_errors(cfg, q, k):
    """Per-row errors of ``(.., n, d)`` integer ``q`` against ``(.., m, d)`` ``k``, flattened over rows,
    in real units: ``(abs_max, abs_sum, sum_err, argmax_differs, softmax_max)``; sum_err = sum of
    probs - 1; argmax with ties to the lower key on both sides (the top-k engine's rule);
    softmax_max = the largest error against the exact softmax of the same integer scores (the
    softmax approximation alone, without the score rounding)."""
    fmt = AttentionFormats.of(cfg)
    scores = scores_int(q, k, fmt)
    ints = softmax_int(scores, fmt).reshape(-1, k.shape[-2])
    probs = fmt.prob.to_real(ints)
    ref = float_probs(q, k, fmt).reshape(-1, k.shape[-2])
    exact = torch.softmax(fmt.score.to_real(scores) * math.log(2), dim=-1).reshape(-1, k.shape[-2])
    err = (probs - ref).abs()
    return (err.amax(dim=1), err.sum(dim=1), probs.sum(dim=1) - 1, ints.argmax(dim=1) != ref.argmax(dim=1),
            (probs - exact).abs().amax(dim=1))


def random_rows(cfg, n, rows=RANDOM_ROWS, seed=0):
    """Row errors of random Q, K with ``n`` keys per row (at least ``rows`` rows)."""
    fmt = AttentionFormats.of(cfg)
    g = torch.Generator().manual_seed(seed)
    batch = -(-rows // n)
    q, k = (fmt.act.quantize(torch.randn(batch, n, cfg.head_dim, generator=g, dtype=torch.float64)
                             * RANDOM_STD) for _ in range(2))
    return row_errors(cfg, q, k)


def shape_heads(cfg, t, model_head_dim):
    """MiniLM ``(heads, n, model_head_dim)`` shaped to ``cfg``: first heads, channels and tokens, or
    consecutive heads joined when ``cfg.head_dim`` is a multiple of the model's."""
    if cfg.head_dim > model_head_dim:
        group = cfg.head_dim // model_head_dim
        if cfg.head_dim % model_head_dim or t.shape[0] < group:
            raise ValueError(f"head_dim {cfg.head_dim} is not a multiple of MiniLM's {model_head_dim}")
        heads = t.shape[0] // group
        t = t[:heads * group].reshape(heads, group, *t.shape[1:]).transpose(1, 2).flatten(2)
    return t[:cfg.heads, :cfg.max_tokens, :cfg.head_dim]


def minilm_rows(cfgs, sentences, layers):
    """``{(preset name, n): row errors}`` of the real rows of ``sentences`` (indices into the
    evaluation corpus) at ``layers``, for each config of ``cfgs`` (one float forward pass)."""
    model, texts = load_minilm(), eval_sentences()
    found = {}
    for index in sentences:
        x = embed_tokens(model, model.encode(texts[index]))
        for layer in range(max(layers) + 1):
            q, k, v = project_qkv(model, layer, x)
            if layer in layers:
                for cfg in cfgs:
                    fmt = AttentionFormats.of(cfg)
                    qi, ki = (fmt.act.quantize(shape_heads(cfg, t, model.head_dim)) for t in (q, k))
                    found.setdefault((cfg.name, qi.shape[-2]), []).append(row_errors(cfg, qi, ki))
            x = finish_layer(model, layer, x, float_attention(q, k, v))
    return {key: tuple(torch.cat(parts) for parts in zip(*groups, strict=True))
            for key, groups in found.items()}
