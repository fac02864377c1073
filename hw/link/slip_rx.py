"""SLIP (RFC 1055) decoder."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spattn.link import END, ESC, ESC_END, ESC_ESC

__all__ = ["SlipRx", "slip_symbol_layout"]


def slip_symbol_layout():
    """A decoded SLIP symbol: a frame byte (``end`` 0) or the end of a frame (``end`` 1).

    ``bad_escape`` on a byte: it followed ``ESC`` and was neither ``ESC_END`` nor ``ESC_ESC`` (the
    byte is passed on as received); on an end: the frame ended right after an ``ESC``.
    """
    return data.StructLayout({"data": 8, "end": 1, "bad_escape": 1})


class SlipRx(wiring.Component):
    """Bytes of a SLIP-encoded line → frame bytes and frame ends, as :class:`spattn.link.FrameDecoder`
    reads them.

    Members
    -------
    i : In(stream.Signature(8))
        The encoded bytes.
    o : Out(stream.Signature(:func:`slip_symbol_layout`))
        One symbol for each input byte but ``ESC`` (which only sets the escape for the next byte);
        every ``END`` gives an end, also the second of two in a row (an empty frame: the consumer
        ignores it).

    Latency 0 (``o`` is combinational from ``i``; ``i.ready`` is ``o.ready``, or 1 for an ``ESC``);
    throughput one byte per cycle.
    """

    i: In(stream.Signature(8))
    o: Out(stream.Signature(slip_symbol_layout()))

    def elaborate(self, platform):
        m = Module()
        escaped = Signal()   # the previous byte of this frame was ESC
        byte = self.i.payload
        is_end, is_esc = byte == END, byte == ESC
        m.d.comb += [
            self.o.valid.eq(self.i.valid & (escaped | ~is_esc)),
            self.i.ready.eq(self.o.ready | (~escaped & is_esc)),
            self.o.payload.end.eq(is_end),
            self.o.payload.data.eq(Mux(escaped & (byte == ESC_END), END,
                                       Mux(escaped & (byte == ESC_ESC), ESC, byte))),
            self.o.payload.bad_escape.eq(escaped & (is_end | ((byte != ESC_END) & (byte != ESC_ESC)))),
        ]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += escaped.eq(~escaped & is_esc)
        return m
