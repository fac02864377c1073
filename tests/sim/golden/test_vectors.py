"""The test-vector dump: real MiniLM tensors in the integer formats, consistent with the golden model."""

import json

import numpy as np
import pytest
import torch
from spattn.sim import vectors
from spattn.sim.golden.intattention import attention_int

from spattn.config import preset
from spattn.formats import AttentionFormats, join_planes


def _load(path):
    with np.load(path) as data:
        return {key: torch.from_numpy(data[key]) for key in data.files}


@pytest.mark.parametrize("name, sentence, layers", [("minilm", "0", "0,2"), ("tiny", "41", "1")])
def test_dump_is_consistent(tmp_path, name, sentence, layers):
    assert vectors.main(["--preset", name, "--sentences", sentence, "--layers", layers,
                         "--out", str(tmp_path)]) == 0
    cfg = preset(name)
    fmt = AttentionFormats.of(cfg)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["config"]["name"] == name and manifest["lsb_bits"] == cfg.act_lsb_bits
    assert manifest["formats"]["score"] == {"bits": cfg.score_bits, "signed": True, "frac": fmt.score.frac}
    assert manifest["formats"]["exp_lut"] == list(fmt.exp_lut)
    assert [e["layer"] for e in manifest["vectors"]] == [int(x) for x in layers.split(",")]
    for entry in manifest["vectors"]:
        t = _load(tmp_path / entry["file"])
        n = entry["tokens"]
        assert n <= cfg.max_tokens
        assert t["q"].shape == (cfg.heads, n, cfg.head_dim) and t["probs"].shape == (cfg.heads, n, n)
        for part in ("q", "k", "v"):
            assert fmt.act.contains(t[part])
            assert torch.equal(join_planes(t[f"{part}_msb"], t[f"{part}_lsb"], cfg.act_lsb_bits), t[part])
        probs, out = attention_int(t["q"], t["k"], t["v"], fmt)
        assert torch.equal(probs, t["probs"]) and torch.equal(out, t["out"])
        assert not torch.equal(t["probs_msb"], t["probs"])  # the MSB pass really is coarser
        assert int(t["q"].abs().max()) > 1 << fmt.act.frac  # real activations, not zeros


def test_rejects_bad_indices(tmp_path):
    with pytest.raises(SystemExit):
        vectors.main(["--sentences", "999", "--out", str(tmp_path)])
