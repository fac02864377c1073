"""UART receiver, 8N1."""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UartRx", "MIN_CLOCKS_PER_BIT"]

#: Fewest clock cycles per bit: the receiver samples each bit in its middle.
MIN_CLOCKS_PER_BIT = 4


class UartRx(wiring.Component):
    """Bytes from an asynchronous 8N1 serial line (start bit 0, 8 data bits LSB first, stop bit 1).

    Parameters
    ----------
    clocks_per_bit : int
        Clock cycles per bit, at least :data:`MIN_CLOCKS_PER_BIT`.

    Members
    -------
    rx : In(1, init=1)
        The line, asynchronous: it passes a two-flop synchroniser first.
    o : Out(stream.Signature(8))
        Each byte received. The line cannot wait: ``valid`` stays high until ``ready`` or until the
        next byte replaces it (about one byte time); a consumer must keep up.
    framing_error : Out(1)
        High for one cycle when a byte's stop bit is 0; that byte is dropped and the receiver waits
        for the line to be idle (1) before it looks for the next start bit, so a held break makes
        one error, not a stream of zero bytes.

    Timing: a falling edge starts a byte; the start bit is checked half a bit later (a glitch
    shorter than that is ignored) and every bit is sampled one bit time after the previous one.
    ``o.valid`` rises about 9.5 bit times (+ 3 cycles) after the start bit's falling edge.
    """

    def __init__(self, clocks_per_bit):
        if not isinstance(clocks_per_bit, int) or clocks_per_bit < MIN_CLOCKS_PER_BIT:
            raise ValueError(f"clocks_per_bit must be an integer of at least {MIN_CLOCKS_PER_BIT}, "
                             f"not {clocks_per_bit!r}")
        self.clocks_per_bit = clocks_per_bit
        super().__init__({"rx": In(1, init=1), "o": Out(stream.Signature(8)), "framing_error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)

        timer = Signal(range(self.clocks_per_bit))
        bits_left = Signal(range(9))
        shift = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        m.d.sync += self.framing_error.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(self.clocks_per_bit // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):   # back high by mid-bit: a glitch, not a start bit
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [timer.eq(self.clocks_per_bit - 1), bits_left.eq(8)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += timer.eq(self.clocks_per_bit - 1)
                    with m.If(bits_left != 0):
                        m.d.sync += [shift.eq(Cat(shift[1:], line)),
                                     bits_left.eq(bits_left - 1)]
                    with m.Elif(line):
                        m.d.sync += [self.o.payload.eq(shift), self.o.valid.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += self.framing_error.eq(1)
                        m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        return m
