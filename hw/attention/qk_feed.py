"""Q·Kᵀ feed: a block's query rows in registers, its keys streamed past them into the grid."""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .common import Geometry, ReadPort, block_layout, chunk_bits, chunk_operands, raw_chunks
from .fetch import item_layout, plane_pair_layout
from .grid import qk_step_layout

__all__ = ["QKFeed", "chunk_macs"]


def chunk_macs(m, geo: Geometry, rows, chunk):
    """Multiply-accumulates of one grid step: ``rows`` real rows times the real head dimensions
    of ``chunk`` (the last chunk of a head row may be partial)."""
    cols = Const(geo.C, range(geo.C + 1))
    tail = geo.d - (geo.W - 1) * geo.C
    if tail != geo.C:
        cols = Mux(chunk == geo.W - 1, tail, geo.C)
    return rows * cols


class QKFeed(wiring.Component):
    """Loads a block's query rows into registers, then streams the block's keys past them: one
    grid step per chunk of ``C`` head dimensions, ``W`` steps per key, every row at once.

    Members
    -------
    block : In(:func:`block_layout`)
        The block being loaded or walked (the scheduler moves on after ``walked``).
    dynatran : In(act_bits)
    q_items : In(stream of items)
        ``R`` released query items per block (slot order); each row is read from the Q buffers
        into its slot's registers, at the block's precision, DynaTran applied.
    q_read, k_read : Out(:class:`ReadPort` of plane pairs)
    loaded : Out(1)
        The block's rows are in the registers.
    walk : In(1)
        Start streaming (the grid is ours).
    k_items : In(stream of items)
        Released key items of the block, in order, ``last`` on the block's last key.
    step : Out(stream of :func:`qk_step_layout`)
        Never stalled by the grid.
    walked : Out(1)
        One cycle, with the block's last step.

    Latency: loading takes ``W + 1`` cycles a row once the items are released (and one more at
    the end of the block); streaming ``W`` cycles per key, keys back to back while released keys
    keep up.
    """

    def __init__(self, geo: Geometry):
        self.geo = geo
        pair = plane_pair_layout(geo)
        super().__init__({
            "block": In(block_layout(geo.cfg)), "dynatran": In(geo.cfg.act_bits),
            "q_items": In(stream.Signature(item_layout(geo))),
            "q_read": Out(ReadPort(geo.T, pair)), "k_read": Out(ReadPort(geo.T, pair)),
            "loaded": Out(1), "walk": In(1),
            "k_items": In(stream.Signature(item_layout(geo))),
            "step": Out(stream.Signature(qk_step_layout(geo))),
            "walked": Out(1),
        })

    def elaborate(self, platform):
        geo = self.geo
        m = Module()
        R, C, W = geo.R, geo.C, geo.W
        bits = chunk_bits(geo)
        chunk_shape = data.ArrayLayout(signed(geo.cfg.act_bits), C)
        block = self.block
        valid_rows = sum(block.valid[r] for r in range(R))

        # ---- loading: item -> Q buffer read -> W chunks into the slot's memory -------------------
        # Each slot's row is a small memory of W chunks (LUT RAM): the walk reads chunk t of every
        # slot at once, so no wide register file and no multiplexer over rows.
        loading, loaded = Signal(init=1), Signal()
        taken = Signal(range(R + 1))
        slot, chunk = Signal(range(max(2, R))), Signal(range(W + 1), init=W)
        writing = chunk != W
        take_q = Signal()
        m.d.comb += [self.loaded.eq(loaded), take_q.eq(self.q_items.valid & self.q_items.ready),
                     self.q_items.ready.eq(loading & (taken < R) & ~writing),
                     self.q_read.addr.eq(self.q_items.payload.row), self.q_read.en.eq(take_q)]
        with m.If(take_q):
            m.d.sync += [taken.eq(taken + 1), slot.eq(self.q_items.payload.slot), chunk.eq(0)]
        with m.Elif(writing):
            m.d.sync += chunk.eq(chunk + 1)
        # the chunk's raw planes go through a register before they become operands: the buffer's
        # read data arrives late in its cycle
        q_raw = raw_chunks(geo, self.q_read.data)
        raw_chunk, write_chunk, write_slot, write_valid = (Signal(bits), Signal.like(chunk),
                                                           Signal.like(slot), Signal())
        m.d.sync += [raw_chunk.eq(q_raw.word_select(chunk[:max(1, (W - 1).bit_length())], bits)),
                     write_chunk.eq(chunk), write_slot.eq(slot), write_valid.eq(writing)]
        q_chunk = chunk_operands(m, geo, raw_chunk, block.full, self.dynatran, "q_chunk")
        with m.If(loading & (taken == R) & ~writing & ~write_valid):
            m.d.sync += [loading.eq(0), loaded.eq(1)]

        # ---- walking: stage A picks the key and chunk, stage B forms the operands ----------------
        walking = Signal()
        t = Signal(range(max(2, W)))
        a_valid, a_t, a_key, a_end = Signal(), Signal(range(max(2, W))), Signal(geo.index), Signal()
        key_take = Signal()
        m.d.comb += [self.k_items.ready.eq(walking & (t == 0)),
                     key_take.eq(self.k_items.valid & self.k_items.ready),
                     self.k_read.addr.eq(self.k_items.payload.row)]
        with m.If(self.walk):
            m.d.sync += [walking.eq(1), loaded.eq(0), t.eq(0)]
        m.d.sync += a_valid.eq(0)
        issue = key_take | (walking & (t != 0))
        with m.If(issue):
            m.d.sync += [a_valid.eq(1), a_t.eq(t), t.eq(Mux(t == W - 1, 0, t + 1))]
        with m.If(key_take):
            m.d.sync += [a_key.eq(self.k_items.payload.row), a_end.eq(self.k_items.payload.last)]
            if W == 1:
                with m.If(self.k_items.payload.last):
                    m.d.sync += walking.eq(0)
        if W > 1:
            with m.If(walking & (t == W - 1) & a_end):
                m.d.sync += walking.eq(0)

        # stage B: the rows' chunk (from their memories) and the key's raw chunk (chunk 0 from the
        # buffer's data, later ones from a copy shifted a chunk per step) into registers
        step = self.step.payload
        b_valid, b_t, b_key, b_end = Signal(), Signal(range(max(2, W))), Signal(geo.index), Signal()
        b_q = Signal(data.ArrayLayout(chunk_shape, R))
        b_k = Signal(bits)
        m.d.sync += [b_valid.eq(a_valid), b_t.eq(a_t), b_key.eq(a_key), b_end.eq(a_end)]
        for r in range(R):
            rows = memory.Memory(shape=chunk_shape, depth=W, init=[])
            m.submodules[f"q_row{r}"] = rows
            write, read = rows.write_port(), rows.read_port()
            m.d.comb += [write.addr.eq(write_chunk), write.data.eq(q_chunk),
                         write.en.eq(write_valid & (write_slot == r)),
                         read.addr.eq(t)]
            m.d.sync += b_q[r].eq(read.data)
        k_raw = raw_chunks(geo, self.k_read.data)
        k_rest = Signal(W * bits)
        m.d.sync += b_k.eq(Mux(a_t == 0, k_raw[:bits], k_rest[:bits]))
        with m.If(a_valid):
            m.d.sync += k_rest.eq(Mux(a_t == 0, k_raw, k_rest) >> bits)
        # stage C: the step, K values as operands
        m.d.comb += [self.step.valid.eq(b_valid), step.first.eq(b_t == 0), step.last.eq(b_t == W - 1),
                     step.tag.key.eq(b_key), step.tag.chunk.eq(b_t), step.tag.end.eq(b_end & (b_t == W - 1)),
                     step.macs.eq(chunk_macs(m, geo, valid_rows, b_t)), step.q.eq(b_q),
                     step.k.eq(chunk_operands(m, geo, b_k, block.full, self.dynatran, "k_chunk"))]
        m.d.comb += self.walked.eq(b_valid & b_end & (b_t == W - 1))
        with m.If(self.walked):
            m.d.sync += [loading.eq(1), taken.eq(0)]
        return m
