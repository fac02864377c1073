"""Frame transmitter: replies and the board's memory frames, with CRC-32, as frame bytes."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spattn.hw.axi import AXI_DATA_BITS
from spattn.link import CRC_BYTES, ERROR_LENGTH, REPLY, REPLY_LENGTHS, WORD_BYTES, Command

from .crc32 import Crc32
from .layouts import (MAX_BEATS, link_status_layout, mem_read_layout, mem_write_layout,
                      reply_layout)
from .memory_bridge import WRITE_BUFFER_ADDR_BITS
from .slip_tx import frame_byte_layout

__all__ = ["FrameTransmitter"]

#: seq and cmd.
_HEAD_BYTES = 2
#: The longest fixed part of a frame (seq, cmd, LINK_STATUS counters), held in a shift register.
_FIXED_BYTES = _HEAD_BYTES + max(REPLY_LENGTHS.values())


class FrameTransmitter(wiring.Component):
    """Sends one frame at a time: seq, cmd, body, then the CRC-32 of those (little-endian), as a
    stream of frame bytes with ``last`` on the final CRC byte.

    Sources, by priority when the transmitter is free: ``replies`` (the host waits for them), then
    ``mem_write``, then ``mem_read``. Replies keep the seq of their command; MEM_WRITE and MEM_READ
    frames carry the transmitter's own seq, which counts them. A LINK_STATUS reply carries
    ``link_status`` as it is when the frame starts.

    Members
    -------
    replies : In(stream.Signature(:func:`~.layouts.reply_layout`))
    mem_read : In(stream.Signature(:func:`~.layouts.mem_read_layout`))
    mem_write : In(stream.Signature(:func:`~.layouts.mem_write_layout`))
    write_buffer : In(memory.ReadPort.Signature(addr_width=WRITE_BUFFER_ADDR_BITS, shape=32))
        The data of ``mem_write``, read one word per ``WORD_BYTES`` bytes sent.
    write_sent : Out(1)
        One cycle when the last byte of a MEM_WRITE frame is handed to ``o``.
    link_status : In(:func:`~.layouts.link_status_layout`)
    o : Out(stream.Signature(:func:`~.slip_tx.frame_byte_layout`))
        From registers.

    Throughput: one byte per cycle while ``o`` is ready, plus one cycle per frame and per MEM_WRITE
    word; latency from a source's ``valid`` to the first byte: 2 cycles.
    """

    replies: In(stream.Signature(reply_layout()))
    mem_read: In(stream.Signature(mem_read_layout()))
    mem_write: In(stream.Signature(mem_write_layout()))
    write_buffer: In(memory.ReadPort.Signature(addr_width=WRITE_BUFFER_ADDR_BITS, shape=AXI_DATA_BITS))
    write_sent: Out(1)
    link_status: In(link_status_layout())
    o: Out(stream.Signature(frame_byte_layout()))

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = Crc32()

        fixed = Signal(8 * _FIXED_BYTES)           # bytes still to send, from bit 0
        fixed_left = Signal(range(_FIXED_BYTES + 1))
        words = Signal(range(MAX_BEATS + 1))       # data words of this frame (MEM_WRITE)
        word_index = Signal(range(MAX_BEATS))
        byte_index = Signal(range(WORD_BYTES))
        word_ready = Signal()                      # write_buffer.data holds word_index
        is_write = Signal()
        board_seq = Signal(8)

        m.d.comb += [self.write_buffer.addr.eq(word_index), crc.data.eq(self.o.payload.data)]
        m.d.sync += word_ready.eq(1)
        free = ~self.o.valid | self.o.ready
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        def emit(byte, last=0):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.data.eq(byte), self.o.payload.last.eq(last)]

        # The CRC takes each byte of seq, cmd and body as it enters the output register.
        in_crc = Signal()
        m.d.sync += in_crc.eq(0)
        m.d.comb += crc.en.eq(in_crc)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += crc.clear.eq(1)
                m.d.sync += [word_index.eq(0), byte_index.eq(0), words.eq(0)]
                reply, write, read = self.replies.payload, self.mem_write.payload, self.mem_read.payload
                with m.If(self.replies.valid):
                    m.d.comb += self.replies.ready.eq(1)
                    m.d.sync += is_write.eq(0)
                    with m.If(reply.cmd == Command.LINK_STATUS | REPLY):
                        m.d.sync += [fixed.eq(Cat(reply.seq, reply.cmd, self.link_status)),
                                     fixed_left.eq(_HEAD_BYTES + REPLY_LENGTHS[Command.LINK_STATUS])]
                    with m.Else():
                        length = _HEAD_BYTES + ERROR_LENGTH
                        for command in (Command.REG_READ, Command.REG_WRITE):
                            length = Mux(reply.cmd == command | REPLY,
                                         _HEAD_BYTES + REPLY_LENGTHS[command], length)
                        m.d.sync += [fixed.eq(Cat(reply.seq, reply.cmd, reply.status, reply.value)),
                                     fixed_left.eq(length)]
                    m.next = "FIXED"
                with m.Elif(self.mem_write.valid):
                    m.d.comb += self.mem_write.ready.eq(1)
                    m.d.sync += [fixed.eq(Cat(board_seq, Const(Command.MEM_WRITE, 8), write.addr)),
                                 fixed_left.eq(_HEAD_BYTES + 4), words.eq(write.beats),
                                 board_seq.eq(board_seq + 1), is_write.eq(1)]
                    m.next = "FIXED"
                with m.Elif(self.mem_read.valid):
                    m.d.comb += self.mem_read.ready.eq(1)
                    m.d.sync += [fixed.eq(Cat(board_seq, Const(Command.MEM_READ, 8), read.tag, read.addr,
                                              (read.beats * WORD_BYTES).as_unsigned()[:16])),
                                 fixed_left.eq(_HEAD_BYTES + 1 + 4 + 2),
                                 board_seq.eq(board_seq + 1), is_write.eq(0)]
                    m.next = "FIXED"
            with m.State("FIXED"):
                with m.If(free):
                    emit(fixed[:8])
                    m.d.sync += [fixed.eq(fixed >> 8), fixed_left.eq(fixed_left - 1), in_crc.eq(1)]
                    with m.If(fixed_left == 1):
                        m.next = "CRC_LOAD"
                        with m.If(words != 0):
                            m.next = "DATA"
            with m.State("DATA"):
                with m.If(free & word_ready):
                    emit(self.write_buffer.data.word_select(byte_index, 8))
                    m.d.sync += [byte_index.eq(byte_index + 1), in_crc.eq(1)]
                    with m.If(byte_index == WORD_BYTES - 1):
                        m.d.sync += [word_index.eq(word_index + 1), word_ready.eq(0)]
                        with m.If(word_index == words - 1):
                            m.next = "CRC_LOAD"
            with m.State("CRC_LOAD"):
                with m.If(~in_crc):   # the CRC has taken the last byte
                    m.d.sync += [fixed.eq(crc.crc), fixed_left.eq(CRC_BYTES)]
                    m.next = "CRC"
            with m.State("CRC"):
                with m.If(free):
                    last = fixed_left == 1
                    emit(fixed[:8], last)
                    m.d.sync += [fixed.eq(fixed >> 8), fixed_left.eq(fixed_left - 1)]
                    with m.If(last):
                        m.d.comb += self.write_sent.eq(is_write)
                        m.next = "IDLE"
        return m
