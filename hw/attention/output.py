"""Output unit: P·V sums to rounded, saturated output rows with their L1 magnitudes."""

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .common import Geometry, block_layout, out_layout, saturate
from .grid import grid_tag_layout

__all__ = ["OutputUnit"]


class OutputUnit(wiring.Component):
    """Rounds each P·V sum to the act format (``(acc + 2**(prob.frac-1)) >> prob.frac``, saturated;
    the grid's sums already include the half), keeps a block's rows chunk by chunk, and sends the
    final rows out in slot order with their L1 magnitudes.

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

    Latency ``W + 4`` cycles from the last chunk's result to the first row; then a row every
    ``W + 1`` cycles (its chunks are gathered from the row's memory), final rows only.
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
        m.d.sync += [o1_valid.eq(self.result_valid & ~self.result_qk), o1_chunk.eq(self.result_tag.chunk),
                     o1_end.eq(self.result_tag.end)]
        for r in range(R):
            for c in range(C):
                # the grid's P·V sums already hold the rounding half: rounding is a shift
                m.d.sync += o1[r][c].eq(saturate(self.result[r][c] >> fmt.prob.frac, fmt.act))
        # O2: the chunk into each row's memory (a small LUT RAM of W chunks per slot)
        o2_valid, o2_end = Signal(), Signal()
        m.d.sync += [o2_valid.eq(o1_valid), o2_end.eq(o1_end)]
        slot = Signal(range(R + 1))
        chunk = Signal(range(W + 1))
        chunk_shape = data.ArrayLayout(act, C)
        chunk_data = Signal(chunk_shape)
        for r in range(R):
            rows = memory.Memory(shape=chunk_shape, depth=W, init=[])
            m.submodules[f"row{r}"] = rows
            write, read = rows.write_port(), rows.read_port(domain="comb")
            m.d.comb += [write.addr.eq(o1_chunk), write.en.eq(o1_valid), read.addr.eq(chunk)]
            for c in range(C):
                m.d.comb += write.data[c].eq(o1[r][c])
            with m.If(slot == r):
                m.d.comb += chunk_data.eq(read.data)
        # O3: the final rows leave in slot order, each gathered a chunk a cycle into the beat
        final = Signal(R)
        assembled = Signal(W * C * act.width)
        gathering, presenting = Signal(), Signal()
        start = Signal()
        m.d.sync += start.eq(o2_valid & o2_end)
        m.d.comb += self.idle.eq(~gathering & ~presenting)
        next_slot = Signal(range(R + 1))
        # the next final slot after ``slot`` (R when there is none)
        m.d.comb += next_slot.eq(R)
        for r in reversed(range(1, R)):  # slot 0 never follows another (`0 > slot` would be constant)
            with m.If((r > slot) & final[r]):
                m.d.comb += next_slot.eq(r)
        first_slot = Signal(range(R + 1))
        m.d.comb += first_slot.eq(R)
        for r in reversed(range(R)):
            with m.If(self.block.final[r]):
                m.d.comb += first_slot.eq(r)
        with m.If(start):
            m.d.sync += [final.eq(self.block.final), slot.eq(first_slot), chunk.eq(0),
                         gathering.eq(first_slot != R)]
            with m.If(first_slot == R):
                m.d.comb += self.done.eq(1)
        # the row's L1 magnitude, a chunk at a time as it is gathered (padding lanes are 0)
        magnitude = Signal(magnitude_shape)
        chunk_magnitude = sum(Mux(v < 0, -v, v) for v in chunk_data)
        with m.If(gathering):
            m.d.sync += [assembled.eq(Cat(assembled[chunk_shape.size:], chunk_data)), chunk.eq(chunk + 1),
                         magnitude.eq(Mux(chunk == 0, 0, magnitude) + chunk_magnitude)]
            with m.If(chunk == W - 1):
                m.d.sync += [gathering.eq(0), presenting.eq(1)]
                m.d.sync += beat.row.eq(self.block.rows[0])
                for r in range(1, R):
                    with m.If(slot == r):
                        m.d.sync += beat.row.eq(self.block.rows[r])
        m.d.comb += [self.out.valid.eq(presenting), beat.full_precision.eq(self.block.full),
                     beat.magnitude.eq(magnitude)]
        for i in range(geo.d):
            m.d.comb += beat.data[i].eq(assembled.word_select(i, act.width))
        with m.If(presenting & self.out.ready):
            m.d.sync += [presenting.eq(0), slot.eq(next_slot), chunk.eq(0), gathering.eq(next_slot != R)]
            with m.If(next_slot == R):
                m.d.comb += self.done.eq(1)
        with m.If(self.skip):
            m.d.comb += self.done.eq(1)
        return m
