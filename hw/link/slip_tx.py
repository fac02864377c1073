"""SLIP (RFC 1055) encoder."""

from amaranth.hdl import Module, Mux
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spattn.link import END, ESC, ESC_END, ESC_ESC

__all__ = ["SlipTx", "frame_byte_layout"]


def frame_byte_layout():
    """A byte of a frame; ``last`` marks the frame's final byte."""
    return data.StructLayout({"data": 8, "last": 1})


class SlipTx(wiring.Component):
    """Frames → SLIP-encoded bytes, as :func:`spattn.link.slip_encode`: ``END``, the frame's bytes
    with ``END`` and ``ESC`` escaped, ``END``.

    Members
    -------
    i : In(stream.Signature(:func:`frame_byte_layout`))
        Frame bytes; a frame is at least one byte.
    o : Out(stream.Signature(8))
        The encoded bytes.

    ``o`` is combinational from ``i`` and the encoder's state. Throughput: one output byte per
    cycle; a frame of n bytes, e of them escaped, takes n + e + 2 output bytes.
    """

    i: In(stream.Signature(frame_byte_layout()))
    o: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        byte = self.i.payload.data
        special = (byte == END) | (byte == ESC)
        sent = self.o.valid & self.o.ready

        with m.FSM():
            with m.State("OPEN"):
                m.d.comb += [self.o.valid.eq(self.i.valid), self.o.payload.eq(END)]
                with m.If(sent):
                    m.next = "BYTE"
            with m.State("BYTE"):
                m.d.comb += [self.o.valid.eq(self.i.valid), self.o.payload.eq(Mux(special, ESC, byte))]
                with m.If(sent):
                    with m.If(special):
                        m.next = "ESCAPED"
                    with m.Else():
                        m.d.comb += self.i.ready.eq(1)
                        with m.If(self.i.payload.last):
                            m.next = "CLOSE"
            with m.State("ESCAPED"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(Mux(byte == END, ESC_END, ESC_ESC))]
                with m.If(sent):
                    m.d.comb += self.i.ready.eq(1)
                    m.next = "BYTE"
                    with m.If(self.i.payload.last):
                        m.next = "CLOSE"
            with m.State("CLOSE"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(END)]
                with m.If(sent):
                    m.next = "OPEN"
        return m
