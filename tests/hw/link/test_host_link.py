"""HostLink's construction: its parameters come from the config, and a config whose bursts do not
fit in a frame is refused with the row and its size."""

import dataclasses

import pytest

from spattn.config import ConfigError, preset
from spattn.hw.accelerator import Accelerator
from spattn.hw.link import HostLink


def test_parameters_come_from_the_config():
    cfg = preset("minilm")
    link = HostLink(cfg)
    assert link.clocks_per_bit == cfg.link_clocks_per_bit == 20
    assert link.m_axil.signature.addr_bits == Accelerator(cfg).s_axil.signature.addr_bits


# the refused object exists (Elaboratable.__new__ ran) but is never elaborated
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_a_burst_over_max_data_is_refused_naming_the_row():
    cfg = dataclasses.replace(preset("default"), max_tokens=4096)
    with pytest.raises(ConfigError, match="the mask row burst of config 'default' is 512 bytes"):
        HostLink(cfg)
