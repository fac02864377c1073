"""Dispatcher: executes received frames on the register bus and the read-data path, queues replies."""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from spattn.hw.axi import AXI_DATA_BITS, RESP_DECERR, AXI4LiteSignature
from spattn.link import REPLY, WORD_BYTES, Command, ErrorCode

from .frame_rx import BODY_OFFSET, BUFFER_ADDR_BITS
from .layouts import MAX_BEATS, expected_read_layout, frame_layout, link_status_layout, reply_layout

__all__ = ["Dispatcher", "REPLY_QUEUE"]

#: Replies waiting for the transmitter.
REPLY_QUEUE = 4
#: Bytes of a register command's body that the dispatcher reads: address, then (REG_WRITE) value.
_REG_ARG_BYTES = 8


class Dispatcher(wiring.Component):
    """Executes each frame of the receiver, one at a time, in order; queues its reply.

    * ``REG_READ`` / ``REG_WRITE``: one AXI4-Lite read / write on ``m_axil`` (``wstrb`` all ones,
      ``*prot`` 0); the reply's status is the AXI response, its value ``rdata``. An address with
      bits above ``addr_bits`` reaches no register: DECERR (status 3), value 0, no bus access.
    * ``LINK_STATUS``: a reply whose counters the transmitter reads as it sends it.
    * ``MEM_DATA``: if it answers the oldest expected read (``expected``: same tag, ``4 * beats``
      data bytes), its words go out on ``read_data`` and ``expected`` is taken; else ERROR
      UNEXPECTED_DATA and nothing else happens.
    * a frame the receiver refused: its ERROR reply.

    Good replies wait for room in the reply queue (the transmitter always drains it). An ERROR
    reply never waits: with the queue full it is dropped and counted. The bank of a frame is
    released when the frame is done.

    Members
    -------
    frames : In(stream.Signature(:func:`~.layouts.frame_layout`))
    buffer : In(memory.ReadPort.Signature(addr_width=BUFFER_ADDR_BITS, shape=8))
        The receiver's buffer, read one byte per two cycles.
    release : Out(1)
        One cycle per good frame, when it is done with its bank.
    rx_dropped : In(1)
        The receiver dropped an error (counted as refused and dropped).
    m_axil : Out(AXI4LiteSignature(addr_bits))
    replies : Out(stream.Signature(:func:`~.layouts.reply_layout`))
        From a queue of :data:`REPLY_QUEUE`.
    expected : In(stream.Signature(:func:`~.layouts.expected_read_layout`))
    read_data : Out(stream.Signature(32))
        The words of accepted MEM_DATA frames. The memory bridge reserved room for them, so
        ``ready`` is high in practice; the dispatcher still waits for it.
    link_status : Out(:func:`~.layouts.link_status_layout`)
        ``frames_accepted``: frames executed (a MEM_DATA once matched); ``frames_refused``: frames
        answered (or due) an ERROR; ``replies_dropped``: ERROR replies dropped. 32 bits, wrapping.

    Latency: a register command takes about 20 cycles plus the bus; a MEM_DATA 9 cycles per word.
    """

    def __init__(self, addr_bits):
        self.addr_bits = addr_bits
        super().__init__({
            "frames": In(stream.Signature(frame_layout())),
            "buffer": In(memory.ReadPort.Signature(addr_width=BUFFER_ADDR_BITS, shape=8)),
            "release": Out(1),
            "rx_dropped": In(1),
            "m_axil": Out(AXI4LiteSignature(addr_bits)),
            "replies": Out(stream.Signature(reply_layout())),
            "expected": In(stream.Signature(expected_read_layout())),
            "read_data": Out(stream.Signature(AXI_DATA_BITS)),
            "link_status": Out(link_status_layout()),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.queue = queue = SyncFIFOBuffered(width=reply_layout().size, depth=REPLY_QUEUE)
        m.d.comb += [self.replies.valid.eq(queue.r_rdy), self.replies.payload.eq(queue.r_data),
                     queue.r_en.eq(self.replies.ready)]

        frame = Signal(frame_layout())
        reply = Signal(reply_layout())
        m.d.comb += queue.w_data.eq(reply)

        # The buffer read: ``offset`` is the byte being read; its data is there once ``settled``.
        offset = Signal(range(1 << (BUFFER_ADDR_BITS - 1)))
        settled = Signal()
        m.d.comb += self.buffer.addr.eq(Cat(offset, frame.bank))
        m.d.sync += settled.eq(1)
        byte = self.buffer.data

        def next_byte():
            m.d.sync += [offset.eq(offset + 1), settled.eq(0)]

        args = Signal(8 * _REG_ARG_BYTES)
        addr, value = args[:32], args[32:]
        bytes_left = Signal(range(_REG_ARG_BYTES + 1))
        word = Signal(AXI_DATA_BITS)
        words_left = Signal(range(MAX_BEATS + 1))
        word_bytes = Signal(range(WORD_BYTES))
        aw_done, w_done = Signal(), Signal()

        accepted, refused, dropped = Signal(), Signal(), Signal()
        status = self.link_status
        m.d.sync += [
            status.frames_accepted.eq(status.frames_accepted + accepted),
            status.frames_refused.eq(status.frames_refused + refused + self.rx_dropped),
            status.replies_dropped.eq(status.replies_dropped + dropped + self.rx_dropped),
        ]

        axil = self.m_axil
        m.d.comb += [axil.araddr.eq(addr), axil.awaddr.eq(addr), axil.wdata.eq(value),
                     axil.wstrb.eq(0b1111), self.read_data.payload.eq(word)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.frames.ready.eq(1)
                with m.If(self.frames.valid):
                    incoming = self.frames.payload
                    m.d.sync += [frame.eq(incoming), offset.eq(BODY_OFFSET), settled.eq(0),
                                 reply.seq.eq(incoming.seq), reply.cmd.eq(incoming.cmd | REPLY),
                                 reply.value.eq(0), bytes_left.eq(_REG_ARG_BYTES)]
                    with m.If(incoming.error != 0):
                        m.d.sync += [reply.cmd.eq(Command.ERROR), reply.status.eq(incoming.error),
                                     reply.value.eq(incoming.cmd)]
                        m.next = "ERROR"
                    with m.Elif(incoming.cmd == Command.LINK_STATUS):
                        m.d.comb += accepted.eq(1)
                        m.next = "REPLY"
                    with m.Elif(incoming.cmd == Command.MEM_DATA):
                        m.next = "MEM_TAG"
                    with m.Else():
                        m.d.comb += accepted.eq(1)
                        m.next = "FETCH"

            with m.State("FETCH"):
                with m.If(settled):
                    next_byte()
                    m.d.sync += [args.eq(Cat(args[8:], byte)), bytes_left.eq(bytes_left - 1)]
                    with m.If(bytes_left == 1):
                        m.next = "REG"
            with m.State("REG"):
                m.d.sync += [aw_done.eq(0), w_done.eq(0)]
                with m.If(addr[self.addr_bits:] != 0):
                    m.d.sync += reply.status.eq(RESP_DECERR)
                    m.next = "REPLY"
                with m.Elif(frame.cmd == Command.REG_READ):
                    m.next = "AR"
                with m.Else():
                    m.next = "AW"
            with m.State("AR"):
                m.d.comb += axil.arvalid.eq(1)
                with m.If(axil.arready):
                    m.next = "R"
            with m.State("R"):
                m.d.comb += axil.rready.eq(1)
                with m.If(axil.rvalid):
                    m.d.sync += [reply.status.eq(axil.rresp), reply.value.eq(axil.rdata)]
                    m.next = "REPLY"
            with m.State("AW"):
                m.d.comb += [axil.awvalid.eq(~aw_done), axil.wvalid.eq(~w_done)]
                aw_now = aw_done | axil.awready
                w_now = w_done | axil.wready
                m.d.sync += [aw_done.eq(aw_now), w_done.eq(w_now)]
                with m.If(aw_now & w_now):
                    m.next = "B"
            with m.State("B"):
                m.d.comb += axil.bready.eq(1)
                with m.If(axil.bvalid):
                    m.d.sync += reply.status.eq(axil.bresp)
                    m.next = "REPLY"
            with m.State("REPLY"):
                with m.If(queue.w_rdy):
                    m.d.comb += [queue.w_en.eq(1), self.release.eq(1)]
                    m.next = "IDLE"

            with m.State("MEM_TAG"):
                expected = self.expected.payload
                fits = self.expected.valid & (frame.length == expected.beats * WORD_BYTES + 1)
                with m.If(settled):
                    with m.If(fits & (byte == expected.tag)):
                        next_byte()
                        m.d.comb += [self.expected.ready.eq(1), accepted.eq(1)]
                        m.d.sync += [words_left.eq(expected.beats), word_bytes.eq(0)]
                        m.next = "MEM_COPY"
                    with m.Else():
                        m.d.comb += self.release.eq(1)
                        m.d.sync += [reply.cmd.eq(Command.ERROR), reply.value.eq(frame.cmd),
                                     reply.status.eq(ErrorCode.UNEXPECTED_DATA)]
                        m.next = "ERROR"
            with m.State("MEM_COPY"):
                with m.If(settled):
                    next_byte()
                    m.d.sync += [word.eq(Cat(word[8:], byte)), word_bytes.eq(word_bytes + 1)]
                    with m.If(word_bytes == WORD_BYTES - 1):
                        m.next = "MEM_PUSH"
            with m.State("MEM_PUSH"):
                m.d.comb += self.read_data.valid.eq(1)
                with m.If(self.read_data.ready):
                    m.d.sync += words_left.eq(words_left - 1)
                    m.next = "MEM_COPY"
                    with m.If(words_left == 1):
                        m.d.comb += self.release.eq(1)
                        m.next = "IDLE"

            with m.State("ERROR"):
                m.d.comb += [refused.eq(1), dropped.eq(~queue.w_rdy), queue.w_en.eq(queue.w_rdy)]
                m.next = "IDLE"
        return m
