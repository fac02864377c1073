"""The accelerator's AXI4 memory port: read and write bursts from streams of requests and words."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from spattn.config import ConfigError

from .axi import AXI_ADDR_BITS, AXI_DATA_BITS, AXI_MAX_BURST, BURST_INCR, RESP_OKAY, AXI4Signature

__all__ = ["AxiManager", "burst_request_layout", "read_beat_layout", "write_beat_layout"]

#: ``arsize``/``awsize`` of a 32-bit beat: 2**2 bytes.
_SIZE_WORD = 2
_BYTES_PER_BEAT = AXI_DATA_BITS // 8


def burst_request_layout(max_beats):
    """One INCR burst of ``beats`` words from byte address ``addr`` (word aligned, no 4 KiB crossing)."""
    return data.StructLayout({"addr": AXI_ADDR_BITS, "beats": range(1, max_beats + 1)})


def read_beat_layout():
    """One word read; ``last`` marks the final word of its burst."""
    return data.StructLayout({"data": AXI_DATA_BITS, "last": 1})


def write_beat_layout():
    return data.StructLayout({"data": AXI_DATA_BITS})


class AxiManager(wiring.Component):
    """AXI4 manager (master) that turns burst requests into AR/AW/W transfers and R beats into a stream.

    Every AXI output comes from a register or a FIFO's output register, never through logic from an
    AXI input (AXI A3.2.2), so the port can face any interconnect or subordinate: each channel
    enters or leaves through a :class:`~amaranth.lib.fifo.SyncFIFOBuffered` whose ``w_rdy`` and
    ``r_rdy`` depend only on its fill level.

    Parameters
    ----------
    max_beats : int
        Longest burst, 1 .. :data:`~spattn.hw.axi.AXI_MAX_BURST`.
    max_reads : int
        Read bursts in flight: ARs issued whose last R beat has not arrived. AR waits for a slot.
    max_writes : int
        Write bursts accepted on ``write_req`` and not yet answered on B; ``write_req`` waits.

    Members
    -------
    axi : Out(:class:`~spattn.hw.axi.AXI4Signature`)
        32-bit data, 32-bit byte addresses. ``arsize``/``awsize`` = 2 (4 bytes), INCR bursts,
        ``arlen``/``awlen`` = beats - 1, ``wstrb`` = 0b1111, ``bready`` always high. One ID, so
        responses come back in order.
    read_req : In(stream of :func:`burst_request_layout`)
        One beat = one read burst. ``beats`` outside 1 .. ``max_beats`` is not allowed.
    read_data : Out(stream of :func:`read_beat_layout`)
        The R beats of all read bursts in request order; ``last`` is RLAST. ``rready`` is high only
        while the read buffer has room, so a stalled consumer holds R back and no beat is lost. A
        beat with an error response is still delivered (its data is whatever the subordinate sent).
    write_req : In(stream of :func:`burst_request_layout`)
        One beat = one write burst: AW is sent as soon as it can, independently of the data.
    write_data : In(stream of :func:`write_beat_layout`)
        The words of the write bursts in request order, ``beats`` per burst; may run ahead of or
        behind ``write_req``. The manager counts beats itself and sets WLAST on each burst's last.
    writes_done : Out(1)
        Every accepted write burst has had its B response and no write word waits in the manager.
    reads_done : Out(1)
        No read burst waits for AR or R, and every word read has left on ``read_data``.
    error : Out(1)
        Sticky: set by any RRESP or BRESP other than OKAY.
    clear : In(1)
        Clears ``error``, ``bytes_read`` and ``bytes_written`` (a response or beat in the same
        cycle counts after the clear). Transfers in progress go on.
    bytes_read, bytes_written : Out(32)
        Bytes moved on R and on W (4 per beat), wrapping; an error beat counts.

    Latency and throughput
    ----------------------
    Two cycles from an accepted ``read_req`` to ARVALID, from an accepted ``write_req`` to AWVALID,
    from an accepted ``write_data`` word to WVALID (once its burst's request is in) and from an R
    beat to ``read_data.valid``. In steady state one R beat and one W beat per cycle, also across
    bursts; short bursts are limited by ``max_reads``/``max_writes`` and the memory's latency.
    """

    #: Words the read buffer holds: R beats accepted and not yet taken from ``read_data``.
    READ_BUFFER = 8
    #: Words the write buffer holds: ``write_data`` words not yet sent on W.
    WRITE_BUFFER = 8
    #: Read requests waiting for AR (a request beyond ``max_reads`` in flight waits here).
    READ_QUEUE = 3

    def __init__(self, max_beats=AXI_MAX_BURST, max_reads=4, max_writes=4):
        if not isinstance(max_beats, int) or not 1 <= max_beats <= AXI_MAX_BURST:
            raise ConfigError(f"max_beats must be in 1..{AXI_MAX_BURST}, not {max_beats!r}")
        if not isinstance(max_reads, int) or max_reads < 1:
            raise ConfigError(f"max_reads must be an integer of at least 1, not {max_reads!r}")
        if not isinstance(max_writes, int) or max_writes < 1:
            raise ConfigError(f"max_writes must be an integer of at least 1, not {max_writes!r}")
        self.max_beats, self.max_reads, self.max_writes = max_beats, max_reads, max_writes
        request = burst_request_layout(max_beats)
        super().__init__({
            "axi": Out(AXI4Signature()),
            "read_req": In(stream.Signature(request)),
            "read_data": Out(stream.Signature(read_beat_layout())),
            "write_req": In(stream.Signature(request)),
            "write_data": In(stream.Signature(write_beat_layout())),
            "writes_done": Out(1),
            "reads_done": Out(1),
            "error": Out(1),
            "clear": In(1),
            "bytes_read": Out(32),
            "bytes_written": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        # A queued burst as AXI encodes it: address and beats - 1.
        burst = data.StructLayout({"addr": AXI_ADDR_BITS, "len": 8})

        # ---- read: request queue -> AR, R -> read buffer -> read_data ---------------------------
        m.submodules.ar_queue = ar_queue = SyncFIFOBuffered(width=burst.size, depth=self.READ_QUEUE)
        m.submodules.read_buffer = read_buffer = SyncFIFOBuffered(width=read_beat_layout().size,
                                                                  depth=self.READ_BUFFER)

        queued_read = data.View(burst, ar_queue.w_data)
        m.d.comb += [
            queued_read.addr.eq(self.read_req.payload.addr),
            queued_read.len.eq(self.read_req.payload.beats - 1),
            ar_queue.w_en.eq(self.read_req.valid),
            self.read_req.ready.eq(ar_queue.w_rdy),
        ]

        # ARs issued whose last R beat has not arrived. A slot frees only on R, so once ARVALID
        # rises it stays high until AR is taken.
        reads_in_flight = Signal(range(self.max_reads + 1))
        ar_head = data.View(burst, ar_queue.r_data)
        m.d.comb += [
            axi.arvalid.eq(ar_queue.r_rdy & (reads_in_flight != self.max_reads)),
            axi.araddr.eq(ar_head.addr),
            axi.arlen.eq(ar_head.len),
            axi.arsize.eq(_SIZE_WORD),
            axi.arburst.eq(BURST_INCR),
            ar_queue.r_en.eq(axi.arvalid & axi.arready),
        ]
        r_take = Signal()
        burst_read = r_take & axi.rlast
        arrived = data.View(read_beat_layout(), read_buffer.w_data)
        m.d.comb += [
            # The buffer's w_rdy is its fill level, a register: no path from read_data.ready to rready.
            axi.rready.eq(read_buffer.w_rdy),
            r_take.eq(axi.rvalid & axi.rready),
            read_buffer.w_en.eq(axi.rvalid),
            arrived.data.eq(axi.rdata),
            arrived.last.eq(axi.rlast),
        ]
        with m.If(ar_queue.r_en & ~burst_read):
            m.d.sync += reads_in_flight.eq(reads_in_flight + 1)
        with m.Elif(~ar_queue.r_en & burst_read):
            m.d.sync += reads_in_flight.eq(reads_in_flight - 1)

        delivered = data.View(read_beat_layout(), read_buffer.r_data)
        m.d.comb += [
            self.read_data.valid.eq(read_buffer.r_rdy),
            self.read_data.payload.eq(delivered),
            read_buffer.r_en.eq(self.read_data.ready),
            self.reads_done.eq((ar_queue.level == 0) & (reads_in_flight == 0) & (read_buffer.level == 0)),
        ]

        # ---- write: request -> AW queue and burst-length queue; data -> write buffer -> W --------
        # The W side needs each burst's length to place WLAST, so a request goes into both queues
        # at once; either has room for every burst write_req may accept, plus spare.
        m.submodules.aw_queue = aw_queue = SyncFIFOBuffered(width=burst.size, depth=self.max_writes + 2)
        m.submodules.w_lengths = w_lengths = SyncFIFOBuffered(width=8, depth=self.max_writes + 2)
        m.submodules.write_buffer = write_buffer = SyncFIFOBuffered(width=AXI_DATA_BITS,
                                                                    depth=self.WRITE_BUFFER)

        # Write bursts accepted and not yet answered on B.
        writes_open = Signal(range(self.max_writes + 1))
        write_accept = Signal()
        queued_write = data.View(burst, aw_queue.w_data)
        m.d.comb += [
            self.write_req.ready.eq((writes_open != self.max_writes) & aw_queue.w_rdy & w_lengths.w_rdy),
            write_accept.eq(self.write_req.valid & self.write_req.ready),
            queued_write.addr.eq(self.write_req.payload.addr),
            queued_write.len.eq(self.write_req.payload.beats - 1),
            aw_queue.w_en.eq(write_accept),
            w_lengths.w_data.eq(queued_write.len),
            w_lengths.w_en.eq(write_accept),
        ]
        aw_head = data.View(burst, aw_queue.r_data)
        m.d.comb += [
            axi.awvalid.eq(aw_queue.r_rdy),
            axi.awaddr.eq(aw_head.addr),
            axi.awlen.eq(aw_head.len),
            axi.awsize.eq(_SIZE_WORD),
            axi.awburst.eq(BURST_INCR),
            aw_queue.r_en.eq(axi.awready),
        ]

        m.d.comb += [
            write_buffer.w_data.eq(self.write_data.payload.data),
            write_buffer.w_en.eq(self.write_data.valid),
            self.write_data.ready.eq(write_buffer.w_rdy),
        ]
        # Beat index within the burst at the head of w_lengths; both queue heads are registers.
        w_beat = Signal(8)
        w_take = Signal()
        m.d.comb += [
            axi.wvalid.eq(write_buffer.r_rdy & w_lengths.r_rdy),
            axi.wdata.eq(write_buffer.r_data),
            axi.wstrb.eq(0b1111),
            axi.wlast.eq(w_beat == w_lengths.r_data),
            w_take.eq(axi.wvalid & axi.wready),
            write_buffer.r_en.eq(w_take),
            w_lengths.r_en.eq(w_take & axi.wlast),
        ]
        with m.If(w_take):
            m.d.sync += w_beat.eq(Mux(axi.wlast, 0, w_beat + 1))

        b_take = Signal()
        m.d.comb += [
            axi.bready.eq(1),
            b_take.eq(axi.bvalid),
        ]
        with m.If(write_accept & ~b_take):
            m.d.sync += writes_open.eq(writes_open + 1)
        with m.Elif(~write_accept & b_take & (writes_open != 0)):
            m.d.sync += writes_open.eq(writes_open - 1)
        m.d.comb += self.writes_done.eq((writes_open == 0) & (write_buffer.level == 0))

        # ---- status ----------------------------------------------------------------------------
        error = Signal()
        bytes_read = Signal(32)
        bytes_written = Signal(32)
        bad_response = (r_take & (axi.rresp != RESP_OKAY)) | (b_take & (axi.bresp != RESP_OKAY))
        m.d.sync += [
            error.eq((error & ~self.clear) | bad_response),
            bytes_read.eq(Mux(self.clear, 0, bytes_read) + Mux(r_take, _BYTES_PER_BEAT, 0)),
            bytes_written.eq(Mux(self.clear, 0, bytes_written) + Mux(w_take, _BYTES_PER_BEAT, 0)),
        ]
        m.d.comb += [
            self.error.eq(error),
            self.bytes_read.eq(bytes_read),
            self.bytes_written.eq(bytes_written),
        ]
        return m
