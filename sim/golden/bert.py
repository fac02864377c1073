"""A BERT encoder forward pass in float PyTorch, split into the steps the sparse golden model reuses.

The attention core (scores, softmax, P·V) is left to the caller: :func:`project_qkv` gives the
per-head Q, K, V of a layer, :func:`finish_layer` takes the per-head context back and applies the
output projection, residuals, LayerNorms and feed-forward block. :func:`dense_embedding` chains them
with float scaled-dot-product attention; :func:`mean_pool` is sentence-transformers' pooling.
"""

import math

import torch
import torch.nn.functional as F

from .minilm import MiniLM

__all__ = ["embed_tokens", "project_qkv", "finish_layer", "float_attention", "mean_pool",
           "dense_embedding"]


def _linear(model: MiniLM, name: str, x):
    return F.linear(x, model.weights[f"{name}.weight"], model.weights[f"{name}.bias"])


def _layer_norm(model: MiniLM, name: str, x):
    return F.layer_norm(x, (model.hidden,), model.weights[f"{name}.weight"],
                        model.weights[f"{name}.bias"], model.eps)


def embed_tokens(model: MiniLM, ids):
    """Word + position + token-type embeddings of one sentence, LayerNormed: ``(n, hidden)``."""
    w = model.weights
    n = ids.shape[0]
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
         + w["embeddings.token_type_embeddings.weight"][0])
    return _layer_norm(model, "embeddings.LayerNorm", x)


def project_qkv(model: MiniLM, layer: int, x):
    """Q, K, V of ``layer`` for hidden states ``x`` ``(n, hidden)``, each ``(heads, n, head_dim)``."""
    prefix = f"encoder.layer.{layer}.attention.self"
    return tuple(_linear(model, f"{prefix}.{part}", x).view(x.shape[0], model.heads, model.head_dim)
                 .transpose(0, 1) for part in ("query", "key", "value"))


def finish_layer(model: MiniLM, layer: int, x, context):
    """The rest of ``layer`` after attention: ``context`` ``(heads, n, head_dim)`` -> new ``x``."""
    prefix = f"encoder.layer.{layer}"
    merged = context.transpose(0, 1).reshape(x.shape[0], model.hidden)
    x = _layer_norm(model, f"{prefix}.attention.output.LayerNorm",
                    _linear(model, f"{prefix}.attention.output.dense", merged) + x)
    hidden = F.gelu(_linear(model, f"{prefix}.intermediate.dense", x))
    return _layer_norm(model, f"{prefix}.output.LayerNorm",
                       _linear(model, f"{prefix}.output.dense", hidden) + x)


def float_attention(q, k, v):
    """Dense float attention of ``(heads, n, d)`` tensors: ``softmax(Q Kᵀ / sqrt(d)) V``."""
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return probs @ v


def mean_pool(hidden):
    """Mean over tokens, then L2 normalisation (sentence-transformers' Pooling + Normalize)."""
    return F.normalize(hidden.mean(dim=0), dim=0)


def dense_embedding(model: MiniLM, ids):
    """The dense float sentence embedding of one tokenised sentence, as sentence-transformers gives."""
    x = embed_tokens(model, ids)
    for layer in range(model.layers):
        x = finish_layer(model, layer, x, float_attention(*project_qkv(model, layer, x)))
    return mean_pool(x)
