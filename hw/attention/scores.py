"""Score unit: Q·Kᵀ sums to scaled, rounded, saturated scores in the score bank; row maxima."""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from spattn.formats import bits_for

from .common import Geometry, ReadPort, block_layout, saturate
from .grid import grid_tag_layout
from .masks import mask_word_layout

__all__ = ["ScoreUnit", "score_word_layout", "scale_lanes"]


def score_word_layout(geo: Geometry):
    """The scores of one key for the ``R`` rows of a block, and which of them are present."""
    return data.StructLayout({"score": data.ArrayLayout(geo.fmt.score.shape, geo.R),
                              "present": unsigned(geo.R)})


def scale_lanes(geo: Geometry):
    """Scaling multipliers: a key's ``R`` sums arrive every ``W`` cycles, so ``ceil(R / W)``
    multipliers, each used for up to ``W`` of them in turn, keep up."""
    return -(-geo.R // geo.W)


class ScoreUnit(wiring.Component):
    """Turns each key's ``R`` dot products from the grid into scores (``acc * scale_mult``, rounded
    half up by ``scale_shift``, saturated: :class:`spattn.formats.AttentionFormats`), decides which
    rows have the key present (key below ``n_keys``, causal mask, static mask), writes both into
    the score bank (two halves: a block's half is its number's parity) and keeps each row's
    maximum score and present-key count.

    Members
    -------
    block : In(:func:`block_layout`), set : In(1)
        The block whose results arrive, and its half of the bank.
    causal, masked : In(1)
    result_valid, result_qk, result, result_tag : In (the grid's results)
    present_read : Out(:class:`ReadPort` of the mask unit)
    score_read : In(:class:`ReadPort` of :func:`score_word_layout`)
        Address ``set * max_tokens + key``.
    row_max : Out(array 2 of array R of score), present_count : Out(array 2 of array R of count)
        Per half; valid once the half's block is ``done``.
    done : Out(1)
        One cycle, when the block's last key is written.

    Latency about ``4 + W`` cycles from a result to its bank write; keeps up with one key every
    ``W`` cycles.
    """

    def __init__(self, geo: Geometry):
        self.geo = geo
        super().__init__({
            "block": In(block_layout(geo.cfg)), "set": In(1), "causal": In(1), "masked": In(1),
            "result_valid": In(1), "result_qk": In(1),
            "result": In(data.ArrayLayout(data.ArrayLayout(signed(geo.cfg.acc_bits), geo.C), geo.R)),
            "result_tag": In(grid_tag_layout(geo)),
            "present_read": Out(ReadPort(2 * geo.NCH, mask_word_layout(geo))),
            "score_read": In(ReadPort(2 * geo.T, score_word_layout(geo))),
            "row_max": Out(data.ArrayLayout(data.ArrayLayout(geo.fmt.score.shape, geo.R), 2)),
            "present_count": Out(data.ArrayLayout(data.ArrayLayout(geo.count, geo.R), 2)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        geo = self.geo
        cfg, fmt = geo.cfg, geo.fmt
        m = Module()
        R, C = geo.R, geo.C
        # The sum of head_dim products of act_bits values never needs more bits than this.
        dot_bits = 2 * cfg.act_bits + bits_for(max(1, geo.d - 1))
        dot_shape = signed(min(dot_bits, cfg.acc_bits))
        block = self.block

        # P1: partial sums of up to four columns; the key's present flags are read from the mask
        p1_valid, p1_key, p1_end = Signal(), Signal(geo.index), Signal()
        groups = [list(range(c, min(c + 4, C))) for c in range(0, C, 4)]
        p1_sums = [[Signal(dot_shape, name=f"p1_sum{r}_{g}") for g in range(len(groups))] for r in range(R)]
        take = self.result_valid & self.result_qk
        m.d.sync += [p1_valid.eq(take), p1_key.eq(self.result_tag.key), p1_end.eq(self.result_tag.end)]
        for r in range(R):
            for g, cols in enumerate(groups):
                m.d.sync += p1_sums[r][g].eq(sum(self.result[r][c] for c in cols))
        m.d.comb += self.present_read.addr.eq(self.set * geo.NCH + p1_key // C)
        # P2: whole sums and present flags
        p2_valid, p2_key, p2_end = Signal(), Signal(geo.index), Signal()
        p2_dots = [Signal(dot_shape, name=f"p2_dot{r}") for r in range(R)]
        p2_present = Signal(R)
        m.d.sync += [p2_valid.eq(p1_valid), p2_key.eq(p1_key), p2_end.eq(p1_end)]
        lane = p2_key % C
        present = []
        for r in range(R):
            m.d.sync += p2_dots[r].eq(sum(p1_sums[r]))
            present.append(block.valid[r] & (p2_key < block.n_keys) &
                           (~self.causal | (p2_key <= block.rows[r])) &
                           (~self.masked | self.present_read.data[r].bit_select(lane, 1)))
        m.d.comb += p2_present.eq(Cat(*present))

        # Serial scaling: S multipliers take the R sums S at a time.
        S = scale_lanes(geo)
        turns = -(-R // S)
        ser = [Signal(dot_shape, name=f"ser{i}") for i in range(turns * S)]
        ser_left = Signal(range(turns + 1))
        ser_key, ser_end, ser_present = Signal(geo.index), Signal(), Signal(R)
        with m.If(p2_valid):
            m.d.sync += [ser_left.eq(turns), ser_key.eq(p2_key), ser_end.eq(p2_end),
                         ser_present.eq(p2_present)]
            for i in range(turns * S):
                m.d.sync += ser[i].eq(p2_dots[i] if i < R else 0)
        with m.Elif(ser_left != 0):
            m.d.sync += ser_left.eq(ser_left - 1)
            for i in range(turns * S):
                m.d.sync += ser[i].eq(ser[i + S] if i + S < turns * S else 0)
        # M1: products; M2: rounded, saturated scores, collected into a word of R
        product_shape = signed(dot_shape.width + 17)
        m1_valid, m1_last, m1_key, m1_end, m1_present = Signal(), Signal(), Signal(geo.index), Signal(), Signal(R)
        m1_products = [Signal(product_shape, name=f"m1_product{s}") for s in range(S)]
        m.d.sync += [m1_valid.eq(ser_left != 0), m1_last.eq(ser_left == 1), m1_key.eq(ser_key),
                     m1_end.eq(ser_end), m1_present.eq(ser_present)]
        for s in range(S):
            m.d.sync += m1_products[s].eq(ser[s] * fmt.scale_mult)
        m2_valid, m2_key, m2_end, m2_present = Signal(), Signal(geo.index), Signal(), Signal(R)
        word = [Signal(fmt.score.shape, name=f"word{i}") for i in range(turns * S)]
        m.d.sync += [m2_valid.eq(m1_valid & m1_last), m2_key.eq(m1_key), m2_end.eq(m1_end),
                     m2_present.eq(m1_present)]
        with m.If(m1_valid):
            for i in range(turns * S):
                if i + S < turns * S:
                    m.d.sync += word[i].eq(word[i + S])
                else:
                    # (x + 2**(s-1)) >> s as ((x >> (s-1)) + 1) >> 1: the same value, a short adder
                    scaled = ((m1_products[i - (turns - 1) * S] >> (fmt.scale_shift - 1)) + 1) >> 1
                    m.d.sync += word[i].eq(saturate(scaled, fmt.score))

        # the bank, the row maxima and counts
        bank = memory.Memory(shape=score_word_layout(geo), depth=2 * geo.T, init=[])
        m.submodules.bank = bank
        write, read = bank.write_port(), bank.read_port()
        m.d.comb += [write.addr.eq(self.set * geo.T + m2_key), write.en.eq(m2_valid),
                     write.data.present.eq(m2_present),
                     read.addr.eq(self.score_read.addr), read.en.eq(self.score_read.en),
                     self.score_read.data.eq(read.data)]
        for r in range(R):
            m.d.comb += write.data.score[r].eq(word[r])
        first = m2_key == 0
        for half_set in range(2):
            with m.If(m2_valid & (self.set == half_set)):
                for r in range(R):
                    row_max = self.row_max[half_set][r]
                    count = self.present_count[half_set][r]
                    is_present = m2_present[r]
                    bigger = Mux(first, fmt.score.min, row_max)
                    m.d.sync += [
                        row_max.eq(Mux(is_present & (word[r] > bigger), word[r], bigger)),
                        count.eq(Mux(first, 0, count) + is_present),
                    ]
        m.d.comb += self.done.eq(m2_valid & m2_end)
        return m
