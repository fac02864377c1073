"""Stream components built only inside the tests, to show that the stream-contract proofs can fail:
a register slice (correct, or dropping valid under back-pressure) and a wrapper that ANDs an output's
valid with a free input."""
from amaranth.hdl import Module, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import Flow, In, Out


class Slice(wiring.Component):
    """Register slice; ``broken`` drops valid while the consumer stalls if ``glitch`` is high."""

    def __init__(self, width=4, broken=False):
        self.broken = broken
        super().__init__({"i": In(stream.Signature(width)), "o": Out(stream.Signature(width)),
                          "glitch": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.i.ready):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload)]
        if self.broken:
            with m.Elif(self.glitch):
                m.d.sync += self.o.valid.eq(0)      # BUG: withdraws a beat that was never taken
        return m


class Mutant(wiring.Component):
    """``dut`` with some of its outputs rewritten: ``changes`` maps a port path (a tuple, as
    :meth:`~amaranth.lib.wiring.Signature.flatten` gives it) to ``f(value, glitch)``, the value
    the port shows instead, ``glitch`` a free input."""

    def __init__(self, dut, changes):
        self.dut, self.changes = dut, changes
        members = dict(dut.signature.members)
        members["glitch"] = In(1)
        super().__init__(wiring.Signature(members))

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        inner = dict((path, value) for path, _, value in self.dut.signature.flatten(self.dut))
        for path, member, value in self.signature.flatten(self):
            if path == ("glitch",):
                continue
            if path in self.changes:
                m.d.comb += Value.cast(value).eq(self.changes[path](Value.cast(inner[path]), self.glitch))
            elif member.flow == Flow.In:
                m.d.comb += Value.cast(inner[path]).eq(value)
            else:
                m.d.comb += Value.cast(value).eq(inner[path])
        return m


def Glitch(dut, port):
    """``dut`` with the ``valid`` of its output stream ``port`` ANDed with the inverse of a free
    input: a mutant that may withdraw a beat nobody took, which the stream-contract proof must catch."""
    return Mutant(dut, {(port, "valid"): lambda valid, glitch: valid & ~glitch})
