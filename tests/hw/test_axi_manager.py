"""The AXI4 memory port (:class:`spattn.hw.axi_manager.AxiManager`) in Amaranth's simulator.

One testbench process plays every neighbour of the manager, cycle by cycle: the request and data
streams it is fed (random valid stalls, payload held until taken), the consumer of its read data
(random ready) and a behavioural AXI subordinate over a byte memory (random AR/AW/W ready, random
R and B delays, responses in order, SLVERR on "poisoned" addresses). Before each clock edge it
reads every output and checks it against a model of what the manager has been given so far: the
AXI rules (VALID held with a stable payload until READY, burst fields, reads in flight), the read
data beat for beat, WLAST, the counters, ``reads_done``/``writes_done`` and ``error``. After the
edge it applies the handshakes that took place to the model.
"""

import random
import re
from collections import deque

import pytest
from amaranth.back import verilog
from amaranth.hdl import Value
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from spattn.config import ConfigError
from spattn.hw.axi import AXI_MAX_BURST, AXI4Signature, BURST_INCR, RESP_OKAY, RESP_SLVERR
from spattn.hw.axi_manager import AxiManager

MEM_BYTES = 1 << 16
READ_REGION = (0x0000, 0x8000)     # filled with random words, only read
WRITE_REGION = (0x8000, 0x10000)   # only written

AXI_INPUTS = [name for name, member in AXI4Signature().members.items() if member.flow == In]
AXI_OUTPUTS = [name for name, member in AXI4Signature().members.items() if member.flow == Out]


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def random_burst(rng, region, max_beats):
    """A word-aligned burst inside ``region`` that does not cross a 4 KiB boundary."""
    beats = rng.randint(1, max_beats)
    page = rng.randrange(region[0], region[1], 4096)
    offset = rng.randrange(0, 4096 - 4 * beats + 1, 4)
    return page + offset, beats


class Stalls:
    """Probability, per cycle, that each neighbour is willing: 1.0 means no stalls at all."""

    def __init__(self, req=1.0, wdata=1.0, consume=1.0, arready=1.0, awready=1.0, wready=1.0,
                 rvalid=1.0, bvalid=1.0):
        self.req, self.wdata, self.consume = req, wdata, consume
        self.arready, self.awready, self.wready = arready, awready, wready
        self.rvalid, self.bvalid = rvalid, bvalid


HEAVY = Stalls(req=0.5, wdata=0.6, consume=0.5, arready=0.4, awready=0.4, wready=0.5, rvalid=0.6, bvalid=0.3)
LIGHT = Stalls(req=0.9, wdata=0.9, consume=0.9, arready=0.8, awready=0.8, wready=0.9, rvalid=0.9, bvalid=0.7)


class Bench:
    """The manager's neighbours and the model of what it must do (see the module docstring)."""

    def __init__(self, dut, rng, stalls, *, poison=(), check_comb=False):
        self.dut, self.rng, self.stalls = dut, rng, stalls
        self.poison = set(poison)          # word addresses answered with SLVERR
        self.check_comb = check_comb
        ports = [(".".join(path), member.flow, Value.cast(value))
                 for path, member, value in dut.signature.flatten(dut)]
        self.input_ports = [(name, value) for name, flow, value in ports if flow == In]
        self.output_ports = [(name, value) for name, flow, value in ports if flow == Out]
        self.mem = bytearray(MEM_BYTES)
        self.mem[READ_REGION[0]:READ_REGION[1]] = rng.randbytes(READ_REGION[1] - READ_REGION[0])
        self.expected_mem = bytearray(self.mem)
        self.cycle = 0
        # Drivers of the manager's input streams: what is left to send, what is on offer.
        self.read_reqs, self.write_reqs, self.write_words = deque(), deque(), deque()
        self.offer = {"read_req": None, "write_req": None, "write_data": None}
        self.clear_now = False             # clear in the next cycle only
        self.hold_clear = False            # clear in every cycle
        self.clearing = False
        # Model of the manager.
        self.expected_beats = deque()      # (data, last) still to come on read_data
        self.expected_ar, self.expected_aw = deque(), deque()
        self.expected_w_lengths = deque()  # beats of each write burst whose W is not complete
        self.read_words_open = 0           # words requested and not yet delivered on read_data
        self.writes_open = 0               # write bursts accepted and not answered on B
        self.words_buffered = 0            # write_data words accepted and not sent on W
        self.reads_in_flight = self.most_reads_in_flight = 0
        self.error = False
        self.bytes_read = self.bytes_written = 0
        # Subordinate.
        self.ar_queue, self.aw_queue = deque(), deque()
        self.r_burst = None                # [addr, beats left] of the burst being answered
        self.r_beat = None                 # (data, last, resp) on offer
        self.w_current, self.w_bursts = [], deque()
        self.b_queue = deque()
        self.b_offer = None
        self.prev = None                   # outputs sampled in the previous cycle
        # Cycles (edges) of interesting handshakes, for the throughput measurements.
        self.delivered_at, self.w_at, self.read_req_at, self.write_req_at = [], [], [], []
        self.ar_at, self.aw_at = [], []

    # ---- what the test asks for -----------------------------------------------------------------

    def read(self, addr, beats):
        self.read_reqs.append((addr, beats))

    def write(self, addr, words):
        self.write_reqs.append((addr, len(words)))
        self.write_words.extend(words)
        if not self._poisoned(addr, len(words)):
            for i, word in enumerate(words):
                self.expected_mem[addr + 4 * i:addr + 4 * i + 4] = word.to_bytes(4, "little")

    def _poisoned(self, addr, beats):
        return any(addr + 4 * i in self.poison for i in range(beats))

    def word(self, addr):
        return int.from_bytes(self.mem[addr:addr + 4], "little")

    # ---- one cycle ------------------------------------------------------------------------------

    def _offer(self, ctx, name, pending, payload_of, p):
        port = getattr(self.dut, name)
        if self.offer[name] is None and pending and self.rng.random() < p:
            self.offer[name] = payload_of(pending.popleft())
        ctx.set(port.valid, self.offer[name] is not None)
        if self.offer[name] is not None:
            ctx.set(port.payload, self.offer[name])
        else:                                       # no valid beat: garbage the manager must ignore
            bits = port.payload.as_value()
            ctx.set(bits, self.rng.getrandbits(len(bits)))

    def _set_inputs(self, ctx):
        rng, s, dut, axi = self.rng, self.stalls, self.dut, self.dut.axi
        self._offer(ctx, "read_req", self.read_reqs, lambda r: {"addr": r[0], "beats": r[1]}, s.req)
        self._offer(ctx, "write_req", self.write_reqs, lambda r: {"addr": r[0], "beats": r[1]}, s.req)
        self._offer(ctx, "write_data", self.write_words, lambda w: {"data": w}, s.wdata)
        ctx.set(dut.read_data.ready, rng.random() < s.consume)
        self.clearing = self.clear_now or self.hold_clear
        ctx.set(dut.clear, self.clearing)
        inputs = {"arready": rng.random() < s.arready, "awready": rng.random() < s.awready,
                  "wready": rng.random() < s.wready}
        if self.r_beat is None:
            if self.r_burst is None and self.ar_queue:
                addr, length = self.ar_queue.popleft()
                self.r_burst = [addr, length + 1]
            if self.r_burst is not None and rng.random() < s.rvalid:
                addr, left = self.r_burst
                self.r_beat = (self.word(addr), int(left == 1),
                               RESP_SLVERR if addr in self.poison else RESP_OKAY)
        if self.r_beat is None:
            inputs.update(rvalid=0, rdata=rng.getrandbits(32), rlast=rng.getrandbits(1),
                          rresp=rng.getrandbits(2))
        else:
            inputs.update(rvalid=1, rdata=self.r_beat[0], rlast=self.r_beat[1], rresp=self.r_beat[2])
        if self.b_offer is None and self.b_queue and rng.random() < s.bvalid:
            self.b_offer = self.b_queue.popleft()
        inputs.update(bvalid=int(self.b_offer is not None),
                      bresp=self.b_offer if self.b_offer is not None else rng.getrandbits(2))
        for name, value in inputs.items():
            ctx.set(getattr(axi, name), value)
        return inputs

    def _axi_outputs(self, ctx):
        return {name: ctx.get(getattr(self.dut.axi, name)) for name in AXI_OUTPUTS}

    def _check_no_combinational_path(self, ctx):
        """Drive every input with other values within the cycle: no output may move.

        A3.2.2 only forbids paths from AXI inputs to AXI outputs; the manager promises more, that
        every output comes from state (so, e.g., ``rready`` does not follow ``read_data.ready``).
        """
        inputs, outputs = self.input_ports, self.output_ports
        before = {path: ctx.get(value) for path, value in outputs}
        real = {path: ctx.get(value) for path, value in inputs}
        for _ in range(2):
            for _, value in inputs:
                ctx.set(value, self.rng.getrandbits(len(value)))
            after = {path: ctx.get(value) for path, value in outputs}
            moved = [name for name in before if after[name] != before[name]]
            assert not moved, f"cycle {self.cycle}: {moved} follow an input in the same cycle"
        for path, value in inputs:
            ctx.set(value, real[path])

    def _sample(self, ctx):
        dut = self.dut
        now = self._axi_outputs(ctx)
        for port in ("read_req", "write_req", "write_data"):
            now[f"{port}.ready"] = ctx.get(getattr(dut, port).ready)
        now["read_data.valid"] = ctx.get(dut.read_data.valid)
        now["read_data.ready"] = ctx.get(dut.read_data.ready)
        now["read_data"] = (ctx.get(dut.read_data.payload.data), ctx.get(dut.read_data.payload.last))
        for name in ("writes_done", "reads_done", "error", "bytes_read", "bytes_written"):
            now[name] = ctx.get(getattr(dut, name))
        return now

    def _check(self, now):
        where = f"cycle {self.cycle}"
        prev = self.prev
        if prev is not None:
            # VALID, once raised, stays high with the same payload until READY.
            held = {"arvalid": ("arready", ["araddr", "arlen", "arsize", "arburst"]),
                    "awvalid": ("awready", ["awaddr", "awlen", "awsize", "awburst"]),
                    "wvalid": ("wready", ["wdata", "wstrb", "wlast"]),
                    "read_data.valid": ("read_data.ready", ["read_data"])}
            for valid, (ready, payload) in held.items():
                if prev[valid] and not prev[ready]:
                    assert now[valid], f"{where}: {valid} dropped before {ready}"
                    for field in payload:
                        assert now[field] == prev[field], f"{where}: {field} changed while {valid} waited"
        assert now["bready"] in (0, 1)
        assert now["reads_done"] == (self.read_words_open == 0), \
            f"{where}: reads_done = {now['reads_done']} with {self.read_words_open} words to deliver"
        assert now["writes_done"] == (self.writes_open == 0 and self.words_buffered == 0), \
            f"{where}: writes_done = {now['writes_done']} with {self.writes_open} bursts open, " \
            f"{self.words_buffered} words buffered"
        assert now["error"] == self.error, f"{where}: error = {now['error']}, expected {self.error}"
        assert now["bytes_read"] == self.bytes_read, \
            f"{where}: bytes_read {now['bytes_read']} != {self.bytes_read}"
        assert now["bytes_written"] == self.bytes_written, \
            f"{where}: bytes_written {now['bytes_written']} != {self.bytes_written}"

    def _apply(self, now, inputs):
        """The handshakes of the edge just taken, applied to the model and the subordinate."""
        where = f"edge {self.cycle}"
        max_beats, max_reads = self.dut.max_beats, self.dut.max_reads
        if self.clearing:
            self.error, self.bytes_read, self.bytes_written = False, 0, 0
        if self.offer["read_req"] is not None and now["read_req.ready"]:
            addr, beats = self.offer["read_req"]["addr"], self.offer["read_req"]["beats"]
            self.offer["read_req"] = None
            self.read_req_at.append(self.cycle)
            self.expected_ar.append((addr, beats - 1))
            self.expected_beats.extend((self.word(addr + 4 * i), int(i == beats - 1)) for i in range(beats))
            self.read_words_open += beats
        if self.offer["write_req"] is not None and now["write_req.ready"]:
            addr, beats = self.offer["write_req"]["addr"], self.offer["write_req"]["beats"]
            self.offer["write_req"] = None
            self.write_req_at.append(self.cycle)
            self.expected_aw.append((addr, beats - 1))
            self.expected_w_lengths.append(beats)
            self.writes_open += 1
            assert self.writes_open <= self.dut.max_writes, f"{where}: more write bursts open than max_writes"
        if self.offer["write_data"] is not None and now["write_data.ready"]:
            self.offer["write_data"] = None
            self.words_buffered += 1
        if now["read_data.valid"] and now["read_data.ready"]:
            assert self.expected_beats, f"{where}: read_data beat {now['read_data']} nobody asked for"
            expected = self.expected_beats.popleft()
            assert now["read_data"] == expected, \
                f"{where}: read_data (data, last) {now['read_data']} != {expected}"
            self.read_words_open -= 1
            self.delivered_at.append(self.cycle)
        if now["arvalid"] and inputs["arready"]:
            assert (now["arsize"], now["arburst"]) == (2, BURST_INCR), f"{where}: AR size/burst"
            assert self.expected_ar, f"{where}: AR nobody asked for"
            assert (now["araddr"], now["arlen"]) == self.expected_ar.popleft(), f"{where}: AR address/length"
            assert now["arlen"] < max_beats
            self.ar_queue.append((now["araddr"], now["arlen"]))
            self.ar_at.append(self.cycle)
            self.reads_in_flight += 1
            assert self.reads_in_flight <= max_reads, \
                f"{where}: more than max_reads = {max_reads} reads in flight"
            self.most_reads_in_flight = max(self.most_reads_in_flight, self.reads_in_flight)
        if self.r_beat is not None and now["rready"]:
            _, last, resp = self.r_beat
            self.r_beat = None
            self.bytes_read += 4
            self.error |= resp != RESP_OKAY
            self.r_burst[0] += 4
            self.r_burst[1] -= 1
            if last:
                self.r_burst = None
                self.reads_in_flight -= 1
        if now["awvalid"] and inputs["awready"]:
            assert (now["awsize"], now["awburst"]) == (2, BURST_INCR), f"{where}: AW size/burst"
            assert self.expected_aw, f"{where}: AW nobody asked for"
            assert (now["awaddr"], now["awlen"]) == self.expected_aw.popleft(), f"{where}: AW address/length"
            self.aw_queue.append((now["awaddr"], now["awlen"]))
            self.aw_at.append(self.cycle)
        if now["wvalid"] and inputs["wready"]:
            assert now["wstrb"] == 0b1111, f"{where}: wstrb {now['wstrb']:#06b}"
            assert self.expected_w_lengths, f"{where}: W beat of a burst nobody asked for"
            assert self.words_buffered > 0, f"{where}: W beat of a word nobody gave"
            self.words_buffered -= 1
            self.bytes_written += 4
            self.w_at.append(self.cycle)
            self.w_current.append(now["wdata"])
            final = len(self.w_current) == self.expected_w_lengths[0]
            assert now["wlast"] == final, \
                f"{where}: wlast = {now['wlast']} on beat {len(self.w_current)} " \
                f"of {self.expected_w_lengths[0]}"
            if final:
                self.expected_w_lengths.popleft()
                self.w_bursts.append(self.w_current)
                self.w_current = []
        while self.aw_queue and self.w_bursts:
            (addr, length), words = self.aw_queue.popleft(), self.w_bursts.popleft()
            assert len(words) == length + 1
            poisoned = self._poisoned(addr, len(words))
            if not poisoned:
                for i, word in enumerate(words):
                    self.mem[addr + 4 * i:addr + 4 * i + 4] = word.to_bytes(4, "little")
            self.b_queue.append(RESP_SLVERR if poisoned else RESP_OKAY)
        if self.b_offer is not None and now["bready"]:
            self.error |= self.b_offer != RESP_OKAY
            self.b_offer = None
            self.writes_open -= 1

    async def step(self, ctx):
        inputs = self._set_inputs(ctx)
        if self.check_comb:
            self._check_no_combinational_path(ctx)
        now = self._sample(ctx)
        self._check(now)
        await ctx.tick()
        self._apply(now, inputs)
        self.prev = {**now, **{name: inputs[name] for name in ("arready", "awready", "wready")}}
        self.cycle += 1
        self.clear_now = False
        return now

    def idle(self, now):
        return not (self.read_reqs or self.write_reqs or self.write_words or any(self.offer.values())
                    or self.expected_beats or self.writes_open or self.words_buffered or self.b_queue
                    or self.b_offer is not None or self.r_burst is not None) \
            and now["reads_done"] and now["writes_done"]

    async def run_until_idle(self, ctx, limit=20000):
        for _ in range(limit):
            now = await self.step(ctx)
            if self.idle(now):
                return
        raise AssertionError(f"not idle after {limit} cycles: {len(self.expected_beats)} read words "
                             f"to come, {self.writes_open} writes open, {self.words_buffered} words buffered")

    async def clear(self, ctx):
        self.clear_now = True
        await self.step(ctx)

    def check_memory(self):
        lo, hi = WRITE_REGION
        assert self.mem[lo:hi] == self.expected_mem[lo:hi], "written memory differs"


# ---- tests -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{"max_beats": 0}, {"max_beats": AXI_MAX_BURST + 1}, {"max_reads": 0},
                                    {"max_writes": 0}])
def test_impossible_parameters_are_refused(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        AxiManager(**{"max_beats": 4, **kwargs})


def test_generated_ports_keep_axi_names():
    text = verilog.convert(AxiManager(16), name="axi_manager")
    for name in AXI_INPUTS + AXI_OUTPUTS:
        direction = "input" if name in AXI_INPUTS else "output"
        assert re.search(rf"^  {direction} (\[\d+:0\] )?axi__{name};$", text, re.M), name
    assert "output [32:0] read_data__payload;" in text      # data, then last in bit 32
    assert "input [36:0] read_req__payload;" in text         # addr, then beats (5 bits for 1..16)


@pytest.mark.parametrize("max_beats, max_reads, stalls, seed", [
    (8, 4, HEAVY, 1),
    (8, 4, LIGHT, 2),
    (1, 1, HEAVY, 3),
    (16, 2, LIGHT, 4),
    (5, 3, HEAVY, 5),
], ids=["8x4-heavy", "8x4-light", "1x1-heavy", "16x2-light", "5x3-heavy"])
def test_random_bursts(max_beats, max_reads, stalls, seed):
    dut = AxiManager(max_beats, max_reads=max_reads)
    rng = random.Random(seed)
    bench = Bench(dut, rng, stalls)

    async def main(ctx):
        for _ in range(150):
            if rng.random() < 0.5:
                bench.read(*random_burst(rng, READ_REGION, max_beats))
            else:
                addr, beats = random_burst(rng, WRITE_REGION, max_beats)
                bench.write(addr, [rng.getrandbits(32) for _ in range(beats)])
        await bench.run_until_idle(ctx)
        bench.check_memory()
        assert bench.bytes_read == 4 * len(bench.delivered_at) and bench.bytes_written == 4 * len(bench.w_at)
        assert not bench.error
        # Reads really overlapped: as many bursts in flight as the manager allows.
        if max_reads > 1:
            assert bench.most_reads_in_flight == max_reads

    run(dut, main)


def test_write_data_before_and_after_its_request():
    """All data first, then the requests; then the requests first, then the data."""
    dut = AxiManager(8, max_writes=2)
    rng = random.Random(6)
    bench = Bench(dut, rng, LIGHT)

    async def main(ctx):
        bursts = [random_burst(rng, WRITE_REGION, 8) for _ in range(3)]
        words = [[rng.getrandbits(32) for _ in range(beats)] for _, beats in bursts]
        bench.write_words.extend(w for ws in words for w in ws)
        for _ in range(30):                        # data only: it waits in the write buffer
            now = await bench.step(ctx)
            assert not now["wvalid"]                # (_check: writes_done low once a word is in)
        assert bench.words_buffered > 0
        for (addr, _), ws in zip(bursts, words):
            bench.write_reqs.append((addr, len(ws)))
            bench.expected_mem[addr:addr + 4 * len(ws)] = b"".join(w.to_bytes(4, "little") for w in ws)
        await bench.run_until_idle(ctx)
        for (addr, beats) in [random_burst(rng, WRITE_REGION, 8) for _ in range(4)]:
            words = [rng.getrandbits(32) for _ in range(beats)]
            bench.write_reqs.append((addr, beats))
            bench.expected_mem[addr:addr + 4 * beats] = b"".join(w.to_bytes(4, "little") for w in words)
            aw_sent = False
            for _ in range(20):                    # request only: AW goes out, W waits
                now = await bench.step(ctx)
                assert not now["wvalid"]
                aw_sent |= now["awvalid"]
            assert aw_sent
            bench.write_words.extend(words)
            await bench.run_until_idle(ctx)
        bench.check_memory()

    run(dut, main)


def test_error_is_sticky_and_cleared():
    dut = AxiManager(8, max_reads=2)
    rng = random.Random(7)
    bad_read, bad_write = 0x1000, 0x9000
    bench = Bench(dut, rng, LIGHT, poison={bad_read + 8, bad_write})

    async def main(ctx):
        bench.read(0x2000, 4)
        bench.read(bad_read, 4)                    # third beat answered SLVERR
        bench.read(0x3000, 8)
        await bench.run_until_idle(ctx)
        assert bench.error and bench.bytes_read == 4 * 16
        for _ in range(10):                         # sticky
            await bench.step(ctx)
        await bench.clear(ctx)
        assert not bench.error and bench.bytes_read == 0
        bench.read(0x4000, 8)
        bench.write(0xa000, [rng.getrandbits(32) for _ in range(5)])
        await bench.run_until_idle(ctx)             # _check: error still low, counters from 0
        assert not bench.error and (bench.bytes_read, bench.bytes_written) == (32, 20)
        bench.write(bad_write, [1, 2, 3])           # B answers SLVERR
        bench.write(0xb000, [4, 5])
        await bench.run_until_idle(ctx)
        assert bench.error and bench.bytes_written == 20 + 20
        # Clear held high while a read runs: each beat counts after the clear, and the SLVERR beat
        # sets error in its clearing cycle (released once it has, so that it shows).
        await bench.clear(ctx)
        bench.hold_clear = True
        bench.read(bad_read, 4)
        while not bench.error:                      # _check: bytes_read 0 or 4 in every cycle
            await bench.step(ctx)
        bench.hold_clear = False
        await bench.run_until_idle(ctx)
        assert bench.error and bench.bytes_read == 8      # the bad third beat and the fourth
        bench.check_memory()

    run(dut, main)


def test_no_combinational_path_from_inputs_to_outputs():
    dut = AxiManager(8, max_reads=3)
    rng = random.Random(8)
    bench = Bench(dut, rng, HEAVY, check_comb=True)

    async def main(ctx):
        for _ in range(16):
            bench.read(*random_burst(rng, READ_REGION, 8))
            addr, beats = random_burst(rng, WRITE_REGION, 8)
            bench.write(addr, [rng.getrandbits(32) for _ in range(beats)])
        await bench.run_until_idle(ctx)
        bench.check_memory()

    run(dut, main)


def beats_per_cycle(starts, ends):
    """Words moved per cycle from the first request's edge to the last word's edge, inclusive."""
    return len(ends) / (ends[-1] - starts[0] + 1)


@pytest.mark.parametrize("bursts, beats, max_reads", [(1, 256, 1), (16, 16, 4)], ids=["1x256", "16x16"])
def test_read_throughput(bursts, beats, max_reads):
    dut = AxiManager(beats, max_reads=max_reads)
    bench = Bench(dut, random.Random(9), Stalls())

    async def main(ctx):
        for i in range(bursts):
            bench.read(READ_REGION[0] + 0x1000 * i, beats)
        await bench.run_until_idle(ctx)
        rate = beats_per_cycle(bench.read_req_at, bench.delivered_at)
        assert len(bench.delivered_at) == bursts * beats
        assert rate >= 0.9, f"{rate:.3f} beats per cycle"
        # In steady state: one word every cycle, no bubble between bursts.
        gaps = {b - a for a, b in zip(bench.delivered_at, bench.delivered_at[1:])}
        assert gaps == {1}
        # Latency: AR two cycles after the request, R the next cycle (the subordinate's), the
        # word on read_data two cycles after its R beat.
        assert bench.ar_at[0] - bench.read_req_at[0] == 2
        assert bench.delivered_at[0] - bench.read_req_at[0] == 2 + 1 + 2

    run(dut, main)


@pytest.mark.parametrize("bursts, beats", [(1, 256), (16, 16)], ids=["1x256", "16x16"])
def test_write_throughput(bursts, beats):
    dut = AxiManager(beats, max_writes=4)
    rng = random.Random(10)
    bench = Bench(dut, rng, Stalls())

    async def main(ctx):
        for i in range(bursts):
            bench.write(WRITE_REGION[0] + 0x1000 * i, [rng.getrandbits(32) for _ in range(beats)])
        await bench.run_until_idle(ctx)
        bench.check_memory()
        rate = beats_per_cycle(bench.write_req_at, bench.w_at)
        assert rate >= 0.9, f"{rate:.3f} beats per cycle"
        assert {b - a for a, b in zip(bench.w_at, bench.w_at[1:])} == {1}
        # Latency: AW and W two cycles after the request and the first word (same edge here).
        assert bench.aw_at[0] - bench.write_req_at[0] == 2
        assert bench.w_at[0] - bench.write_req_at[0] == 2

    run(dut, main)
