"""The float BERT forward against an independent reference: transformers' BertModel, same weights."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach a hub

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from spattn.sim.golden.bert import dense_embedding  # noqa: E402
from spattn.sim.golden.corpus import PASSAGES, paraphrase_sentences  # noqa: E402
from spattn.sim.golden.minilm import model_dir  # noqa: E402


@pytest.fixture(scope="module")
def reference():
    return transformers.BertModel.from_pretrained(str(model_dir()), local_files_only=True,
                                                  attn_implementation="eager").eval()


def test_checkpoint_shape(minilm):
    assert (minilm.layers, minilm.heads, minilm.head_dim, minilm.max_tokens) == (6, 12, 32, 256)
    ids = minilm.encode("Hello world.")
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]
    assert len(minilm.encode(" ".join(PASSAGES) * 3)) == minilm.max_tokens  # truncated


@pytest.mark.parametrize("text", [paraphrase_sentences()[0], PASSAGES[2], PASSAGES[5]])
def test_matches_transformers(minilm, reference, text):
    ids = minilm.encode(text)
    with torch.no_grad():
        hidden = reference(input_ids=ids[None]).last_hidden_state[0]
        ours = dense_embedding(minilm, ids)
    theirs = torch.nn.functional.normalize(hidden.mean(dim=0), dim=0)
    assert 1 - float(ours @ theirs) < 1e-4
