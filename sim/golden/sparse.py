"""The whole sparse-attention algorithm on the MiniLM encoder, one sentence at a time.

Per layer, over the alive tokens and heads only:

1. Q, K, V of the alive heads; DynaTran zeroes ``|x| < dynatran_threshold``.
2. Probabilities: from full-precision Q, K; or, with progressive quantization, from MSB-only Q, K
   first, then full precision for the rows whose maximum probability is below
   ``recompute_threshold``. A static mask (ViTCoD) removes keys from every row's softmax.
3. Local value pruning: per query, only the V rows of the most probable keys are used, as many as
   :func:`spattn.formats.kept_count` of :func:`spattn.formats.value_keep_int` ``(value_keep)``
   gives (ties to the lower index; probabilities are not renormalised); P·V with the row's precision.

Steps 2 and 3 and the rows fetched from memory are the attention core's own rules
(:func:`.attention_core.attend` and :func:`.attention_core.fetched_rows`), run on all alive heads
at once.
4. Importance: each token gets the probability it receives, summed over alive heads and queries;
   each head the L1 magnitude of its output; both accumulate across layers (integers in the
   integer arithmetic: the pruning controller's accumulators).
5. The rest of the layer (output projection, FFN) in float; pruned heads contribute zeros.
6. Cascade pruning: the top ``ceil(token_keep * alive)`` tokens and ``ceil(head_keep * alive)``
   heads by accumulated importance stay alive; the others never return. [CLS] (position 0) is
   always kept, since it carries the sequence summary; [SEP] gets no special treatment. The
   integer arithmetic counts with the controller's fixed-point ratios (:func:`.pruning.survivors`).

The accelerator takes the recompute threshold, value keep and DynaTran threshold per layer (its
per-layer registers): ``layer_cfgs`` may give each layer its own; with none, every layer uses ``cfg``'s.

The sentence embedding mean-pools the tokens alive in the last layer (the survivors: the output
the accelerator produces). Pooling the pruned tokens' frozen hidden states as well was measured to
be worse (cosine 0.89 against 0.99 on an 18-token sentence at keep 0.9 per layer, 0.83 against
0.97 on a 28-token one): early-layer states are far from final ones. With the config's dense
defaults this is the dense model: exactly, in float arithmetic.
"""

from dataclasses import dataclass, fields

import torch

from spattn.config import ConfigError
from spattn.formats import value_keep_int

from .arith import arith_for
from .attention_core import attend, fetched_rows
from .bert import embed_tokens, finish_layer, mean_pool, project_qkv
from .minilm import MiniLM
from .pruning import schedule_at, survivors
from .traffic import Traffic, dense_traffic

__all__ = ["LayerStats", "SentenceResult", "LAYER_FIELDS", "run_sentence", "check_model_fits"]


@dataclass(frozen=True)
class LayerStats:
    """What one layer did for one sentence."""
    alive_tokens: tuple    # positions (in the sentence) of the tokens alive in the layer, ascending
    alive_heads: tuple     # indices of the heads alive in the layer, ascending
    rows: int              # query rows computed (alive heads x alive tokens)
    recomputed: int        # rows recomputed at full precision (progressive quantization)
    zeros: int             # Q/K/V values that are zero after DynaTran
    dynatran_zeroed: int   # of those, values DynaTran zeroed (non-zero before it)
    values: int            # Q/K/V values of the alive heads and tokens
    mask_nonzeros: int     # attention entries the static mask keeps (all entries without a mask)
    dense_nonzeros: int    # of those, entries in key columns routed to the dense engine
    recomputed_entries: int  # attention entries (present keys) of the recomputed rows
    values_used: int       # V rows used in P·V, over all alive heads' query rows (local value pruning)
    traffic: Traffic
    dense: Traffic         # the dense baseline of this layer

    @property
    def tokens(self) -> int:
        return len(self.alive_tokens)

    @property
    def heads(self) -> int:
        return len(self.alive_heads)


@dataclass(frozen=True)
class SentenceResult:
    embedding: torch.Tensor
    layers: tuple


def check_model_fits(model: MiniLM, cfg):
    """The config must have the model's heads, head dimension and layers."""
    for name, want in (("heads", model.heads), ("head_dim", model.head_dim), ("layers", model.layers)):
        if getattr(cfg, name) != want:
            raise ConfigError(f"{name} must be {want} for this model, not {getattr(cfg, name)}")


def _layer_traffic(cfg, rows):
    """Bits fetched by one layer (see :mod:`.traffic`) from the rows of each plane it fetches."""
    bits = {"msb": cfg.act_msb_bits, "lsb": cfg.act_lsb_bits}
    return Traffic(**{f"{tensor}_{plane}": int(fetched.sum()) * cfg.head_dim * bits[plane]
                      for (tensor, plane), fetched in rows.items()})


def _zeros(*planes):
    """Zero values among the full values of ``(msb_only, full)`` plane pairs."""
    return sum(int((full == 0).sum()) for _, full in planes)


def _split_stats(cfg, present):
    """ViTCoD's split: key columns whose mask density exceeds the threshold go to the dense engine."""
    dense_cols = present.float().mean(dim=1) > cfg.static_dense_threshold
    return int(present.sum()), int((present & dense_cols.unsqueeze(1)).sum())


#: The fields of the config a layer may set for itself (the accelerator's per-layer registers).
LAYER_FIELDS = ("recompute_threshold", "value_keep", "dynatran_threshold")


def _check_layer_cfgs(cfg, layer_cfgs):
    if len(layer_cfgs) != cfg.layers:
        raise ConfigError(f"layer_cfgs must hold layers = {cfg.layers} configs, not {len(layer_cfgs)}")
    for layer, lc in enumerate(layer_cfgs):
        others = [f.name for f in fields(cfg) if f.name not in LAYER_FIELDS
                  and getattr(lc, f.name) != getattr(cfg, f.name)]
        if others:
            raise ConfigError(f"layer_cfgs[{layer}] may differ from cfg only in {', '.join(LAYER_FIELDS)}, "
                              f"not in {', '.join(others)}")


def run_sentence(model: MiniLM, cfg, ids, arith: str = "int", masks=None, layer_cfgs=None) -> SentenceResult:
    """Embed one tokenised sentence with every technique the config switches on.

    ``arith`` is ``"int"`` (the hardware's bit-exact attention core) or ``"float"``. ``masks``
    (bool ``(layers, heads, max_tokens, max_tokens)``, from :func:`.masks.calibrate_masks`) is
    required when ``static_mask_density < 1`` and ignored otherwise. ``layer_cfgs`` (one config per
    layer, differing from ``cfg`` only in :data:`LAYER_FIELDS`) sets those fields layer by layer.
    """
    check_model_fits(model, cfg)
    if layer_cfgs is not None:
        _check_layer_cfgs(cfg, layer_cfgs)
    if len(ids) > cfg.max_tokens:
        raise ConfigError(f"sentence length must be at most max_tokens = {cfg.max_tokens}, not {len(ids)}")
    if cfg.static_mask_density < 1 and masks is None:
        raise ValueError("static_mask_density < 1 needs the calibrated masks")
    ar = arith_for(arith, cfg)
    state = embed_tokens(model, ids)
    alive, heads = torch.arange(len(ids)), torch.arange(cfg.heads)
    integer = arith == "int"
    importance_dtype = torch.int64 if integer else torch.float64
    token_importance = torch.zeros(len(ids), dtype=importance_dtype)
    head_importance = torch.zeros(cfg.heads, dtype=importance_dtype)
    stats = []
    for layer in range(cfg.layers):
        lc = cfg if layer_cfgs is None else layer_cfgs[layer]
        pooled = alive
        x = state[alive]
        q, k, v = (ar.planes(t[heads]) for t in project_qkv(model, layer, x))
        zeros_before = _zeros(q, k, v)
        if lc.dynatran_threshold > 0:
            q, k, v = (tuple(ar.zero_small(p, lc.dynatran_threshold) for p in t) for t in (q, k, v))
        mask = None
        if cfg.static_mask_density < 1:
            mask = masks[layer][heads][:, alive][:, :, alive]
        present = torch.ones(len(heads), len(alive), len(alive), dtype=torch.bool) if mask is None else mask

        threshold = None if lc.recompute_threshold is None else ar.prob_threshold(lc.recompute_threshold)
        probs, out, redo, kept = attend(ar, q, k, v, mask, threshold, value_keep_int(lc.value_keep))

        token_importance[alive] += probs.sum(dim=(0, 1)).to(importance_dtype)
        head_importance[heads] += out.abs().sum(dim=(1, 2)).to(importance_dtype)
        context = torch.zeros(cfg.heads, len(alive), cfg.head_dim)
        context[heads] = ar.out_real(out)
        state[alive] = finish_layer(model, layer, x, context)

        mask_nnz, dense_nnz = _split_stats(cfg, present)
        zeros = _zeros(q, k, v)
        stats.append(LayerStats(
            alive_tokens=tuple(alive.tolist()), alive_heads=tuple(heads.tolist()),
            rows=len(heads) * len(alive),
            recomputed=int(redo.sum()) if lc.recompute_threshold is not None else 0,
            zeros=zeros, values=3 * q[1].numel(), dynatran_zeroed=zeros - zeros_before,
            mask_nonzeros=mask_nnz, dense_nonzeros=dense_nnz,
            recomputed_entries=int((present.sum(dim=-1) * redo).sum()) if lc.recompute_threshold is not None
            else 0,
            values_used=int(kept.sum()),
            traffic=_layer_traffic(cfg, fetched_rows(present, kept, redo)),
            dense=dense_traffic(len(ids), cfg.heads, cfg.head_dim, cfg.act_bits)))

        alive = alive[survivors(token_importance[alive], schedule_at(cfg.token_keep, layer), integer,
                                forced=0)]
        heads = heads[survivors(head_importance[heads], schedule_at(cfg.head_keep, layer), integer)]
    return SentenceResult(embedding=mean_pool(state[pooled]), layers=tuple(stats))
