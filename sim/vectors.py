"""``spattn vectors``: dump real all-MiniLM-L6-v2 Q/K/V tensors as test vectors for the benches.

For each chosen sentence and layer, the dense float model's Q, K, V of that layer are quantized to
the preset's act format and pushed through the bit-exact integer attention path. Output directory:

* ``manifest.json``: ``config`` (the :class:`~spattn.config.AccelConfig` as a dict), ``formats``
  (every constant of :class:`~spattn.formats.AttentionFormats`, formats as ``{bits, signed, frac}``)
  and ``vectors``: one entry per file with the sentence, its index, the layer, tokens and heads.
* one ``s{sentence}_l{layer}.npz`` per entry, all ``int64`` stored integers, shapes
  ``(heads, tokens, head_dim)`` or ``(heads, tokens, tokens)``:
  ``q k v`` (act format), ``q_msb q_lsb k_msb k_lsb v_msb v_lsb`` (planes, ``value = (msb << lsb_bits)
  + lsb``), ``scores`` (score format), ``probs`` (prob format), ``out`` (P·V, act format), and
  ``probs_msb`` (the probabilities from MSB-only Q and K, the first pass of progressive quantization).

A preset smaller than MiniLM gets the first ``heads`` heads, the first ``head_dim`` channels of each
and the first ``max_tokens`` tokens: real values, shaped to the hardware.

    python -m spattn.sim.vectors [--preset minilm] [--sentences 0,40] [--layers 0,5] [--out vectors]
"""

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from spattn.config import preset
from spattn.formats import AttentionFormats, IntFormat, join_planes, split_planes

from .golden.bert import embed_tokens, finish_layer, float_attention, project_qkv
from .golden.corpus import eval_sentences
from .golden.intattention import pv_int, scores_int, softmax_int
from .golden.minilm import load_minilm

__all__ = ["layer_vectors", "dump", "main"]


def _format_dict(value):
    if isinstance(value, IntFormat):
        return dataclasses.asdict(value)
    return list(value) if isinstance(value, tuple) else value


def layer_vectors(cfg, q, k, v):
    """The integer tensors of one layer from float Q, K, V already shaped to ``cfg``."""
    fmt = AttentionFormats.of(cfg)
    tensors = {"q": fmt.act.quantize(q), "k": fmt.act.quantize(k), "v": fmt.act.quantize(v)}
    for name in ("q", "k", "v"):
        tensors[f"{name}_msb"], tensors[f"{name}_lsb"] = split_planes(tensors[name], cfg.act_lsb_bits)
    tensors["scores"] = scores_int(tensors["q"], tensors["k"], fmt)
    tensors["probs"] = softmax_int(tensors["scores"], fmt)
    tensors["out"] = pv_int(tensors["probs"], tensors["v"], fmt)
    msb_only = [join_planes(tensors[f"{n}_msb"], 0, cfg.act_lsb_bits) for n in ("q", "k")]
    tensors["probs_msb"] = softmax_int(scores_int(*msb_only, fmt), fmt)
    return tensors


def dump(cfg, sentence_indices, layers, out: Path):
    """Write the vectors of ``sentence_indices`` (into the evaluation corpus) at ``layers``."""
    model = load_minilm()
    if cfg.heads > model.heads or cfg.head_dim > model.head_dim:
        raise ValueError(f"preset {cfg.name} has more heads or a wider head than MiniLM "
                         f"({model.heads} x {model.head_dim})")
    out.mkdir(parents=True, exist_ok=True)
    sentences, entries = eval_sentences(), []
    for index in sentence_indices:
        ids = model.encode(sentences[index])[:cfg.max_tokens]
        x = embed_tokens(model, ids)
        for layer in range(max(layers) + 1):
            q, k, v = project_qkv(model, layer, x)
            if layer in layers:
                shaped = [t[:cfg.heads, :, :cfg.head_dim] for t in (q, k, v)]
                name = f"s{index}_l{layer}.npz"
                np.savez_compressed(out / name, **{key: t.numpy() for key, t in
                                                   layer_vectors(cfg, *shaped).items()})
                entries.append({"file": name, "sentence": sentences[index], "sentence_index": index,
                                "layer": layer, "tokens": len(ids), "heads": cfg.heads})
            x = finish_layer(model, layer, x, float_attention(q, k, v))
    fmt = AttentionFormats.of(cfg)
    manifest = {"config": cfg.to_dict(),
                "formats": {f.name: _format_dict(getattr(fmt, f.name)) for f in dataclasses.fields(fmt)},
                "lsb_bits": cfg.act_lsb_bits, "vectors": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out / "manifest.json"


def _indices(text):
    return [int(part) for part in text.split(",") if part]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="spattn vectors", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="minilm", help="config preset (default: minilm)")
    parser.add_argument("--sentences", type=_indices, default=[0, 40],
                        help="comma-separated indices into the evaluation corpus (default: 0,40)")
    parser.add_argument("--layers", type=_indices, default=[0, 5],
                        help="comma-separated layers (default: 0,5)")
    parser.add_argument("--out", type=Path, default=Path("vectors"), help="output directory")
    args = parser.parse_args(argv)
    n = len(eval_sentences())
    if not args.sentences or any(not 0 <= i < n for i in args.sentences):
        parser.error(f"sentences must be indices in 0..{n - 1}")
    if not args.layers or any(not 0 <= layer < 6 for layer in args.layers):
        parser.error("layers must be in 0..5")
    torch.set_num_threads(1)
    with torch.no_grad():
        print(dump(preset(args.preset), args.sentences, args.layers, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
