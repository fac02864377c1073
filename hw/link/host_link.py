"""The board's host link: the accelerator's registers and memory, over the USB UART."""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect

from spattn.config import AccelConfig, ConfigError
from spattn.hw.accelerator import LIST_BURST_WORDS, MAX_READS
from spattn.hw.axi import AXI4LiteSignature, AXI4Signature
from spattn.hw.registers import accelerator_registers
from spattn.link import MAX_DATA
from spattn.memmap import BUS_BYTES, MemoryMap

from .dispatcher import Dispatcher
from .frame_rx import FrameReceiver
from .frame_tx import FrameTransmitter
from .memory_bridge import MemoryBridge
from .slip_rx import SlipRx
from .slip_tx import SlipTx
from .uart_rx import UartRx
from .uart_tx import UartTx

__all__ = ["HostLink", "burst_bytes"]


def burst_bytes(cfg: AccelConfig):
    """Bytes of the largest burst of each kind of row the accelerator moves, by row name."""
    mm = MemoryMap(cfg)
    return {**{f"{plane} plane row": mm.plane_row[plane].bus_bytes for plane in mm.PLANES},
            "mask row": mm.mask_row.bus_bytes, "out row": mm.out_row.bus_bytes,
            "alive list burst": LIST_BURST_WORDS * BUS_BYTES}


class HostLink(wiring.Component):
    """The host PC drives the accelerator through the UART with the frames of :mod:`spattn.link`:
    register frames become AXI4-Lite transfers on ``m_axil``, and the accelerator's memory bursts
    on ``s_axi`` become MEM_READ / MEM_WRITE frames that the host serves.

    UART RX → SLIP decoder → :class:`~.frame_rx.FrameReceiver` (two frame buffers, checks) →
    :class:`~.dispatcher.Dispatcher` (registers, MEM_DATA, reply queue);
    :class:`~.memory_bridge.MemoryBridge` (``s_axi``); :class:`~.frame_tx.FrameTransmitter` →
    SLIP encoder → UART TX.

    Parameters
    ----------
    cfg : AccelConfig
        ``cfg.link_clocks_per_bit`` sets the UART; the register address width is the
        accelerator's. A config whose largest burst exceeds :data:`spattn.link.MAX_DATA` raises
        :class:`~spattn.config.ConfigError` naming the row and its size.

    Members
    -------
    rx : In(1, init=1)
        From the host (asynchronous). Never back-pressured: every byte is taken.
    tx : Out(1, init=1)
        To the host.
    m_axil : Out(AXI4LiteSignature(addr_bits))
        To the accelerator's registers; one transfer at a time.
    s_axi : In(AXI4Signature())
        From the accelerator's memory port.

    Guarantees
    ----------
    * Every host frame but an accepted MEM_DATA gets one reply or ERROR, with its seq, in the order
      the frames came; an ERROR is dropped (and counted) only when the reply queue is full.
    * Two frame buffers: a frame that arrives while both hold frames still being executed gets
      ERROR OVERRUN. A host that waits for each reply never sees it.
    * Up to 8 reads outstanding, and at most 128 words of them (two full bursts): room for their
      data is reserved before their MEM_READ goes out, so a MEM_DATA never waits.
    * B of a write burst comes once its MEM_WRITE frame is handed to the transmitter whole, so
      every frame the board sends later (a register reply included) is on the wire after it.
    * AXI requests the host cannot serve (bursts over MAX_DATA bytes, partial ``wstrb``, narrow
      or non-INCR bursts) get SLVERR on every beat and send no frame. Nothing waits forever on
      the host except the bus transfer that needs it.
    """

    def __init__(self, cfg: AccelConfig):
        for row, size in burst_bytes(cfg).items():
            if size > MAX_DATA:
                raise ConfigError(f"the host link moves at most MAX_DATA = {MAX_DATA} bytes per burst, "
                                  f"but the {row} burst of config {cfg.name!r} is {size} bytes")
        self.cfg = cfg
        self.clocks_per_bit = cfg.link_clocks_per_bit
        self.reg_addr_bits = accelerator_registers(cfg).addr_bits
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "m_axil": Out(AXI4LiteSignature(self.reg_addr_bits)),
            "s_axi": In(AXI4Signature()),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = uart_rx = UartRx(self.clocks_per_bit)
        m.submodules.slip_rx = slip_rx = SlipRx()
        m.submodules.receiver = receiver = FrameReceiver()
        m.submodules.dispatcher = dispatcher = Dispatcher(self.reg_addr_bits)
        m.submodules.bridge = bridge = MemoryBridge(max_reads=MAX_READS)
        m.submodules.transmitter = transmitter = FrameTransmitter()
        m.submodules.slip_tx = slip_tx = SlipTx()
        m.submodules.uart_tx = uart_tx = UartTx(self.clocks_per_bit)

        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx),
                     dispatcher.rx_dropped.eq(receiver.dropped), receiver.release.eq(dispatcher.release),
                     transmitter.link_status.eq(dispatcher.link_status),
                     bridge.write_sent.eq(transmitter.write_sent)]
        connect(m, uart_rx.o, slip_rx.i)
        connect(m, slip_rx.o, receiver.i)
        connect(m, receiver.frames, dispatcher.frames)
        connect(m, receiver.buffer, dispatcher.buffer)
        connect(m, dispatcher.m_axil, wiring.flipped(self.m_axil))
        connect(m, wiring.flipped(self.s_axi), bridge.axi)
        connect(m, bridge.expected, dispatcher.expected)
        connect(m, dispatcher.read_data, bridge.read_data)
        connect(m, dispatcher.replies, transmitter.replies)
        connect(m, bridge.mem_read, transmitter.mem_read)
        connect(m, bridge.mem_write, transmitter.mem_write)
        connect(m, bridge.write_buffer, transmitter.write_buffer)
        connect(m, transmitter.o, slip_tx.i)
        connect(m, slip_tx.o, uart_tx.i)
        return m
