"""Q·Kᵀ feed: a block's query rows in registers, its keys streamed past them into the grid."""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .common import Geometry, ReadPort, block_layout, row_operands
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

    Latency: loading takes ``R + 1`` cycles once the items are released; streaming ``W`` cycles
    per key, keys back to back while released keys keep up.
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
        chunk_shape = data.ArrayLayout(signed(geo.cfg.act_bits), C)
        rows_shape = data.ArrayLayout(chunk_shape, W)
        q_regs = [Signal(rows_shape, name=f"q_row{r}") for r in range(R)]
        block = self.block
        valid_rows = sum(block.valid[r] for r in range(R))

        # ---- loading: item -> Q buffer read -> the slot's registers ------------------------------
        loading, loaded = Signal(init=1), Signal()
        taken = Signal(range(R + 1))
        l_valid, l_slot = Signal(), Signal(range(max(2, R)))
        m.d.comb += [self.loaded.eq(loaded), self.q_items.ready.eq(loading & (taken < R)),
                     self.q_read.addr.eq(self.q_items.payload.row)]
        m.d.sync += [l_valid.eq(self.q_items.valid & self.q_items.ready),
                     l_slot.eq(self.q_items.payload.slot)]
        with m.If(self.q_items.valid & self.q_items.ready):
            m.d.sync += taken.eq(taken + 1)
        q_new = row_operands(m, geo, self.q_read.data, block.full, self.dynatran, "q_new")
        with m.If(loading & (taken == R) & ~l_valid):
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
        with m.If(key_take | (walking & (t != 0))):
            m.d.sync += [a_valid.eq(1), a_t.eq(t), t.eq(Mux(t == W - 1, 0, t + 1))]
        with m.If(key_take):
            m.d.sync += [a_key.eq(self.k_items.payload.row), a_end.eq(self.k_items.payload.last)]
            if W == 1:
                with m.If(self.k_items.payload.last):
                    m.d.sync += walking.eq(0)
        if W > 1:
            with m.If(walking & (t == W - 1) & a_end):
                m.d.sync += walking.eq(0)

        k_new = row_operands(m, geo, self.k_read.data, block.full, self.dynatran, "k_new")
        k_rest = Signal(rows_shape)                    # the key's later chunks, shifted down a chunk per step
        step = self.step.payload
        m.d.comb += [self.step.valid.eq(a_valid), step.first.eq(a_t == 0), step.last.eq(a_t == W - 1),
                     step.tag.key.eq(a_key), step.tag.chunk.eq(a_t),
                     step.tag.end.eq(a_end & (a_t == W - 1)),
                     step.macs.eq(chunk_macs(m, geo, valid_rows, a_t)),
                     step.k.eq(Mux(a_t == 0, k_new[0].as_value(), k_rest[0].as_value()))]
        for r in range(R):
            m.d.comb += step.q[r].eq(q_regs[r][0])
        with m.If(a_valid):
            if W > 1:
                m.d.sync += k_rest.eq(Mux(a_t == 0, k_new.as_value(), k_rest.as_value())[chunk_shape.size:])
                for r in range(R):                     # rotate a chunk: back in place after W steps
                    value = q_regs[r].as_value()
                    m.d.sync += q_regs[r].eq(value.rotate_right(chunk_shape.size))
        m.d.comb += self.walked.eq(a_valid & a_end & (a_t == W - 1))
        with m.If(self.walked):
            m.d.sync += [loading.eq(1), taken.eq(0)]
        with m.If(l_valid):
            for r in range(R):
                with m.If(l_slot == r):
                    m.d.sync += q_regs[r].eq(q_new)
        return m
