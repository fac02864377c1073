"""Softmax unit: a block's probabilities from its scores, the confidence check, the prob bank."""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from spattn.formats import bits_for

from ..softmax import ExpLanes, SerialDivider, reciprocal_bits
from .common import Geometry, ReadPort, block_layout, probs_layout
from .scores import score_word_layout

__all__ = ["SoftmaxUnit", "prob_word_layout", "sample_layout"]


def prob_word_layout(geo: Geometry):
    """The final probabilities of one key for the ``R`` rows of a block (0 where the row is not
    final or the key not present), and which rows are final with the key present."""
    return data.StructLayout({"prob": data.ArrayLayout(unsigned(geo.fmt.prob.bits), geo.R),
                              "present": unsigned(geo.R)})


def sample_layout(geo: Geometry):
    """A prob-bank word as it is written, with its key."""
    return data.StructLayout({"key": geo.index, "word": prob_word_layout(geo)})


class SoftmaxUnit(wiring.Component):
    """The integer softmax of :class:`spattn.formats.AttentionFormats` over a block's rows, ``R``
    lanes (one per row) wide, one key per cycle.

    Pass 1 reads the block's score words and sums each row's exponents; ``R`` serial dividers
    give the reciprocals; the confidence check marks the rows whose largest probability,
    ``min(reciprocal, prob.max)`` (the row maximum's exponent is exactly 1), is below
    ``threshold`` in a block from MSB planes with progressive quantization: they are recomputed
    later (``redo``); the others are final. Pass 2 reads the scores again and writes each key's
    probabilities to the prob bank, to ``probs`` (when some row is final) and to ``sample``.

    Members
    -------
    go : In(1), block : In(:func:`block_layout`), set : In(1)
    row_max : In(array 2 of array R of score)
        Row maxima of each half of the score bank (from the score unit).
    progressive : In(1), threshold : In(prob bits + 1)
    score_read : Out(:class:`ReadPort` of the score bank)
    redo : Out(stream of row index)
        Rows to recompute, in slot order.
    decided : Out(1), final : Out(R)
        One cycle when the check is done; ``final`` holds until the next ``go``.
    pass2 : In(1)
        Permission to write the prob bank (its readers are done with the previous block).
    pass2_start : Out(1)
    probs : Out(stream of :func:`probs_layout`)
    sample : Out(:func:`sample_layout`), sample_valid : Out(1)
    merge_read, select_read : In(:class:`ReadPort` of :func:`prob_word_layout`)
        The prob bank (``max_tokens`` words, by key), for two readers.
    done : Out(1), idle : Out(1)

    Latency per block about ``2 * n_keys + reciprocal bits + R + 12`` cycles, plus stalls of ``probs``.
    """

    PROBS_DEPTH = 16

    def __init__(self, geo: Geometry):
        self.geo = geo
        fmt = geo.fmt
        super().__init__({
            "go": In(1), "block": In(block_layout(geo.cfg)), "set": In(1),
            "row_max": In(data.ArrayLayout(data.ArrayLayout(fmt.score.shape, geo.R), 2)),
            "progressive": In(1), "threshold": In(fmt.prob.bits + 1),
            "score_read": Out(ReadPort(2 * geo.T, score_word_layout(geo))),
            "redo": Out(stream.Signature(geo.index)),
            "decided": Out(1), "final": Out(geo.R),
            "pass2": In(1), "pass2_start": Out(1),
            "probs": Out(stream.Signature(probs_layout(geo.cfg))),
            "sample": Out(sample_layout(geo)), "sample_valid": Out(1),
            "merge_read": In(ReadPort(geo.T, prob_word_layout(geo))),
            "select_read": In(ReadPort(geo.T, prob_word_layout(geo))),
            "done": Out(1), "idle": Out(1),
        })

    def elaborate(self, platform):
        geo = self.geo
        fmt = geo.fmt
        m = Module()
        R = geo.R
        m.submodules.exp = exp = ExpLanes(fmt, R)
        block = Signal(block_layout(geo.cfg))
        bank_set = Signal()
        maxima = Signal(data.ArrayLayout(fmt.score.shape, R))
        key = Signal(geo.count)
        issuing = Signal()
        in_pass2 = Signal()
        issue = Signal()

        # ---- the pass pipeline: E1 score word, E2 distances, E3-E5 exponents, E6 product,
        # E7 probability ---------------------------------------------------------------------------
        tag = data.StructLayout({"valid": 1, "key": geo.index, "last": 1})
        stages = [Signal(tag, name=f"e{i}") for i in range(1, 8)]
        e1, e5, e6, e7 = stages[0], stages[4], stages[5], stages[6]
        m.d.comb += self.score_read.addr.eq(bank_set * geo.T + key)
        m.d.sync += [e1.valid.eq(issue), e1.key.eq(key), e1.last.eq(key + 1 == block.n_keys)]
        m.d.sync += [later.eq(earlier) for earlier, later in zip(stages, stages[1:])]
        word = self.score_read.data
        present = [Signal(R, name=f"e{i}_present") for i in range(2, 6)]      # E2 .. E5
        m.d.sync += [present[0].eq(word.present)] + [b.eq(a) for a, b in zip(present, present[1:])]
        for r in range(R):
            distance = Signal.like(exp.x[r], name=f"distance{r}")
            m.d.sync += distance.eq(Mux(word.present[r], maxima[r] - word.score[r], 0))
            m.d.comb += exp.x[r].eq(distance)
        exps = [Mux(present[-1][r], exp.e[r], 0) for r in range(R)]
        total_shape = unsigned(fmt.exp_frac + 1 + bits_for(geo.T))
        totals = [Signal(total_shape, name=f"total{r}") for r in range(R)]
        with m.If(e5.valid & ~in_pass2):
            for r in range(R):
                m.d.sync += totals[r].eq(totals[r] + exps[r])

        dividend_bits, divisor_bits = reciprocal_bits(fmt, geo.T)
        recips, dividers_idle = [], []
        start_division = Signal()
        for r in range(R):
            divider = SerialDivider(dividend_bits, divisor_bits)
            m.submodules[f"divider{r}"] = divider
            m.d.comb += [divider.dividend.eq((1 << (fmt.exp_frac + fmt.prob.frac)) + (totals[r] >> 1)),
                         divider.divisor.eq(totals[r]), divider.start.eq(start_division)]
            recips.append(divider.quotient[:fmt.prob.frac + 2])
            dividers_idle.append(divider.idle)

        e6_products = [Signal(unsigned(fmt.exp_frac + fmt.prob.frac + 3), name=f"e6_product{r}")
                       for r in range(R)]
        e6_present = Signal(R)
        m.d.sync += e6_present.eq(present[-1] & self.final)
        for r in range(R):
            m.d.sync += e6_products[r].eq(exps[r] * recips[r])
        e7_word = Signal(prob_word_layout(geo))
        m.d.sync += e7_word.present.eq(e6_present)
        for r in range(R):
            # (x + 2**(f-1)) >> f as ((x >> (f-1)) + 1) >> 1: the same value, a short adder
            p = ((e6_products[r] >> (fmt.exp_frac - 1)) + 1) >> 1
            m.d.sync += e7_word.prob[r].eq(Mux(e6_present[r], Mux(p > fmt.prob.max, fmt.prob.max, p), 0))
        e7_out = Signal()
        m.d.sync += e7_out.eq(e6.valid & in_pass2)

        # ---- outputs of pass 2 -------------------------------------------------------------------
        bank = memory.Memory(shape=prob_word_layout(geo), depth=geo.T, init=[])
        m.submodules.bank = bank
        write = bank.write_port()
        m.d.comb += [write.addr.eq(e7.key), write.data.eq(e7_word), write.en.eq(e7_out)]
        for reader in (self.merge_read, self.select_read):
            port = bank.read_port()
            m.d.comb += [port.addr.eq(reader.addr), port.en.eq(reader.en), reader.data.eq(port.data)]
        m.d.comb += [self.sample_valid.eq(e7_out), self.sample.key.eq(e7.key), self.sample.word.eq(e7_word)]
        beat = probs_layout(geo.cfg)
        m.submodules.probs_fifo = fifo = SyncFIFOBuffered(width=beat.size, depth=self.PROBS_DEPTH)
        any_final = self.final.any()
        m.d.comb += [fifo.w_en.eq(e7_out & any_final),
                     fifo.w_data.eq(Cat(e7.key, block.rows, self.final, e7_word.prob, e7.last)),
                     self.probs.valid.eq(fifo.r_rdy), self.probs.payload.eq(fifo.r_data),
                     fifo.r_en.eq(self.probs.valid & self.probs.ready)]
        # credit: never more keys in flight than the queue can still take
        in_flight = Signal(range(len(stages) + 2))
        m.d.sync += in_flight.eq(in_flight + (issue & in_pass2) - e7_out)
        room = Signal()
        m.d.comb += room.eq(fifo.level + in_flight < self.PROBS_DEPTH - 1)

        # ---- control -----------------------------------------------------------------------------
        drained = ~Cat(*(stage.valid for stage in stages)).any()
        slot = Signal(range(R + 1))
        redo_rows = Signal(R)
        m.d.comb += self.redo.payload.eq(block.rows[0])
        for r in range(1, R):
            with m.If(slot == r):
                m.d.comb += self.redo.payload.eq(block.rows[r])
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.idle.eq(1)
                with m.If(self.go):
                    m.d.sync += [block.eq(self.block), bank_set.eq(self.set), maxima.eq(self.row_max[self.set]),
                                 key.eq(0), issuing.eq(1), in_pass2.eq(0)]
                    m.d.sync += [total.eq(0) for total in totals]
                    m.next = "PASS1"
            with m.State("PASS1"):
                m.d.comb += issue.eq(issuing)
                with m.If(issuing):
                    m.d.sync += key.eq(key + 1)
                    with m.If(key + 1 == block.n_keys):
                        m.d.sync += issuing.eq(0)
                with m.Elif(drained):
                    m.d.comb += start_division.eq(1)
                    m.next = "DIVIDE"
            with m.State("DIVIDE"):
                with m.If(Cat(*dividers_idle).all()):
                    max_probs = [Mux(recip > fmt.prob.max, fmt.prob.max, recip) for recip in recips]
                    redo = [block.valid[r] & ~block.full & self.progressive & (max_probs[r] < self.threshold)
                            for r in range(R)]
                    m.d.sync += [redo_rows.eq(Cat(*redo)), slot.eq(0),
                                 self.final.eq(block.valid & ~Cat(*redo))]
                    m.next = "REDO"
            with m.State("REDO"):
                with m.If(slot == R):
                    m.d.comb += self.decided.eq(1)
                    m.next = "WAIT"
                with m.Elif(~redo_rows.bit_select(slot, 1)):
                    m.d.sync += slot.eq(slot + 1)
                with m.Else():
                    m.d.comb += self.redo.valid.eq(1)
                    with m.If(self.redo.ready):
                        m.d.sync += slot.eq(slot + 1)
            with m.State("WAIT"):
                with m.If(self.pass2):
                    m.d.comb += self.pass2_start.eq(1)
                    m.d.sync += [key.eq(0), issuing.eq(1), in_pass2.eq(1)]
                    m.next = "PASS2"
            with m.State("PASS2"):
                m.d.comb += issue.eq(issuing & room)
                with m.If(issue):
                    m.d.sync += key.eq(key + 1)
                    with m.If(key + 1 == block.n_keys):
                        m.d.sync += issuing.eq(0)
                with m.Elif(~issuing & drained):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        return m
