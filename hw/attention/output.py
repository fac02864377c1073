"""Output unit: P·V sums to rounded, saturated output rows with their L1 magnitudes."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .common import Geometry, block_layout, out_layout, saturate
from .grid import grid_tag_layout

__all__ = ["OutputUnit"]


class OutputUnit(wiring.Component):
    """Rounds each P·V sum to the act format (``(acc + 2**(prob.frac-1)) >> prob.frac``,
    saturated), assembles a block's rows chunk by chunk with their L1 magnitudes, and sends the
    final rows out in slot order.

    Members
    -------
    block : In(:func:`block_layout`)
        The block whose P·V results arrive.
    result_valid, result_qk, result, result_tag : In (the grid's results)
        Taken whenever they come: the scheduler starts a block's P·V only when the previous
        block's rows are out.
    skip : In(1)
        The block has no P·V (no final row): it is done at once.
    out : Out(stream of :func:`out_layout`)
    done : Out(1)
        One cycle when the block's last row has left (or was skipped: not final).
    idle : Out(1)

    Latency 3 cycles from the last chunk's result to the first row; then a row per cycle, slots
    whose row is not final taking one cycle each.
    """

    def __init__(self, geo: Geometry):
        self.geo = geo
        super().__init__({
            "block": In(block_layout(geo.cfg)),
            "result_valid": In(1), "result_qk": In(1),
            "result": In(data.ArrayLayout(data.ArrayLayout(signed(geo.cfg.acc_bits), geo.C), geo.R)),
            "result_tag": In(grid_tag_layout(geo)),
            "skip": In(1),
            "out": Out(stream.Signature(out_layout(geo.cfg))),
            "done": Out(1), "idle": Out(1),
        })

    def elaborate(self, platform):
        geo = self.geo
        fmt = geo.fmt
        m = Module()
        R, C, W = geo.R, geo.C, geo.W
        act = fmt.act.shape
        beat = self.out.payload
        magnitude_shape = beat.magnitude.shape()
        # O1: rounded outputs of one chunk of every row
        o1_valid, o1_chunk, o1_end = Signal(), Signal(range(max(2, W))), Signal()
        o1 = [[Signal(act, name=f"o1_{r}_{c}") for c in range(C)] for r in range(R)]
        half = 1 << (fmt.prob.frac - 1)
        m.d.sync += [o1_valid.eq(self.result_valid & ~self.result_qk), o1_chunk.eq(self.result_tag.chunk),
                     o1_end.eq(self.result_tag.end)]
        for r in range(R):
            for c in range(C):
                m.d.sync += o1[r][c].eq(saturate((self.result[r][c] + half) >> fmt.prob.frac, fmt.act))
        # O2: the chunk into its rows; each row's magnitude of the chunk (padding lanes are 0)
        rows = [Signal(data.ArrayLayout(act, W * C), name=f"row{r}") for r in range(R)]
        o2_valid, o2_first, o2_end = Signal(), Signal(), Signal()
        partial = [Signal(magnitude_shape, name=f"partial{r}") for r in range(R)]
        m.d.sync += [o2_valid.eq(o1_valid), o2_first.eq(o1_chunk == 0), o2_end.eq(o1_end)]
        for r in range(R):
            m.d.sync += partial[r].eq(sum(Mux(v < 0, -v, v) for v in o1[r]))
        with m.If(o1_valid):
            for t in range(W):
                with m.If(o1_chunk == t):
                    for r in range(R):
                        for c in range(C):
                            m.d.sync += rows[r][t * C + c].eq(o1[r][c])
        magnitudes = [Signal(magnitude_shape, name=f"magnitude{r}") for r in range(R)]
        with m.If(o2_valid):
            for r in range(R):
                m.d.sync += magnitudes[r].eq(Mux(o2_first, 0, magnitudes[r]) + partial[r])
        # O3: rows leave from slot 0; the slots shift down after each
        emitting = Signal()
        left = Signal(range(R + 1))
        row_index = [Signal(geo.index, name=f"row_index{r}") for r in range(R)]
        final = Signal(R)
        start = Signal()
        m.d.sync += start.eq(o2_valid & o2_end)
        with m.If(start):
            m.d.sync += [emitting.eq(1), left.eq(R), final.eq(self.block.final)]
            m.d.sync += [row_index[r].eq(self.block.rows[r]) for r in range(R)]
        m.d.comb += [self.out.valid.eq(emitting & final[0]), beat.row.eq(row_index[0]),
                     beat.magnitude.eq(magnitudes[0]), beat.full_precision.eq(self.block.full),
                     self.idle.eq(~emitting)]
        for i in range(geo.d):
            m.d.comb += beat.data[i].eq(rows[0][i])
        with m.If(emitting & (~final[0] | self.out.ready)):
            m.d.sync += [left.eq(left - 1), final.eq(final >> 1)]
            for r in range(R - 1):
                m.d.sync += [rows[r].eq(rows[r + 1]), magnitudes[r].eq(magnitudes[r + 1]),
                             row_index[r].eq(row_index[r + 1])]
            with m.If(left == 1):
                m.d.sync += emitting.eq(0)
                m.d.comb += self.done.eq(1)
        with m.If(self.skip):
            m.d.comb += self.done.eq(1)
        return m
