"""The R x C multiply-accumulate grid shared by Q·Kᵀ and P·V."""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spattn.formats import bits_for

from .common import Geometry

__all__ = ["MacGrid", "qk_step_layout", "pv_step_layout", "grid_tag_layout"]


def grid_tag_layout(geo: Geometry):
    """What travels with a step to its result: the key (Q·Kᵀ) or chunk (P·V) and the pass's end."""
    return data.StructLayout({"key": geo.index, "chunk": range(max(2, geo.W)), "end": 1})


def qk_step_layout(geo: Geometry):
    """One Q·Kᵀ step: ``q[r][c]`` (chunk of the block's query rows) against ``k[c]`` (the same
    chunk of one key); ``first``/``last`` open and close the key's accumulation."""
    return data.StructLayout({
        "q": data.ArrayLayout(data.ArrayLayout(signed(geo.cfg.act_bits), geo.C), geo.R),
        "k": data.ArrayLayout(signed(geo.cfg.act_bits), geo.C),
        "first": 1, "last": 1, "macs": unsigned(bits_for(geo.R * geo.C)), "tag": grid_tag_layout(geo),
    })


def pv_step_layout(geo: Geometry):
    """One P·V step: probability ``p[r]`` of one key for each block row against a chunk ``v[c]`` of
    that key's V row; ``first``/``last`` open and close the chunk's accumulation over keys."""
    return data.StructLayout({
        "p": data.ArrayLayout(unsigned(geo.fmt.prob.bits), geo.R),
        "v": data.ArrayLayout(signed(geo.cfg.act_bits), geo.C),
        "first": 1, "last": 1, "macs": unsigned(bits_for(geo.R * geo.C)), "tag": grid_tag_layout(geo),
    })


class MacGrid(wiring.Component):
    """``acc[r][c] = sum over a pass of a[r][c] * b[c]`` on R x C multipliers (the FPGA's DSPs).

    Q·Kᵀ steps multiply ``q[r][c] * k[c]``; P·V steps ``p[r] * v[c]``. Each accumulator starts
    over on a step with ``first`` and delivers its sum after a step with ``last``; a P·V sum
    starts at ``2**(prob.frac - 1)`` instead of 0 (the rounding half of the output format, so the
    output unit's rounding is a shift).

    Members
    -------
    qk, pv : In(stream of :func:`qk_step_layout` / :func:`pv_step_layout`)
        Steps; ``ready`` is always high, and at most one of the two is valid in a cycle (the
        scheduler gives the grid to one feed at a time).
    result_valid : Out(1)
        High for one cycle, 3 cycles after a ``last`` step: ``result`` holds the sums.
    result_qk : Out(1)
        The result closes a Q·Kᵀ step (else P·V).
    result : Out(array R of array C of signed ``acc_bits``)
    result_tag : Out(:func:`grid_tag_layout`)
        The tag of the ``last`` step.
    busy_cycles, macs : Out(32)
        Steps taken and multiply-accumulates on real rows and columns, since ``clear``.
    clear : In(1)

    Latency 3 cycles (operand register, product register, accumulator); one step per cycle;
    never stalls, so whoever takes ``result`` must take it in the cycle it is valid.
    """

    def __init__(self, geo: Geometry):
        self.geo = geo
        super().__init__({
            "qk": In(stream.Signature(qk_step_layout(geo))),
            "pv": In(stream.Signature(pv_step_layout(geo))),
            "result_valid": Out(1),
            "result_qk": Out(1),
            "result": Out(data.ArrayLayout(data.ArrayLayout(signed(geo.cfg.acc_bits), geo.C), geo.R)),
            "result_tag": Out(grid_tag_layout(geo)),
            "busy_cycles": Out(32),
            "macs": Out(32),
            "clear": In(1),
        })

    def elaborate(self, platform):
        geo = self.geo
        m = Module()
        R, C = geo.R, geo.C
        m.d.comb += [self.qk.ready.eq(1), self.pv.ready.eq(1)]
        # stage 1: operands
        s1_valid, s1_qk, s1_first, s1_last = Signal(), Signal(), Signal(), Signal()
        s1_tag = Signal(grid_tag_layout(geo))
        a = [[Signal(signed(geo.operand_bits), name=f"a{r}_{c}") for c in range(C)] for r in range(R)]
        b = [Signal(signed(geo.cfg.act_bits), name=f"b{c}") for c in range(C)]
        qk, pv = self.qk.payload, self.pv.payload
        m.d.sync += [
            s1_valid.eq(self.qk.valid | self.pv.valid), s1_qk.eq(self.qk.valid),
            s1_first.eq(Mux(self.qk.valid, qk.first, pv.first)),
            s1_last.eq(Mux(self.qk.valid, qk.last, pv.last)),
            s1_tag.eq(Mux(self.qk.valid, qk.tag, pv.tag)),
        ]
        for c in range(C):
            m.d.sync += b[c].eq(Mux(self.qk.valid, qk.k[c], pv.v[c]))
            for r in range(R):
                m.d.sync += a[r][c].eq(Mux(self.qk.valid, qk.q[r][c], pv.p[r]))
        # stage 2: products
        s2_valid, s2_qk, s2_first, s2_last = Signal(), Signal(), Signal(), Signal()
        s2_tag = Signal(grid_tag_layout(geo))
        m.d.sync += [s2_valid.eq(s1_valid), s2_qk.eq(s1_qk), s2_first.eq(s1_first),
                     s2_last.eq(s1_last), s2_tag.eq(s1_tag)]
        products = [[Signal(signed(geo.operand_bits + geo.cfg.act_bits), name=f"p{r}_{c}")
                     for c in range(C)] for r in range(R)]
        for r in range(R):
            for c in range(C):
                m.d.sync += products[r][c].eq(a[r][c] * b[c])
        # stage 3: accumulators, as wide as a Q·Kᵀ or P·V sum can get (the config rules bound both)
        cfg = geo.cfg
        dot_bits = 2 * cfg.act_bits + bits_for(max(1, geo.d - 1))
        pv_bits = ((1 << (cfg.act_bits - 1)) * ((1 << (cfg.score_bits - 1)) + cfg.max_tokens)).bit_length() + 1
        acc_shape = signed(min(cfg.acc_bits, max(dot_bits, pv_bits)))
        # P·V sums start at half an output LSB: the output unit's rounding is then a plain shift
        pv_start = 1 << (geo.fmt.prob.frac - 1)
        for r in range(R):
            for c in range(C):
                acc = Signal(acc_shape, name=f"acc{r}_{c}")
                m.d.comb += self.result[r][c].eq(acc)
                with m.If(s2_valid):
                    m.d.sync += acc.eq(Mux(s2_first, Mux(s2_qk, 0, pv_start), acc) + products[r][c])
        m.d.sync += [self.result_valid.eq(s2_valid & s2_last), self.result_qk.eq(s2_qk)]
        with m.If(s2_valid & s2_last):
            m.d.sync += self.result_tag.eq(s2_tag)

        steps = Signal(32)
        macs = Signal(32)
        step_macs = Mux(self.qk.valid, qk.macs, pv.macs)
        with m.If(self.clear):
            m.d.sync += [steps.eq(0), macs.eq(0)]
        with m.Elif(self.qk.valid | self.pv.valid):
            m.d.sync += [steps.eq(steps + 1), macs.eq(macs + step_macs)]
        m.d.comb += [self.busy_cycles.eq(steps), self.macs.eq(macs)]
        return m
