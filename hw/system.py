"""The accelerator system of a board: the accelerator behind the host link, on two UART pins."""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect

from spattn.config import AccelConfig

from .accelerator import Accelerator
from .link.host_link import HostLink

__all__ = ["AcceleratorSystem"]


class AcceleratorSystem(wiring.Component):
    """:class:`~.accelerator.Accelerator` whose registers and memory are reached over a UART.

    The :class:`~.link.host_link.HostLink` turns the host's frames (:mod:`spattn.link`) into
    AXI4-Lite register accesses, and the accelerator's AXI4 memory bursts into frames the host
    answers: the host is the memory. Nothing else is in here, so a board top adds only its clock,
    reset and pins, and a simulation drives exactly what the board runs.

    Members
    -------
    rx : In(1)
        UART from the host (8N1 at ``cfg.link_baud``, ``cfg.link_clocks_per_bit`` cycles per bit;
        idle high).
    tx : Out(1)
        UART to the host.
    irq : Out(1)
        The accelerator's STATUS.DONE (for an LED).
    """

    rx: In(1)
    tx: Out(1)
    irq: Out(1)

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.accelerator = accelerator = Accelerator(self.cfg)
        m.submodules.link = link = HostLink(self.cfg)
        connect(m, link.m_axil, accelerator.s_axil)
        connect(m, accelerator.m_axi, link.s_axi)
        m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx), self.irq.eq(accelerator.irq)]
        return m
