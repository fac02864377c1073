"""The PE array's constructor: parameter checks with clear messages, signature and generated ports."""

import json

import pytest
from amaranth.hdl import Shape

from spattn.config import ConfigError, preset
from spattn.formats import Overflow
from spattn.gen.verilog import BLOCKS, generate
from spattn.hw.pe_array import (COUNTER_BITS, DATAFLOWS, PE_ARRAY_VARIANTS, PEArray, a_beat_layout,
                                matmul_command_layout, result_layout)

TINY = preset("tiny")


def built(component):
    """A component only inspected, never elaborated (no "created but never used" warning)."""
    component._MustUse__silence = True
    return component


@pytest.mark.parametrize("kwargs, message", [
    ({"dataflow": "row_stationary"},
     r"dataflow must be one of \['output_stationary', 'weight_stationary'\], not 'row_stationary'"),
    ({"k_tile": 0}, r"k_tile must be in 1\.\.max_tokens = 1\.\.64, not 0"),
    ({"k_tile": 65}, r"k_tile must be in 1\.\.max_tokens = 1\.\.64, not 65"),
    ({"overflow": "wrap"}, r"overflow must be an Overflow, not 'wrap'"),
])
def test_impossible_parameters_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PEArray(TINY, **kwargs)


def test_accumulator_widths():
    assert built(PEArray(TINY)).acc_width == TINY.acc_bits
    # Saturation clamps the exact sum: guard bits for max_tokens products of two 8-bit values.
    assert built(PEArray(TINY, overflow=Overflow.SATURATE)).acc_width == 2 * 8 + 7


def test_every_variant_is_a_block():
    assert set(DATAFLOWS) == {v["dataflow"] for v in PE_ARRAY_VARIANTS.values()}
    for name, params in PE_ARRAY_VARIANTS.items():
        component = built(BLOCKS[name](TINY))
        assert (component.dataflow, component.k_tile, component.overflow) == \
            (params["dataflow"], params["k_tile"], params["overflow"])


def test_generated_ports(tmp_path):
    _, manifest_path = generate(TINY, tmp_path, block="pe_array_ws")
    ports = {port["name"]: port for port in json.loads(manifest_path.read_text())["ports"]}
    assert ports["cmd__payload"]["width"] == Shape.cast(matmul_command_layout(TINY)).width == 3 * 7 + 8
    assert ports["a__payload"] == {"name": "a__payload", "direction": "input",
                                   "width": Shape.cast(a_beat_layout(TINY)).width}
    assert ports["result__payload"]["width"] == Shape.cast(result_layout(TINY)).width == 2 * 20 + 1
    for counter in ("busy_cycles", "load_cycles", "skipped_tiles", "macs"):
        assert ports[counter] == {"name": counter, "direction": "output", "width": COUNTER_BITS}
