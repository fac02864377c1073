"""Integer softmax parts: the exponent lanes and the per-row reciprocal (a serial divider)."""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from spattn.formats import AttentionFormats, bits_for

__all__ = ["ExpLanes", "SerialDivider"]


class ExpLanes(wiring.Component):
    """``e = 2**-x`` in the exponent format of :class:`spattn.formats.AttentionFormats`, per lane.

    ``x = u * 2**F + f`` (``F = score.frac``) is a non-negative distance from the row maximum;
    ``e = ((exp_lut[f] << 1 >> u) + 1) >> 1``, and 0 for ``u > exp_frac + 1``, exactly as
    :func:`spattn.sim.golden.intattention.softmax_int` computes it.

    Members
    -------
    x : In(array of ``lanes`` unsigned distances, ``score_bits + 1`` bits)
    e : Out(array of ``lanes`` unsigned ``exp_frac + 1``-bit exponents)

    Latency 3 cycles (the table is a synchronous ROM in block RAM, one read port per lane; its
    data is registered; then a registered shifter); throughput one set of lanes per cycle. No
    handshake: the caller tracks validity.
    """

    def __init__(self, fmt: AttentionFormats, lanes):
        self.fmt, self.lanes = fmt, lanes
        super().__init__({
            "x": In(data.ArrayLayout(unsigned(fmt.score.bits + 1), lanes)),
            "e": Out(data.ArrayLayout(unsigned(fmt.exp_frac + 1), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt
        frac = fmt.score.frac
        # In block RAM (two lanes share one, a read port each), not in LUTs
        table = memory.Memory(shape=unsigned(fmt.exp_frac + 1), depth=1 << frac, init=fmt.exp_lut,
                              attrs={"ram_style": "block"})
        m.submodules.table = table
        limit = fmt.exp_frac + 1
        for lane in range(self.lanes):
            port = table.read_port()
            x = self.x[lane]
            m.d.comb += port.addr.eq(x[:frac])
            shift = Signal(range(limit + 2), name=f"shift{lane}")
            looked_up = Signal.like(port.data, name=f"looked_up{lane}")
            shift_late = Signal.like(shift, name=f"shift_late{lane}")
            # Distances of more than exp_frac + 1 octaves round to 0: clamp the shift there.
            m.d.sync += [shift.eq(Mux((x >> frac) > limit, limit + 1, x >> frac)),
                         looked_up.eq(port.data), shift_late.eq(shift),
                         self.e[lane].eq(((looked_up << 1) >> shift_late) + 1 >> 1)]
        return m


class SerialDivider(wiring.Component):
    """``quotient = dividend // divisor`` by restoring division, one quotient bit per cycle.

    Members
    -------
    start : In(1)
        Takes ``dividend`` and ``divisor`` (which must be non-zero) when ``idle``.
    dividend : In(unsigned ``dividend_bits``)
    divisor : In(unsigned ``divisor_bits``)
    quotient : Out(unsigned ``dividend_bits``)
        Valid while ``idle`` after a division, until the next ``start``.
    idle : Out(1)

    Latency ``dividend_bits`` cycles from ``start`` to ``idle``; one division at a time.
    """

    def __init__(self, dividend_bits, divisor_bits):
        self.dividend_bits, self.divisor_bits = dividend_bits, divisor_bits
        super().__init__({
            "start": In(1),
            "dividend": In(unsigned(dividend_bits)),
            "divisor": In(unsigned(divisor_bits)),
            "quotient": Out(unsigned(dividend_bits)),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        bits = self.dividend_bits
        remainder = Signal(unsigned(self.divisor_bits + 1))
        divisor = Signal(unsigned(self.divisor_bits))
        numerator = Signal(unsigned(bits))      # dividend bits not yet brought down, MSB first
        count = Signal(range(bits + 1))
        m.d.comb += self.idle.eq(count == 0)
        trial = Signal(unsigned(self.divisor_bits + 2))
        m.d.comb += trial.eq((remainder << 1) | numerator[-1])
        with m.If(count == 0):
            with m.If(self.start):
                m.d.sync += [remainder.eq(0), divisor.eq(self.divisor), numerator.eq(self.dividend),
                             count.eq(bits), self.quotient.eq(0)]
        with m.Else():
            fits = trial >= divisor
            m.d.sync += [
                remainder.eq(Mux(fits, trial - divisor, trial)),
                numerator.eq(numerator << 1),
                self.quotient.eq((self.quotient << 1) | fits),
                count.eq(count - 1),
            ]
        return m


def reciprocal_bits(fmt: AttentionFormats, max_tokens):
    """Widths of the softmax reciprocal's division: ``(dividend_bits, divisor_bits)``."""
    divisor = fmt.exp_frac + 1 + bits_for(max_tokens)
    dividend = max(fmt.exp_frac + fmt.prob.frac + 1, divisor) + 1
    return dividend, divisor


__all__ += ["reciprocal_bits"]
