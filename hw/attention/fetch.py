"""Fetch unit: the memory port, the on-chip Q/K/V plane buffers and the rows already requested."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from spattn.config import FETCH_SEQ_BITS
from spattn.formats import plane_row_bytes

from .common import (PLANE_LSB, PLANE_MSB, TENSOR_K, TENSOR_Q, TENSOR_V, Geometry, ReadPort,
                     mem_request_layout, mem_response_layout)

__all__ = ["FetchUnit", "item_layout", "plane_pair_layout"]


def item_layout(geo: Geometry):
    """A unit of work that needs rows of one tensor: token ``row``, whether it needs the row's MSB
    and LSB planes on chip, and what its consumer wants back with it (``slot``, ``last``)."""
    return data.StructLayout({"row": geo.index, "msb": 1, "lsb": 1, "slot": range(max(2, geo.R)),
                              "last": 1})


def plane_pair_layout(geo: Geometry):
    """One token's row of a tensor as both planes hold it."""
    return data.StructLayout({"msb": data.ArrayLayout(signed(geo.M), geo.d),
                              "lsb": data.ArrayLayout(unsigned(geo.L), geo.d)})


class FetchUnit(wiring.Component):
    """Brings the plane rows the core needs on chip, each at most once per head, and lets every
    piece of work through only once the rows it needs are there.

    Work arrives as items on ``q_in``, ``k_in`` and ``v_in`` (one stream per tensor). An item asks
    for the MSB and/or LSB plane of token ``row``; a plane row of K or V that an earlier item of the
    head already asked for is not requested again (a bitmap of requested rows, in on-chip memory).
    Each item leaves on the matching ``*_out`` stream, in order per tensor, once every request made
    up to and including its own has been answered, so its rows are in the buffers. The three
    tensors do not wait for each other.

    Members
    -------
    start : In(1)
        A new head of ``n`` tokens: forget the requested rows (clears rows ``0 .. n - 1``,
        one per cycle, while ``clearing``; items wait) and zero ``bytes_fetched``.
    n : In(count)
    clearing : Out(1)
    q_in, k_in, v_in : In(stream of :func:`item_layout`)
    q_out, k_out, v_out : Out(stream of :func:`item_layout`)
        At most ``PENDING`` items of a tensor are inside the unit at once.
    mem_req : Out(stream of mem_request_layout)
        MSB before LSB within an item; items in arrival order.
    mem_resp : In(stream of mem_response_layout)
        One beat per request, in request order; up to ``INFLIGHT`` requests outstanding.
    q_read, k_read, v_read : In(:class:`ReadPort` of :func:`plane_pair_layout`)
        The plane buffers, ``max_tokens`` rows each, addressed by token.
    bytes_fetched : Out(32)

    Latency: an item whose rows are on chip leaves 4 cycles after it arrives; throughput one item
    per cycle when it needs no request, one per ``1 + requests`` cycles otherwise.
    """

    INFLIGHT = 16
    PENDING_KV = 16

    def __init__(self, geo: Geometry):
        self.geo = geo
        items = item_layout(geo)
        pair = plane_pair_layout(geo)
        super().__init__({
            "start": In(1), "n": In(geo.count), "clearing": Out(1),
            "q_in": In(stream.Signature(items)), "k_in": In(stream.Signature(items)),
            "v_in": In(stream.Signature(items)),
            "q_out": Out(stream.Signature(items)), "k_out": Out(stream.Signature(items)),
            "v_out": Out(stream.Signature(items)),
            "mem_req": Out(stream.Signature(mem_request_layout(geo.cfg))),
            "mem_resp": In(stream.Signature(mem_response_layout(geo.cfg))),
            "q_read": In(ReadPort(geo.T, pair)), "k_read": In(ReadPort(geo.T, pair)),
            "v_read": In(ReadPort(geo.T, pair)),
            "bytes_fetched": Out(32),
        })

    def elaborate(self, platform):
        geo = self.geo
        m = Module()
        items = item_layout(geo)
        pending_layout = data.StructLayout({"item": items, "seq": unsigned(FETCH_SEQ_BITS)})

        # ---- plane buffers, written by responses --------------------------------------------
        inflight_layout = data.StructLayout({"tensor": unsigned(2), "plane": 1, "row": geo.index})
        m.submodules.inflight = inflight = SyncFIFOBuffered(width=inflight_layout.size,
                                                            depth=self.INFLIGHT)
        answered = data.View(inflight_layout, inflight.r_data)
        resp_take = Signal()
        m.d.comb += [self.mem_resp.ready.eq(inflight.r_rdy),
                     resp_take.eq(self.mem_resp.valid & inflight.r_rdy),
                     inflight.r_en.eq(resp_take)]
        lanes = self.mem_resp.payload.data
        for tensor, port in ((TENSOR_Q, self.q_read), (TENSOR_K, self.k_read), (TENSOR_V, self.v_read)):
            for plane, bits, field in ((PLANE_MSB, geo.M, "msb"), (PLANE_LSB, geo.L, "lsb")):
                shape = data.ArrayLayout(signed(bits) if plane == PLANE_MSB else unsigned(bits), geo.d)
                mem = memory.Memory(shape=shape, depth=geo.T, init=[])
                m.submodules[f"buffer_{'qkv'[tensor]}_{field}"] = mem
                write, read = mem.write_port(), mem.read_port()
                m.d.comb += [
                    write.addr.eq(answered.row), write.data.eq(Cat(lanes[i][:bits] for i in range(geo.d))),
                    write.en.eq(resp_take & (answered.tensor == tensor) & (answered.plane == plane)),
                    read.addr.eq(port.addr), read.en.eq(port.en),
                    getattr(port.data, field).eq(read.data),
                ]
        received = Signal(FETCH_SEQ_BITS)
        bytes_fetched = Signal(32)
        m.d.comb += self.bytes_fetched.eq(bytes_fetched)
        with m.If(resp_take):
            m.d.sync += [received.eq(received + 1),
                         bytes_fetched.eq(bytes_fetched + Mux(answered.plane == PLANE_LSB,
                                                              plane_row_bytes(geo.d, geo.L),
                                                              plane_row_bytes(geo.d, geo.M)))]
        with m.If(self.start):
            m.d.sync += bytes_fetched.eq(0)

        # ---- requested-row bitmap: bits k_msb, k_lsb, v_msb, v_lsb per token --------------------
        bitmap = memory.Memory(shape=4, depth=geo.T, init=[])
        m.submodules.requested = bitmap
        bm_write = bitmap.write_port()
        bm_read = bitmap.read_port(transparent_for=(bm_write,))
        clear_row = Signal(geo.count)
        clearing = Signal()
        m.d.comb += self.clearing.eq(clearing)
        with m.If(self.start):
            m.d.sync += [clear_row.eq(0), clearing.eq(self.n != 0)]
        with m.Elif(clearing):
            m.d.sync += clear_row.eq(clear_row + 1)
            with m.If(clear_row + 1 == self.n):
                m.d.sync += clearing.eq(0)

        # ---- stage A: one accepted item and its bitmap word -------------------------------------
        inputs = [(TENSOR_Q, self.q_in, geo.R), (TENSOR_V, self.v_in, self.PENDING_KV),
                  (TENSOR_K, self.k_in, self.PENDING_KV)]          # in priority order
        outputs = {TENSOR_Q: self.q_out, TENSOR_K: self.k_out, TENSOR_V: self.v_out}
        reserved = {tensor: Signal(range(depth + 1), name=f"reserved_{'qkv'[tensor]}")
                    for tensor, _, depth in inputs}
        a_valid, a_tensor, a_item = Signal(), Signal(2), Signal(items)
        b_valid, b_tensor, b_item = Signal(), Signal(2), Signal(items)
        b_msb, b_lsb = Signal(), Signal()
        issued = Signal(FETCH_SEQ_BITS)
        req_take = Signal()
        # stage B finishes once no request is left (registered flags only, so that the inputs'
        # ready does not wait on the memory's)
        b_done = Signal()
        m.d.comb += b_done.eq(b_valid & ~(b_msb | b_lsb))
        a_move = Signal()
        m.d.comb += a_move.eq(a_valid & (~b_valid | b_done))
        a_free = Signal()
        m.d.comb += a_free.eq(~a_valid | a_move)

        accept = Signal()
        chosen_tensor, chosen_item = Signal(2), Signal(items)
        granted = Signal()
        for tensor, port, depth in reversed(inputs):      # the last assignment wins: priority order
            with m.If(port.valid & (reserved[tensor] < depth)):
                m.d.comb += [granted.eq(1), chosen_tensor.eq(tensor), chosen_item.eq(port.payload)]
        m.d.comb += accept.eq(granted & a_free & ~clearing & ~self.start)
        for tensor, port, _ in inputs:
            m.d.comb += port.ready.eq(accept & (chosen_tensor == tensor))
        m.d.comb += [bm_read.addr.eq(chosen_item.row), bm_read.en.eq(accept)]
        with m.If(accept):
            m.d.sync += [a_valid.eq(1), a_tensor.eq(chosen_tensor), a_item.eq(chosen_item)]
        with m.Elif(a_move):
            m.d.sync += a_valid.eq(0)

        # missing planes: everything asked for Q; for K and V what the bitmap has not seen
        word = bm_read.data
        k_seen, v_seen = word[0:2], word[2:4]
        seen = Mux(a_tensor == TENSOR_K, k_seen, Mux(a_tensor == TENSOR_V, v_seen, 0))
        want = Cat(a_item.msb, a_item.lsb)
        missing = Signal(2)
        m.d.comb += missing.eq(want & ~seen)
        m.d.comb += [
            bm_write.addr.eq(Mux(clearing, clear_row, a_item.row)),
            bm_write.en.eq(clearing | (a_move & (a_tensor != TENSOR_Q))),
            bm_write.data.eq(Mux(clearing, 0, word | Mux(a_tensor == TENSOR_K, Cat(missing, Const(0, 2)),
                                                        Cat(Const(0, 2), missing)))),
        ]

        # ---- stage B: requests, MSB plane first ---------------------------------------------------
        plane = Mux(b_msb, PLANE_MSB, PLANE_LSB)
        m.d.comb += [
            self.mem_req.valid.eq(b_valid & (b_msb | b_lsb) & inflight.w_rdy),
            self.mem_req.payload.tensor.eq(b_tensor), self.mem_req.payload.plane.eq(plane),
            self.mem_req.payload.row.eq(b_item.row),
            req_take.eq(self.mem_req.valid & self.mem_req.ready),
            inflight.w_en.eq(req_take),
            inflight.w_data.eq(Cat(b_tensor, plane, b_item.row)),
        ]
        with m.If(req_take):
            m.d.sync += issued.eq(issued + 1)
            with m.If(b_msb):
                m.d.sync += b_msb.eq(0)
            with m.Else():
                m.d.sync += b_lsb.eq(0)
        # a new item entering stage B overrides what the request above cleared
        with m.If(a_move):
            m.d.sync += [b_valid.eq(1), b_tensor.eq(a_tensor), b_item.eq(a_item),
                         b_msb.eq(missing[0]), b_lsb.eq(missing[1])]
        with m.Elif(b_done):
            m.d.sync += b_valid.eq(0)

        # ---- pending items, released in order once their requests are answered ------------------
        for tensor, _, depth in inputs:
            # two spare entries: a buffered FIFO can refuse a write while its output register fills
            fifo = SyncFIFOBuffered(width=pending_layout.size, depth=depth + 2)
            m.submodules[f"pending_{'qkv'[tensor]}"] = fifo
            out = outputs[tensor]
            head = data.View(pending_layout, fifo.r_data)
            m.d.comb += [
                fifo.w_en.eq(b_done & (b_tensor == tensor)),
                fifo.w_data.eq(Cat(b_item, issued)),
                out.valid.eq(fifo.r_rdy & ~(received - head.seq)[FETCH_SEQ_BITS - 1]),
                out.payload.eq(head.item),
                fifo.r_en.eq(out.valid & out.ready),
            ]
            took = Signal(name=f"take_{'qkv'[tensor]}")
            m.d.comb += took.eq(accept & (chosen_tensor == tensor))
            released = out.valid & out.ready
            m.d.sync += reserved[tensor].eq(reserved[tensor] + took - released)
        return m
