"""The attention core's generation-time side: the limits it checks, its ports and their widths."""

import dataclasses
import json

import pytest
from amaranth.hdl import Shape

from spattn.config import ConfigError, preset
from spattn.formats import VALUE_KEEP_FRAC, AttentionFormats
from spattn.gen.verilog import generate
from spattn.hw.attention import (attention_command_layout, mask_request_layout, mem_response_layout,
                                 out_layout, probs_layout)
from spattn.hw.pe_array import PEArray

TINY = preset("tiny")


def test_accumulator_must_hold_pv():
    # 2**7 * (2**11 + 64) needs 20 bits of magnitude: 21 signed bits.
    with pytest.raises(ConfigError, match=r"acc_bits must be at least 21 to accumulate P·V over 64 "
                                          r"tokens, not 20"):
        dataclasses.replace(TINY, max_tokens=64, score_bits=13, acc_bits=20)


def test_pe_operands_cannot_be_narrower_than_activations():
    with pytest.raises(ConfigError, match=r"operand_bits must be an integer of at least act_bits = 8, not 6"):
        PEArray(TINY, operand_bits=6)


def test_generated_ports(tmp_path):
    _, manifest_path = generate(TINY, tmp_path, block="attention")
    ports = {port["name"]: port for port in json.loads(manifest_path.read_text())["ports"]}
    fmt = AttentionFormats.of(TINY)
    # n, three flags, a threshold able to exceed every probability, a keep ratio able to be 1.0,
    # a DynaTran threshold able to exceed every |value|
    assert ports["cmd__payload"]["width"] == Shape.cast(attention_command_layout(TINY)).width == \
        7 + 3 + (fmt.prob.bits + 1) + (VALUE_KEEP_FRAC + 1) + TINY.act_bits
    # one plane row of head_dim lanes, each as wide as the wider plane
    assert ports["mem_resp__payload"]["width"] == Shape.cast(mem_response_layout(TINY)).width == 16 * 6
    assert ports["mask__payload"]["width"] == TINY.max_tokens
    assert ports["mask_req__payload"]["width"] == Shape.cast(mask_request_layout(TINY)).width == 6
    assert ports["probs__payload"]["width"] == Shape.cast(probs_layout(TINY)).width
    assert ports["out__payload"]["width"] == Shape.cast(out_layout(TINY)).width == 6 + 16 * 8 + 12 + 1
    for counter in ("busy_cycles", "bytes_fetched", "rows_recomputed", "pe_busy_cycles", "pe_macs"):
        assert ports[counter]["direction"] == "output"
