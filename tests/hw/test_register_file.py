"""The AXI4-Lite register file (:class:`spattn.hw.register_file.RegisterFile`) in Amaranth's simulator.

A cycle-by-cycle host model drives the five AXI channels with a delay of its own on each (address
before data, data before address, both in the same cycle; ready before or after valid), puts random
junk on a channel's payload while its valid is low, and checks the subordinate's side of the
protocol in every cycle:

* no combinational path: changing every input in a cycle changes no output in that cycle;
* a response only after its request's handshakes, held with a stable payload until it is taken,
  and no response nobody asked for;
* every transaction ends within a bounded number of cycles (nothing hangs).

A monitor records every port in every cycle; :func:`check_trace` then checks that a register port
changes, and a command port pulses (for exactly one cycle), only in the cycle an OKAY write
response appears. A small reference model (:class:`Model`) says what each transaction must answer.
"""

import dataclasses
import random
from collections import Counter

import pytest
from amaranth.back import verilog
from amaranth.hdl import Fragment, Shape
from amaranth.lib import wiring
from amaranth.sim import Simulator

from spattn.config import preset
from spattn.hw.axi import RESP_OKAY, RESP_SLVERR
from spattn.hw.register_file import RegisterFile
from spattn.hw.registers import accelerator_registers

PRESETS = ["tiny", "minilm"]
#: Cycles one transaction may take, delays included, before the bench calls it a hang.
HANG_CYCLES = 64

BUS_OUTPUTS = ("awready", "wready", "bvalid", "bresp", "arready", "rvalid", "rdata", "rresp")


def make(name):
    cfg = preset(name)
    regmap = accelerator_registers(cfg)
    return cfg, regmap, RegisterFile(regmap)


# ---- host model -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Write:
    addr: int
    data: int
    strb: int = 0b1111
    aw_delay: int = 0      # cycles from the transaction's start before awvalid rises
    w_delay: int = 0
    b_delay: int = 0       # cycles from the start before bready rises (may precede bvalid)
    # filled in by the host
    resp: int = None
    aw_cycle: int = None
    w_cycle: int = None


@dataclasses.dataclass
class Read:
    addr: int
    ar_delay: int = 0
    r_delay: int = 0
    resp: int = None
    data: int = None


class Host:
    """Drives ``dut.bus`` like an AXI4-Lite manager, one write and/or one read at a time."""

    def __init__(self, dut, rng):
        self.dut, self.bus, self.rng = dut, dut.bus, rng
        self.addr_limit = 1 << dut.addr_bits

    def _outputs(self, ctx):
        return [ctx.get(getattr(self.bus, name)) for name in BUS_OUTPUTS]

    async def run(self, ctx, write: Write = None, read: Read = None):
        bus, rng = self.bus, self.rng
        aw_done = w_done = b_done = write is None
        ar_done = r_done = read is None
        held_b = held_r = None        # a response seen but not taken: it must stay as it is
        for cycle in range(HANG_CYCLES):
            if b_done and r_done:
                break
            before = self._outputs(ctx)
            awvalid = not aw_done and cycle >= write.aw_delay
            wvalid = not w_done and cycle >= write.w_delay
            bready = not b_done and cycle >= write.b_delay
            arvalid = not ar_done and cycle >= read.ar_delay
            rready = not r_done and cycle >= read.r_delay
            # junk on every payload whose valid is low: the subordinate must not look at it
            ctx.set(bus.awvalid, awvalid)
            ctx.set(bus.awaddr, write.addr if awvalid else rng.randrange(self.addr_limit))
            ctx.set(bus.awprot, rng.randrange(8))
            ctx.set(bus.wvalid, wvalid)
            ctx.set(bus.wdata, write.data if wvalid else rng.getrandbits(32))
            ctx.set(bus.wstrb, write.strb if wvalid else rng.randrange(16))
            ctx.set(bus.bready, bready)
            ctx.set(bus.arvalid, arvalid)
            ctx.set(bus.araddr, read.addr if arvalid else rng.randrange(self.addr_limit))
            ctx.set(bus.arprot, rng.randrange(8))
            ctx.set(bus.rready, rready)
            assert self._outputs(ctx) == before, f"an output followed an input within cycle {cycle}"

            (_, _, awready, wready, bvalid, bresp, arready, rvalid, rdata, rresp) = \
                await ctx.tick().sample(*(getattr(bus, name) for name in BUS_OUTPUTS))

            if held_b is not None:
                assert bvalid and bresp == held_b, "a write response changed before it was taken"
            if held_r is not None:
                assert rvalid and (rresp, rdata) == held_r, "a read response changed before it was taken"
            if bvalid:
                assert write is not None and aw_done and w_done and not b_done, \
                    f"bvalid in cycle {cycle} without a write whose address and data were taken"
            if rvalid:
                assert read is not None and ar_done and not r_done, \
                    f"rvalid in cycle {cycle} without a read whose address was taken"

            if awvalid and awready:
                aw_done, write.aw_cycle = True, cycle
            if wvalid and wready:
                w_done, write.w_cycle = True, cycle
            if arvalid and arready:
                ar_done = True
            held_b = held_r = None
            if bvalid:
                if bready:
                    b_done, write.resp = True, int(bresp)
                else:
                    held_b = bresp
            if rvalid:
                if rready:
                    r_done, read.resp, read.data = True, int(rresp), int(rdata)
                else:
                    held_r = (rresp, rdata)
        else:
            raise AssertionError(f"a transaction did not finish in {HANG_CYCLES} cycles: {write} {read}")
        for signal in (bus.awvalid, bus.wvalid, bus.bready, bus.arvalid, bus.rready):
            ctx.set(signal, 0)
        return write, read

    async def write(self, ctx, addr, data, **kwargs):
        return (await self.run(ctx, write=Write(addr, data, **kwargs)))[0].resp

    async def read(self, ctx, addr, **kwargs):
        read = (await self.run(ctx, read=Read(addr, **kwargs)))[1]
        return read.resp, read.data


# ---- reference model ------------------------------------------------------------------------------

class Model:
    """What the register file must answer: the stored values and the command pulses it owes."""

    def __init__(self, regmap):
        self.regmap = regmap
        self.by_offset = {reg.offset: reg for reg in regmap}
        self.stored = {reg.name: reg.reset for reg in regmap if reg.access == "rw"}
        self.inputs = {reg.name: 0 for reg in regmap if reg.access == "ro" and reg.const is None}
        self.pulses = []

    def write(self, addr, data, strb=0b1111):
        reg = self.by_offset.get(addr)
        if reg is None or reg.access == "ro" or strb != 0b1111 or data & ~reg.mask:
            return RESP_SLVERR
        if reg.access == "rw":
            self.stored[reg.name] = data
        elif data:                                   # a command of 0 leaves no visible pulse
            self.pulses.append((reg.name, data))
        return RESP_OKAY

    def read(self, addr):
        reg = self.by_offset.get(addr)
        if reg is None:
            return RESP_SLVERR, 0
        if reg.const is not None:
            return RESP_OKAY, reg.const
        if reg.access == "wo":
            return RESP_OKAY, 0
        if reg.access == "rw":
            return RESP_OKAY, self.stored[reg.name]
        return RESP_OKAY, self.inputs[reg.name] & reg.mask       # reserved bits read 0

    def random_inputs(self, ctx, dut, rng):
        """New random values on every read-only input port."""
        for name in self.inputs:
            reg = self.regmap[name]
            self.inputs[name] = rng.getrandbits(reg.width)
            ctx.set(dut.port(reg), self.inputs[name])

    def check_ports(self, ctx, dut):
        for name, value in self.stored.items():
            assert ctx.get(dut.port(name)) == value, f"port {name.lower()}"


# ---- simulation -----------------------------------------------------------------------------------

def simulate(dut, bench):
    """Run ``bench(ctx)`` with a monitor; returns the trace: one dict of port values per cycle."""
    regmap = dut.regmap
    watched = {"bvalid": dut.bus.bvalid, "bresp": dut.bus.bresp}
    watched.update({reg.name: dut.port(reg) for reg in regmap if reg.access in ("rw", "wo")})
    trace = []

    async def monitor(ctx):
        async for _, _, *values in ctx.tick().sample(*watched.values()):
            trace.append(dict(zip(watched, (int(v) for v in values))))

    async def main(ctx):
        await bench(ctx)
        await ctx.tick().repeat(2)      # let the monitor see the last cycles

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(main)
    sim.add_testbench(monitor, background=True)
    sim.run()
    return trace


def check_trace(trace, regmap):
    """Register ports change, and command ports pulse, only where an OKAY write response rises."""
    rw = [reg.name for reg in regmap if reg.access == "rw"]
    wo = [reg.name for reg in regmap if reg.access == "wo"]
    pulses = []
    for cycle, now in enumerate(trace):
        before = trace[cycle - 1] if cycle else None
        write_lands = now["bvalid"] and now["bresp"] == RESP_OKAY and not (before and before["bvalid"])
        if before is not None:
            for name in rw:
                if now[name] != before[name]:
                    assert write_lands, f"{name} changed in cycle {cycle} without an OKAY write"
        for name in wo:
            if now[name]:
                assert write_lands, f"{name} pulsed in cycle {cycle} without an OKAY write"
                pulses.append((name, now[name]))
    return pulses


def expected_constants(cfg):
    """ID, SHAPE and FORMAT as the register table specifies them, written out independently."""
    return {
        "ID": 0x53504154,
        "SHAPE": cfg.max_tokens | cfg.heads << 16 | cfg.layers << 24,
        "FORMAT": cfg.head_dim | cfg.act_bits << 8 | cfg.act_msb_bits << 16 | cfg.score_bits << 24,
    }


# ---- tests ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESETS)
def test_ports_follow_the_register_map(name):
    cfg, regmap, dut = make(name)
    members = dut.signature.members
    assert dut.addr_bits == 7     # offsets 0x00 .. 0x58
    assert members["bus"].flow is wiring.In and members["bus"].signature.addr_bits == 7
    expected = {
        "ctrl": (wiring.Out, 3, 0), "status": (wiring.In, 13, 0),
        "tokens": (wiring.Out, cfg.count_bits, 0), "layer": (wiring.Out, 3, 0),
        "flags": (wiring.Out, 3, 0),
        "token_keep": (wiring.Out, 17, 1 << 16), "head_keep": (wiring.Out, 17, 1 << 16),
        "value_keep": (wiring.Out, 17, 1 << 16), "threshold": (wiring.Out, cfg.score_bits, 0),
        "dynatran": (wiring.Out, cfg.act_bits, 0), "mem_base": (wiring.Out, 32, 0),
        "alive_tokens": (wiring.In, cfg.count_bits, 0), "alive_heads": (wiring.In, cfg.heads.bit_length(), 0),
        "layer_tokens": (wiring.In, cfg.count_bits, 0), "layer_heads": (wiring.In, cfg.heads.bit_length(), 0),
        **{port: (wiring.In, 32, 0) for port in ("cycles", "bytes_read", "bytes_written",
                                                 "rows_recomputed", "pe_busy_cycles")},
    }
    Fragment.get(dut, None)                 # it elaborates
    ports = {key: member for key, member in members.items() if key != "bus"}
    assert set(ports) == set(expected)      # no ports for the constants ID, SHAPE and FORMAT
    for port, (flow, width, init) in expected.items():
        member = ports[port]
        assert (member.flow, Shape.cast(member.shape).width, member.init or 0) == (flow, width, init), port


@pytest.mark.parametrize("name", PRESETS)
def test_reads_return_constants_reset_values_and_inputs(name):
    cfg, regmap, dut = make(name)
    rng = random.Random(1)
    model = Model(regmap)
    constants = expected_constants(cfg)
    resets = {"TOKEN_KEEP": 1 << 16, "HEAD_KEEP": 1 << 16, "VALUE_KEEP": 1 << 16}

    async def bench(ctx):
        host = Host(dut, rng)
        assert not ctx.get(dut.bus.bvalid) and not ctx.get(dut.bus.rvalid)
        model.check_ports(ctx, dut)
        model.random_inputs(ctx, dut, rng)
        for reg in regmap:
            resp, data = await host.read(ctx, reg.offset)
            assert resp == RESP_OKAY, reg.name
            if reg.name in constants:
                assert data == constants[reg.name], reg.name
            elif reg.access == "rw":
                assert data == resets.get(reg.name, 0), reg.name
            elif reg.access == "wo":
                assert data == 0, reg.name
            else:
                assert data == model.inputs[reg.name] & reg.mask, reg.name
        # all-ones inputs read back as exactly their bits: reserved ones (STATUS 2..7) read 0
        for reg_name in model.inputs:
            reg = regmap[reg_name]
            ctx.set(dut.port(reg), (1 << reg.width) - 1)
            assert await host.read(ctx, reg.offset) == (RESP_OKAY, reg.mask), reg_name

    check_trace(simulate(dut, bench), regmap)


@pytest.mark.parametrize("name", PRESETS)
def test_rw_registers_store_what_is_written(name):
    _, regmap, dut = make(name)
    rng = random.Random(2)
    model = Model(regmap)

    async def bench(ctx):
        host = Host(dut, rng)
        for reg in regmap:
            if reg.access != "rw":
                continue
            for value in (reg.mask, 0, *(rng.getrandbits(reg.width) & reg.mask for _ in range(4))):
                assert await host.write(ctx, reg.offset, value) == model.write(reg.offset, value) == RESP_OKAY
                model.check_ports(ctx, dut)
                assert await host.read(ctx, reg.offset) == (RESP_OKAY, value), reg.name

    assert check_trace(simulate(dut, bench), regmap) == []


@pytest.mark.parametrize("name", PRESETS)
def test_command_writes_pulse_for_one_cycle(name):
    _, regmap, dut = make(name)
    rng = random.Random(3)
    model = Model(regmap)
    ctrl = regmap["CTRL"]
    values = [1, 2, 4, 3, 7, 1, 1, 5, 6, 0, 2]

    async def bench(ctx):
        host = Host(dut, rng)
        for value in values:
            before = ctx.get(dut.port(ctrl))
            assert before == 0
            resp = await host.write(ctx, ctrl.offset, value, b_delay=rng.randrange(4))
            assert resp == model.write(ctrl.offset, value) == RESP_OKAY
            assert await host.read(ctx, ctrl.offset) == (RESP_OKAY, 0)   # commands read as 0
            for _ in range(rng.randrange(3)):
                await ctx.tick()

    trace = simulate(dut, bench)
    assert check_trace(trace, regmap) == model.pulses == [("CTRL", v) for v in values if v]
    # one cycle each: a pulse is never followed by another nonzero cycle
    assert all(not (a["CTRL"] and b["CTRL"]) for a, b in zip(trace, trace[1:]))


def _refused_writes(cfg, regmap):
    """``(what, addr, data, strb)`` of writes that must get SLVERR and change nothing."""
    tokens, keep = regmap["TOKENS"], regmap["TOKEN_KEEP"]
    top = (1 << regmap.addr_bits) - 4
    return [
        ("unmapped just past the map", regmap.size, 1, 0b1111),
        ("unmapped at the top", top, 1, 0b1111),
        ("unaligned +1", tokens.offset + 1, 1, 0b1111),
        ("unaligned +2", tokens.offset + 2, 1, 0b1111),
        ("unaligned +3", keep.offset + 3, 1, 0b1111),
        ("read-only ID", regmap["ID"].offset, 0x53504154, 0b1111),
        ("read-only SHAPE", regmap["SHAPE"].offset, 0, 0b1111),
        ("read-only STATUS", regmap["STATUS"].offset, 1, 0b1111),
        ("read-only ALIVE_TOKENS", regmap["ALIVE_TOKENS"].offset, 3, 0b1111),
        ("read-only CYCLES", regmap["CYCLES"].offset, 123, 0b1111),
        ("partial strobe 0111", tokens.offset, 5, 0b0111),
        ("partial strobe 0001", tokens.offset, 5, 0b0001),
        ("partial strobe 1110", keep.offset, 5, 0b1110),
        ("no strobe", tokens.offset, 5, 0b0000),
        ("strobe on a command", regmap["CTRL"].offset, 1, 0b0001),
        ("TOKENS too wide", tokens.offset, 1 << cfg.count_bits, 0b1111),
        ("LAYER too wide", regmap["LAYER"].offset, regmap["LAYER"].mask + 1, 0b1111),
        ("FLAGS bit 3", regmap["FLAGS"].offset, 0b1000, 0b1111),
        ("FLAGS bit 31", regmap["FLAGS"].offset, 1 << 31 | 1, 0b1111),
        ("TOKEN_KEEP above 17 bits", keep.offset, 1 << 17, 0b1111),
        ("THRESHOLD too wide", regmap["THRESHOLD"].offset, 1 << cfg.score_bits, 0b1111),
        ("DYNATRAN too wide", regmap["DYNATRAN"].offset, 1 << cfg.act_bits, 0b1111),
        ("CTRL bit 3", regmap["CTRL"].offset, 0b1001, 0b1111),
    ]


@pytest.mark.parametrize("name", PRESETS)
def test_refused_transactions_get_slverr_and_change_nothing(name):
    cfg, regmap, dut = make(name)
    rng = random.Random(4)
    model = Model(regmap)
    rw = [reg for reg in regmap if reg.access == "rw"]
    refused_reads = [regmap.size, (1 << regmap.addr_bits) - 4, 1, 2, 3, regmap["TOKENS"].offset + 1,
                     regmap["CYCLES"].offset + 2]

    async def bench(ctx):
        host = Host(dut, rng)
        model.random_inputs(ctx, dut, rng)
        # fill the registers with something other than their reset values first
        for reg in rw:
            value = rng.getrandbits(reg.width) & reg.mask
            assert await host.write(ctx, reg.offset, value) == model.write(reg.offset, value)
        for what, addr, data, strb in _refused_writes(cfg, regmap):
            assert model.write(addr, data, strb) == RESP_SLVERR, what       # the model agrees
            assert await host.write(ctx, addr, data, strb=strb) == RESP_SLVERR, what
            model.check_ports(ctx, dut)
            # and the next transaction is served as usual
            reg = rng.choice(rw)
            value = rng.getrandbits(reg.width) & reg.mask
            resp = await host.write(ctx, reg.offset, value)
            assert resp == model.write(reg.offset, value) == RESP_OKAY, what
            assert await host.read(ctx, reg.offset) == (RESP_OKAY, value), what
        for addr in refused_reads:
            assert await host.read(ctx, addr) == (RESP_SLVERR, 0), hex(addr)
            assert await host.read(ctx, regmap["ID"].offset) == (RESP_OKAY, 0x53504154), hex(addr)
        model.check_ports(ctx, dut)

    assert check_trace(simulate(dut, bench), regmap) == []


def _random_transaction(rng, regmap, model):
    """A write, a read or both at once, mostly valid, with random delays on all five channels."""
    def address():
        roll = rng.random()
        if roll < 0.8:
            return rng.choice(regmap.registers).offset
        if roll < 0.9:
            return rng.choice(regmap.registers).offset + rng.randrange(1, 4)     # unaligned
        return rng.randrange(regmap.size, 1 << regmap.addr_bits) & ~3            # unmapped

    def value(addr):
        reg = model.by_offset.get(addr)
        if reg is not None and rng.random() < 0.85:
            return rng.getrandbits(reg.width) & reg.mask
        return rng.getrandbits(32)

    order = rng.choice(["address first", "data first", "same cycle"])
    first, second = rng.randrange(3), rng.randrange(1, 5)
    aw_delay, w_delay = {"address first": (first, first + second), "data first": (first + second, first),
                         "same cycle": (first, first)}[order]
    kind = rng.choice(["write", "read", "both"])
    write = read = None
    if kind != "read":
        addr = address()
        write = Write(addr, value(addr), strb=0b1111 if rng.random() < 0.9 else rng.randrange(16),
                      aw_delay=aw_delay, w_delay=w_delay, b_delay=rng.randrange(8))
    if kind != "write":
        read = Read(address(), ar_delay=rng.randrange(5), r_delay=rng.randrange(8))
    return write, read


@pytest.mark.parametrize("name", PRESETS)
def test_random_traffic_with_random_handshake_delays(name):
    _, regmap, dut = make(name)
    rng = random.Random(5)
    model = Model(regmap)
    orders, responses = Counter(), Counter()

    async def bench(ctx):
        host = Host(dut, rng)
        for _ in range(600):
            if rng.random() < 0.2:
                model.random_inputs(ctx, dut, rng)
            write, read = _random_transaction(rng, regmap, model)
            old = model.read(read.addr) if read else None
            await host.run(ctx, write, read)
            if write:
                assert write.resp == model.write(write.addr, write.data, write.strb), write
                orders["address first" if write.aw_cycle < write.w_cycle else
                       "data first" if write.w_cycle < write.aw_cycle else "same cycle"] += 1
                responses["write", write.resp] += 1
            if read:
                # a read alongside a write of the same register may see the old or the new value
                assert (read.resp, read.data) in {old, model.read(read.addr)}, read
                responses["read", read.resp] += 1
            model.check_ports(ctx, dut)
            for _ in range(rng.choice([0, 0, 0, 1, 2])):
                await ctx.tick()

    pulses = check_trace(simulate(dut, bench), regmap)
    assert pulses == model.pulses
    # every ordering of the write channels and every response kind really happened
    assert min(orders.values()) >= 60 and len(orders) == 3, orders
    assert min(responses.values()) >= 40 and len(responses) == 4, responses


def test_register_file_converts_to_verilog():
    _, regmap, dut = make("tiny")
    text = verilog.convert(dut, name="spattn_regs", emit_src=False)
    for port in ("bus__awaddr", "bus__rdata", "token_keep", "pe_busy_cycles", "ctrl"):
        assert port in text
