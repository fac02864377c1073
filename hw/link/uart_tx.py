"""UART transmitter, 8N1."""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .uart_rx import MIN_CLOCKS_PER_BIT

__all__ = ["UartTx"]


class UartTx(wiring.Component):
    """Bytes onto an 8N1 serial line (start bit 0, 8 data bits LSB first, stop bit 1).

    Parameters
    ----------
    clocks_per_bit : int
        Clock cycles per bit, at least :data:`~.uart_rx.MIN_CLOCKS_PER_BIT`.

    Members
    -------
    i : In(stream.Signature(8))
        Bytes to send. ``ready`` is high while the transmitter is idle.
    tx : Out(1, init=1)
        The line, from a register; idle (and in reset) high.

    Timing: the start bit begins the cycle after a byte is taken; a byte takes 10 bit times, and
    ``ready`` is high again in the last cycle of its stop bit, so bytes go back to back.
    """

    def __init__(self, clocks_per_bit):
        if not isinstance(clocks_per_bit, int) or clocks_per_bit < MIN_CLOCKS_PER_BIT:
            raise ValueError(f"clocks_per_bit must be an integer of at least {MIN_CLOCKS_PER_BIT}, "
                             f"not {clocks_per_bit!r}")
        self.clocks_per_bit = clocks_per_bit
        super().__init__({"i": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.clocks_per_bit))
        bits_left = Signal(range(10))        # bits after the one on the line
        frame = Signal(9, init=0x1FF)        # data bits then the stop bit, shifted out from bit 0

        m.d.comb += self.i.ready.eq((bits_left == 0) & (timer == 0))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [self.tx.eq(0), frame.eq(Cat(self.i.payload, Const(1, 1))),
                         bits_left.eq(9), timer.eq(self.clocks_per_bit - 1)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Elif(bits_left != 0):
            m.d.sync += [self.tx.eq(frame[0]), frame.eq(Cat(frame[1:], Const(1, 1))),
                         bits_left.eq(bits_left - 1), timer.eq(self.clocks_per_bit - 1)]
        return m
