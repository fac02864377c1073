"""Frame receiver: SLIP symbols into a double-buffered frame memory, checked as the host's decoder does."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from spattn.link import BODY_LENGTHS, MAX_DATA, MAX_FRAME, MIN_FRAME, WORD_BYTES, Command, ErrorCode

from .crc32 import CRC32_RESIDUE, Crc32
from .layouts import BANK_BYTES, BANKS, frame_layout
from .slip_rx import slip_symbol_layout

__all__ = ["FrameReceiver", "BUFFER_ADDR_BITS", "BODY_OFFSET"]

#: Address bits of the receive buffer: bank, then byte within the bank.
BUFFER_ADDR_BITS = (BANKS * BANK_BYTES - 1).bit_length()
#: A frame's body starts after seq and cmd.
BODY_OFFSET = 2
#: Frame descriptors queued for the dispatcher. Two entries are kept for good frames (one per
#: bank), so a good frame always finds room; an error finds room only in the others.
DESCRIPTORS = 4


def _length_fits(cmd, count):
    """Whether a frame of ``count`` bytes has a body of the length that ``cmd`` needs (None: not a
    host command); the rules of :func:`spattn.link.check_command`."""
    fits = None
    for command, length in BODY_LENGTHS.items():
        if length is None:   # MEM_DATA: tag, then whole words
            data_bytes = count - (MIN_FRAME + 1)
            ok = ((data_bytes >= WORD_BYTES) & (data_bytes <= MAX_DATA)
                  & (data_bytes[:(WORD_BYTES - 1).bit_length()] == 0))
        else:
            ok = count == MIN_FRAME + length
        fits = Mux(cmd == command, ok, 0 if fits is None else fits)
    return fits


class FrameReceiver(wiring.Component):
    """Receives frames from SLIP symbols, stores them and checks them in the order of
    :mod:`spattn.link`: escapes, length, CRC (as :class:`spattn.link.FrameDecoder`), a free buffer
    (``OVERRUN``), command and body length (as :func:`spattn.link.check_command`).

    The buffer has :data:`~.layouts.BANKS` banks of one frame each. A frame starts filling the
    next bank in turn if it is free; a good frame is handed over with its bank, which stays taken
    until ``release``; a frame that started while that bank was taken is answered ``OVERRUN``.
    Banks are released in the order their frames were handed over.

    Members
    -------
    i : In(stream.Signature(:func:`~.slip_rx.slip_symbol_layout`))
        ``ready`` is always 1: the line cannot wait, and nothing here makes it.
    frames : Out(stream.Signature(:func:`~.layouts.frame_layout`))
        One descriptor per non-empty frame, from a queue of :data:`DESCRIPTORS`.
    buffer : Out(memory.ReadPort.Signature(addr_width=BUFFER_ADDR_BITS, shape=8))
        The receive buffer (address: bank, then byte), one cycle read latency.
    release : In(1)
        The oldest handed-over bank is free again.
    dropped : Out(1)
        High for one cycle when an error descriptor is dropped because the queue has no room
        for it (the dispatcher has fallen behind on good frames).

    Latency: a frame's descriptor is in the queue the cycle after its end symbol.
    """

    i: In(stream.Signature(slip_symbol_layout()))
    frames: Out(stream.Signature(frame_layout()))
    buffer: Out(memory.ReadPort.Signature(addr_width=BUFFER_ADDR_BITS, shape=8))
    release: In(1)
    dropped: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=8, depth=BANKS * BANK_BYTES, init=[])
        m.submodules.crc = crc = Crc32()
        m.submodules.queue = queue = SyncFIFO(width=frame_layout().size, depth=DESCRIPTORS)
        write, read = mem.write_port(), mem.read_port()
        m.d.comb += [read.addr.eq(self.buffer.addr), read.en.eq(self.buffer.en),
                     self.buffer.data.eq(read.data)]

        count = Signal(range(MAX_FRAME + 1))   # bytes of this frame, saturating at MAX_FRAME
        too_long, bad_escape, no_bank = Signal(), Signal(), Signal()
        seq, cmd = Signal(8), Signal(8)
        busy = Signal(BANKS)                   # banks handed over and not released
        fill_bank, release_bank = Signal(range(BANKS)), Signal(range(BANKS))

        symbol = self.i.payload
        m.d.comb += self.i.ready.eq(1)
        byte_in = self.i.valid & ~symbol.end
        end_in = self.i.valid & symbol.end
        # whether this frame has no bank: decided at its first byte, kept to its end
        bank_taken = Mux(count == 0, busy.bit_select(fill_bank, 1), no_bank)

        m.d.comb += [
            write.addr.eq(Cat(count[:BUFFER_ADDR_BITS - 1], fill_bank)),
            write.data.eq(symbol.data),
            write.en.eq(byte_in & (count < MAX_FRAME) & ~bank_taken),
            crc.data.eq(symbol.data), crc.en.eq(byte_in), crc.clear.eq(end_in),
        ]
        with m.If(byte_in):
            m.d.sync += [bad_escape.eq(bad_escape | symbol.bad_escape), no_bank.eq(bank_taken)]
            with m.If(count < MAX_FRAME):
                m.d.sync += count.eq(count + 1)
            with m.Else():
                m.d.sync += too_long.eq(1)
            with m.If(count == 0):
                m.d.sync += seq.eq(symbol.data)
            with m.If(count == 1):
                m.d.sync += cmd.eq(symbol.data)

        escape_error = bad_escape | symbol.bad_escape
        known = 0
        for command in BODY_LENGTHS:
            known = known | (cmd == command)
        code = Signal(range(max(ErrorCode) + 1))
        with m.If(escape_error):
            m.d.comb += code.eq(ErrorCode.BAD_ESCAPE)
        with m.Elif(too_long):
            m.d.comb += code.eq(ErrorCode.TOO_LONG)
        with m.Elif(count < MIN_FRAME):
            m.d.comb += code.eq(ErrorCode.TOO_SHORT)
        with m.Elif(crc.crc != CRC32_RESIDUE):
            m.d.comb += code.eq(ErrorCode.BAD_CRC)
        with m.Elif(no_bank):
            m.d.comb += code.eq(ErrorCode.OVERRUN)
        with m.Elif(~known):
            m.d.comb += code.eq(ErrorCode.UNKNOWN_COMMAND)
        with m.Elif(~_length_fits(cmd, count)):
            m.d.comb += code.eq(ErrorCode.BAD_LENGTH)

        frame = Signal(frame_layout())
        m.d.comb += [frame.seq.eq(seq), frame.cmd.eq(cmd), frame.length.eq(count - MIN_FRAME),
                     frame.bank.eq(fill_bank), frame.error.eq(code)]
        finished = end_in & ((count != 0) | escape_error)    # an empty frame is no frame
        good = finished & (code == 0)
        error_room = queue.level < DESCRIPTORS - BANKS
        m.d.comb += [
            queue.w_data.eq(frame),
            queue.w_en.eq(good | (finished & (code != 0) & error_room)),
            self.dropped.eq(finished & (code != 0) & ~error_room),
            self.frames.valid.eq(queue.r_rdy), self.frames.payload.eq(queue.r_data),
            queue.r_en.eq(self.frames.ready),
        ]
        with m.If(end_in):
            m.d.sync += [count.eq(0), too_long.eq(0), bad_escape.eq(0), no_bank.eq(0),
                         seq.eq(0), cmd.eq(0)]
        with m.If(good):
            m.d.sync += fill_bank.eq(fill_bank + 1)
        with m.If(self.release):
            m.d.sync += release_bank.eq(release_bank + 1)
        for bank in range(BANKS):
            with m.If(good & (fill_bank == bank)):
                m.d.sync += busy[bank].eq(1)
            with m.If(self.release & (release_bank == bank)):
                m.d.sync += busy[bank].eq(0)
        return m
