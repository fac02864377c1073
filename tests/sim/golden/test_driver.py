"""The host driver (:mod:`spattn.fpga.driver`) over the golden accelerator
(:class:`spattn.sim.golden.accelerator.GoldenAccelerator`) gives exactly the embedding of the
integer golden model (:func:`spattn.sim.golden.sparse.run_sentence`), with the same alive tokens
and heads per layer, under every family of settings; bad settings raise the accelerator's error."""

import asyncio
import dataclasses

import pytest
import torch

from spattn.config import preset
from spattn.fpga.driver import AcceleratorError, Driver
from spattn.sim.golden.accelerator import SETTING_FAMILIES, GoldenAccelerator
from spattn.sim.golden.masks import calibrate_masks
from spattn.sim.golden.sparse import run_sentence

MINILM = preset("minilm")
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."



@pytest.fixture(scope="module")
def masks(minilm):
    return calibrate_masks(minilm, dataclasses.replace(MINILM, static_mask_density=0.5), [SENTENCE])


@pytest.mark.parametrize("name", SETTING_FAMILIES)
def test_driver_equals_golden_model(minilm, masks, name):
    cfg = dataclasses.replace(MINILM, **SETTING_FAMILIES[name])
    ids = minilm.encode(SENTENCE)
    mask = masks if cfg.static_mask_density < 1 else None
    want = run_sentence(minilm, cfg, ids, arith="int", masks=mask)
    got = asyncio.run(Driver(GoldenAccelerator(cfg), cfg).run_sentence(minilm, ids, masks=mask))
    assert torch.equal(got.embedding, want.embedding)
    for layer, (g, w) in enumerate(zip(got.layers, want.layers)):
        assert (g.tokens, g.heads) == (w.alive_tokens, w.alive_heads), f"layer {layer}"
        assert g.counters["ROWS_RECOMPUTED"] == w.recomputed
        if mask is None:
            # bus bytes equal the traffic model's bits / 8 when rows fill whole bus words (minilm)
            assert g.counters["BYTES_READ"] == w.traffic.bits // 8, f"layer {layer}"


@pytest.mark.parametrize("register, value, error", [
    ("TOKEN_KEEP", 0, "ERR_KEEP"), ("HEAD_KEEP", (1 << 16) + 1, "ERR_KEEP"),
    ("VALUE_KEEP", 0, "ERR_SETTING"), ("LAYER", 6, "ERR_SETTING"), ("TOKENS", 0, "ERR_TOKENS"),
    ("TOKENS", MINILM.max_tokens + 1, "ERR_TOKENS")])
def test_bad_settings_are_refused(register, value, error):
    golden = GoldenAccelerator(MINILM)
    driver = Driver(golden, MINILM)

    async def run():
        await driver.write("TOKENS", 5)
        await driver.write(register, value)
        await driver.write("CTRL", driver.bit("CTRL", "START") | driver.bit("CTRL", "FIRST"))
        return await driver.read("STATUS")

    status = asyncio.run(run())
    assert status & driver.bit("STATUS", error) and not status & driver.bit("STATUS", "DONE")
    with pytest.raises(AcceleratorError, match=error):
        asyncio.run(driver.wait_done())
