"""ViTCoD-style static attention masks, calibrated once from the dense model and then fixed.

For every layer and head, the mask keeps the query-key positions ``(i, j)`` whose attention
probability, scaled by the sentence length (so 1.0 means "uniform") and averaged over the
calibration sentences that reach that position, is among the top ``static_mask_density`` fraction.
The [CLS] column is always kept so every row has a key; positions no calibration sentence reached
are kept (nothing is known about them). The diagonal is not forced: a key column that no query
keeps is never fetched, which is where a static mask saves memory traffic.
"""

import torch

from .arith import FloatArith
from .bert import embed_tokens, finish_layer, project_qkv
from .minilm import MiniLM

__all__ = ["calibrate_masks"]


def calibrate_masks(model: MiniLM, cfg, sentences) -> torch.Tensor:
    """Bool masks ``(layers, heads, max_tokens, max_tokens)``, True = key kept, for ``cfg``'s density."""
    size, arith = cfg.max_tokens, FloatArith(cfg)
    total = torch.zeros(cfg.layers, cfg.heads, size, size, dtype=torch.float64)
    seen = torch.zeros(size, size)
    for text in sentences:
        ids = model.encode(text)
        n = len(ids)
        x = embed_tokens(model, ids)
        for layer in range(cfg.layers):
            q, k, v = project_qkv(model, layer, x)
            probs = arith.probs(q, k, None)
            total[layer, :, :n, :n] += probs.to(torch.float64) * n
            x = finish_layer(model, layer, x, probs @ v)
        seen[:n, :n] += 1
    observed = seen > 0
    mean = total / seen.clamp(min=1)
    threshold = torch.stack([torch.stack([torch.quantile(head[observed], 1 - cfg.static_mask_density)
                                          for head in layer]) for layer in mean])
    always = ~observed
    always[:, 0] = True
    return (mean >= threshold[:, :, None, None]) | always
