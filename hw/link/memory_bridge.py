"""AXI4 subordinate for the accelerator's memory port, served by the host through frames."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from spattn.hw.axi import AXI_DATA_BITS, AXI_ID_BITS, BURST_INCR, RESP_OKAY, RESP_SLVERR, AXI4Signature
from spattn.link import WORD_BYTES

from .layouts import MAX_BEATS, expected_read_layout, mem_read_layout, mem_write_layout

__all__ = ["MemoryBridge", "WRITE_BUFFER_ADDR_BITS"]

#: ``arsize``/``awsize`` of a whole bus word.
_SIZE_WORD = (WORD_BYTES - 1).bit_length()
#: Address bits of the write buffer (one burst of up to MAX_BEATS words).
WRITE_BUFFER_ADDR_BITS = (MAX_BEATS - 1).bit_length()


def _read_order_layout():
    """An accepted AR, in the order its R beats are due: ID, beats, and whether it is refused."""
    return data.StructLayout({"id": AXI_ID_BITS, "beats": range(1, 257), "refused": 1})


class MemoryBridge(wiring.Component):
    """The host as an AXI4 memory: read bursts become MEM_READ frames, write bursts MEM_WRITE frames.

    Reads: an AR of ``n <= MAX_BEATS`` words (``arsize`` a whole word, INCR) is accepted once
    ``read_buffer_words`` has room for ``n`` words beyond every read still outstanding and fewer than
    ``max_reads`` reads are outstanding (a read is outstanding from its AR to its last R beat). It
    then goes out as a MEM_READ request on ``mem_read`` (tag = the count of MEM_READ requests mod
    256) and as the head-to-be of ``expected``. The dispatcher writes the words of matching
    MEM_DATA frames into ``read_data``, which never needs to wait: the room was reserved. R beats
    follow in AR order with the AR's ID, OKAY, ``rlast`` on the last. An AR the host cannot serve
    (more than MAX_BEATS words, another size, another burst type) sends no frame and is answered,
    in order, with its beats of SLVERR and data 0.

    Writes, one burst at a time: the W beats of an AW are stored in the write buffer; with
    ``wlast`` the burst goes out as a MEM_WRITE request, and B (OKAY) follows ``write_sent``, the
    transmitter's word that the frame's last byte is on its way, so every frame sent later is on
    the wire after it. A burst with a ``wstrb`` not all ones, more than MAX_BEATS beats, another
    size or burst type sends no frame and gets B SLVERR after its ``wlast``.

    A slow host only slows the bus: AR/AW wait for room, R beats for MEM_DATA, B for the UART.

    Parameters
    ----------
    max_reads : int
        Read bursts outstanding at most.
    read_buffer_words : int
        Words of the read data buffer, at least MAX_BEATS.

    Members
    -------
    axi : In(:class:`~spattn.hw.axi.AXI4Signature`)
        ``arready``/``awready``/``wready``/``rvalid``/``bvalid`` come from registers or FIFO levels.
    mem_read : Out(stream.Signature(:func:`~.layouts.mem_read_layout`))
    expected : Out(stream.Signature(:func:`~.layouts.expected_read_layout`))
        The MEM_DATA due next; the dispatcher takes it when a frame matches.
    read_data : In(stream.Signature(32))
    mem_write : Out(stream.Signature(:func:`~.layouts.mem_write_layout`))
    write_buffer : Out(memory.ReadPort.Signature(addr_width=WRITE_BUFFER_ADDR_BITS, shape=32))
        The burst of ``mem_write``, word 0 first, valid until ``write_sent``.
    write_sent : In(1)
        The MEM_WRITE frame has been handed over whole.
    """

    def __init__(self, max_reads=8, read_buffer_words=2 * MAX_BEATS):
        if read_buffer_words < MAX_BEATS:
            raise ValueError(f"read_buffer_words must be at least MAX_BEATS = {MAX_BEATS}, "
                             f"not {read_buffer_words!r}")
        self.max_reads, self.read_buffer_words = max_reads, read_buffer_words
        super().__init__({
            "axi": In(AXI4Signature()),
            "mem_read": Out(stream.Signature(mem_read_layout())),
            "expected": Out(stream.Signature(expected_read_layout())),
            "read_data": In(stream.Signature(AXI_DATA_BITS)),
            "mem_write": Out(stream.Signature(mem_write_layout())),
            "write_buffer": Out(memory.ReadPort.Signature(addr_width=WRITE_BUFFER_ADDR_BITS,
                                                          shape=AXI_DATA_BITS)),
            "write_sent": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        self._reads(m, axi)
        self._writes(m, axi)
        return m

    def _reads(self, m, axi):
        m.submodules.requests = requests = SyncFIFO(width=mem_read_layout().size, depth=self.max_reads)
        m.submodules.expected = expected = SyncFIFO(width=expected_read_layout().size,
                                                    depth=self.max_reads)
        m.submodules.order = order = SyncFIFO(width=_read_order_layout().size, depth=self.max_reads)
        m.submodules.words = words = SyncFIFOBuffered(width=AXI_DATA_BITS, depth=self.read_buffer_words)
        m.d.comb += [
            self.mem_read.valid.eq(requests.r_rdy), self.mem_read.payload.eq(requests.r_data),
            requests.r_en.eq(self.mem_read.ready),
            self.expected.valid.eq(expected.r_rdy), self.expected.payload.eq(expected.r_data),
            expected.r_en.eq(self.expected.ready),
            words.w_data.eq(self.read_data.payload), words.w_en.eq(self.read_data.valid),
            self.read_data.ready.eq(words.w_rdy),
        ]

        # AR is taken into a register, then admitted when there is room for it.
        held = Signal()
        ar = Signal(data.StructLayout({"id": AXI_ID_BITS, "addr": 32, "len": 8, "refused": 1}))
        m.d.comb += axi.arready.eq(~held)
        with m.If(axi.arvalid & ~held):
            m.d.sync += [held.eq(1), ar.id.eq(axi.arid), ar.addr.eq(axi.araddr), ar.len.eq(axi.arlen),
                         ar.refused.eq((axi.arlen >= MAX_BEATS) | (axi.arsize != _SIZE_WORD)
                                       | (axi.arburst != BURST_INCR))]
        beats = ar.len + 1
        reserved = Signal(range(self.read_buffer_words + 1))   # words of outstanding reads, not yet in R
        tag = Signal(8)
        room = ((reserved + beats <= self.read_buffer_words) & requests.w_rdy & expected.w_rdy)
        admit = held & order.w_rdy & (ar.refused | room)
        issue = admit & ~ar.refused
        request, due, entry = (Signal(mem_read_layout()), Signal(expected_read_layout()),
                               Signal(_read_order_layout()))
        m.d.comb += [
            request.tag.eq(tag), request.addr.eq(ar.addr), request.beats.eq(beats),
            due.tag.eq(tag), due.beats.eq(beats),
            entry.id.eq(ar.id), entry.beats.eq(beats), entry.refused.eq(ar.refused),
            requests.w_data.eq(request), requests.w_en.eq(issue),
            expected.w_data.eq(due), expected.w_en.eq(issue),
            order.w_data.eq(entry), order.w_en.eq(admit),
        ]
        with m.If(admit):
            m.d.sync += held.eq(0)
        with m.If(issue):
            m.d.sync += tag.eq(tag + 1)

        # R: the beats of the oldest admitted AR, from the read data or (refused) SLVERR.
        head = data.View(_read_order_layout(), order.r_data)
        beat = Signal(8)
        last = beat == head.beats - 1
        m.d.comb += [
            axi.rvalid.eq(order.r_rdy & (head.refused | words.r_rdy)),
            axi.rid.eq(head.id), axi.rlast.eq(last),
            # zero unless a word is there: the buffer's RAM starts unknown in simulators
            axi.rdata.eq(Mux(axi.rvalid & ~head.refused, words.r_data, 0)),
            axi.rresp.eq(Mux(head.refused, RESP_SLVERR, RESP_OKAY)),
        ]
        taken = axi.rvalid & axi.rready
        from_words = taken & ~head.refused
        m.d.comb += [words.r_en.eq(from_words), order.r_en.eq(taken & last)]
        with m.If(taken):
            m.d.sync += beat.eq(Mux(last, 0, beat + 1))
        m.d.sync += reserved.eq(reserved + Mux(issue, beats, 0) - from_words)

    def _writes(self, m, axi):
        m.submodules.write_mem = write_mem = memory.Memory(shape=AXI_DATA_BITS, depth=MAX_BEATS, init=[])
        store, load = write_mem.write_port(), write_mem.read_port()
        m.d.comb += [load.addr.eq(self.write_buffer.addr), load.en.eq(self.write_buffer.en),
                     self.write_buffer.data.eq(load.data)]

        bid = Signal(AXI_ID_BITS)
        addr = Signal(32)
        count = Signal(range(MAX_BEATS + 1))     # W beats stored
        refused = Signal()
        m.d.comb += [self.mem_write.payload.addr.eq(addr), self.mem_write.payload.beats.eq(count),
                     axi.bid.eq(bid), axi.bresp.eq(Mux(refused, RESP_SLVERR, RESP_OKAY)),
                     store.addr.eq(count), store.data.eq(axi.wdata)]

        with m.FSM():
            with m.State("AW"):
                m.d.comb += axi.awready.eq(1)
                with m.If(axi.awvalid):
                    m.d.sync += [bid.eq(axi.awid), addr.eq(axi.awaddr), count.eq(0),
                                 refused.eq((axi.awsize != _SIZE_WORD) | (axi.awburst != BURST_INCR))]
                    m.next = "W"
            with m.State("W"):
                m.d.comb += axi.wready.eq(1)
                refused_now = (refused | (count == MAX_BEATS)
                               | (axi.wstrb != (1 << WORD_BYTES) - 1))
                with m.If(axi.wvalid):
                    m.d.sync += refused.eq(refused_now)
                    with m.If(count != MAX_BEATS):
                        m.d.comb += store.en.eq(1)
                        m.d.sync += count.eq(count + 1)
                    with m.If(axi.wlast):
                        m.next = "SEND"
                        with m.If(refused_now):
                            m.next = "B"
            with m.State("SEND"):
                m.d.comb += self.mem_write.valid.eq(1)
                with m.If(self.mem_write.ready):
                    m.next = "SENDING"
            with m.State("SENDING"):
                with m.If(self.write_sent):
                    m.next = "B"
            with m.State("B"):
                m.d.comb += axi.bvalid.eq(1)
                with m.If(axi.bready):
                    m.next = "AW"
