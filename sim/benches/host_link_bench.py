"""cocotb bench of the host link (:class:`spattn.hw.link.HostLink`) on its generated Verilog.

The bench plays the host PC on the UART with cocotbext-uart (``UartSource`` on ``rx``, ``UartSink``
on ``tx``) and the frames of :mod:`spattn.link` (``encode_frame``, ``FrameDecoder``): it sends
register commands and waits for their replies, serves the board's MEM_READ frames with MEM_DATA
from a Python memory (in order, after random delays) and stores MEM_WRITE frames. A small
AXI4-Lite register model with random stalls sits on ``m_axil`` (unmapped addresses: SLVERR), and
cocotbext-axi's ``AxiMaster`` drives random bursts into ``s_axi`` with random valid/ready pauses.
Every byte read over the link is compared with the host's memory, every byte written with what
the master wrote.

Environment: ``SPATTN_MANIFEST`` (set by :func:`spattn.sim.runner.run_bench`); ``SPATTN_LINK_BURSTS``:
random AXI bursts of the memory test (default 24; the slow-host test runs a third of them).
"""

import collections
import itertools
import logging
import os
import random
import struct

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Event, RisingEdge, with_timeout
from cocotbext.axi import AxiBus, AxiMaster, AxiResp
from cocotbext.uart import UartSink, UartSource

from spattn.hw.axi import RESP_DECERR, RESP_OKAY, RESP_SLVERR
from spattn.link import (END, ESC, MAX_BODY, MAX_DATA, REPLY, Command, ErrorCode, Frame, FrameDecoder,
                         FrameError, crc32, encode_frame, slip_encode)
from spattn.sim.runner import load_manifest

CLOCK_NS = 10
#: Registers the model maps (word addresses 0 .. REGISTERS-1); others answer SLVERR.
REGISTERS = 16
#: The model answers reads of this address after STALL_CYCLES (to fill the link's buffers).
STALL_ADDRESS, STALL_CYCLES = 4 * (REGISTERS - 1), 40_000
MEMORY_BYTES = 1 << 16
BURSTS = int(os.environ.get("SPATTN_LINK_BURSTS", "24"))
READ_REGION, WRITE_REGION = (0, 0x8000), (0x8000, 0x10000)


def fired(valid, ready):
    """Whether a handshake took place at the rising edge just passed (undriven counts as low)."""
    return valid.value == 1 and ready.value == 1


def pauses(rng, p):
    """A cocotbext-axi pause generator: paused with probability ``p`` each cycle."""
    return (rng.random() < p for _ in itertools.count())


class RegisterModel:
    """AXI4-Lite subordinate on ``m_axil``: REGISTERS words, random ready/valid delays, SLVERR
    outside them (and for a partial wstrb). Handshakes are sampled at rising edges."""

    def __init__(self, dut, rng):
        self.dut, self.rng = dut, rng
        self.regs = [rng.getrandbits(32) for _ in range(REGISTERS)]
        cocotb.start_soon(self._run())

    def _mapped(self, addr):
        return addr % 4 == 0 and addr < 4 * REGISTERS

    async def _run(self):
        d, rng = self.dut, self.rng
        read = write_addr = write_data = b_resp = None   # read: [cycles to wait, data, resp]
        for name in ("arready", "rvalid", "awready", "wready", "bvalid"):
            getattr(d, f"m_axil__{name}").value = 0
        while True:
            await RisingEdge(d.clk)
            if fired(d.m_axil__arvalid, d.m_axil__arready):
                addr = int(d.m_axil__araddr.value)
                wait = STALL_CYCLES if addr == STALL_ADDRESS else rng.randrange(4)
                read = [wait, *((self.regs[addr // 4], RESP_OKAY) if self._mapped(addr) else (0, RESP_SLVERR))]
            if fired(d.m_axil__rvalid, d.m_axil__rready):
                read = None
            if fired(d.m_axil__awvalid, d.m_axil__awready):
                write_addr = int(d.m_axil__awaddr.value)
            if fired(d.m_axil__wvalid, d.m_axil__wready):
                write_data = (int(d.m_axil__wdata.value), int(d.m_axil__wstrb.value))
            if fired(d.m_axil__bvalid, d.m_axil__bready):
                b_resp = None
            if write_addr is not None and write_data is not None and b_resp is None:
                ok = self._mapped(write_addr) and write_data[1] == 0b1111
                if ok:
                    self.regs[write_addr // 4] = write_data[0]
                b_resp, write_addr, write_data = (RESP_OKAY if ok else RESP_SLVERR), None, None
            d.m_axil__arready.value = int(read is None and rng.random() < 0.5)
            d.m_axil__awready.value = int(write_addr is None and b_resp is None and rng.random() < 0.5)
            d.m_axil__wready.value = int(write_data is None and b_resp is None and rng.random() < 0.5)
            if read is not None:
                read[0] -= 1
            d.m_axil__rvalid.value = int(read is not None and read[0] < 0)
            if read is not None:
                d.m_axil__rdata.value, d.m_axil__rresp.value = read[1], read[2]
            d.m_axil__bvalid.value = int(b_resp is not None)
            d.m_axil__bresp.value = b_resp or 0


class Host:
    """The host PC: sends commands and waits for their replies; serves MEM_READ, stores MEM_WRITE."""

    def __init__(self, dut, cfg, rng, memory_delay=(0, 2000)):
        bit_ns = cfg.link_clocks_per_bit * CLOCK_NS
        baud = 1e9 / bit_ns
        assert int(1e9 / baud) == bit_ns, "cocotbext-uart times bits in whole ns"
        for name in ("rx", "tx", "s_axi_"):   # a line per byte or burst otherwise
            logging.getLogger(f"cocotb.{dut._name}.{name}").setLevel(logging.WARNING)
        self.source, self.sink = UartSource(dut.rx, baud=baud), UartSink(dut.tx, baud=baud)
        self.dut, self.rng, self.memory_delay = dut, rng, memory_delay
        self.memory = bytearray(rng.randbytes(MEMORY_BYTES))
        self.decoder = FrameDecoder()
        self.replies, self.reply_event = [], Event()
        self.reads, self.read_event = collections.deque(), Event()
        self.board_seq, self.tag, self.seq = 0, 0, 0
        self.mem_reads = self.mem_writes = 0
        self.broken = []       # anything the board sent that a host must not see
        cocotb.start_soon(self._receive())
        cocotb.start_soon(self._serve_reads())

    def send(self, data):
        self.source.write_nowait(data)   # one call per frame: frames never interleave

    def next_seq(self):
        self.seq = (self.seq + 1) % 256
        return self.seq

    async def _receive(self):
        while True:
            for item in self.decoder.feed(await self.sink.read()):
                if isinstance(item, FrameError):
                    self.broken.append(item)
                elif item.cmd in (Command.MEM_READ, Command.MEM_WRITE):
                    if item.seq != self.board_seq:
                        self.broken.append(("board seq", item.seq, self.board_seq))
                    self.board_seq = (item.seq + 1) % 256
                    if item.cmd == Command.MEM_READ:
                        tag, addr, length = struct.unpack("<BIH", item.body)
                        if tag != self.tag:
                            self.broken.append(("tag", tag, self.tag))
                        self.tag = (tag + 1) % 256
                        self.mem_reads += 1
                        self.reads.append((tag, addr, length))
                        self.read_event.set()
                    else:
                        (addr,), data = struct.unpack("<I", item.body[:4]), item.body[4:]
                        self.memory[addr:addr + len(data)] = data
                        self.mem_writes += 1
                else:
                    self.replies.append(item)
                    self.reply_event.set()

    async def _serve_reads(self):
        while True:
            while not self.reads:
                self.read_event.clear()
                await self.read_event.wait()
            tag, addr, length = self.reads.popleft()
            await ClockCycles(self.dut.clk, self.rng.randint(*self.memory_delay))
            self.send(encode_frame(self.next_seq(), Command.MEM_DATA,
                                   bytes([tag]) + self.memory[addr:addr + length]))

    async def reply(self, seq, timeout_us=2000):
        """The reply (or ERROR) with ``seq``."""
        async def wait():
            while True:
                for item in self.replies:
                    if item.seq == seq:
                        self.replies.remove(item)
                        return item
                self.reply_event.clear()
                await self.reply_event.wait()
        return await with_timeout(wait(), timeout_us, "us")

    async def command(self, cmd, body=b""):
        seq = self.next_seq()
        self.send(encode_frame(seq, cmd, body))
        return await self.reply(seq)

    async def reg_read(self, addr):
        reply = await self.command(Command.REG_READ, struct.pack("<I", addr))
        assert reply.cmd == Command.REG_READ | REPLY, reply
        return struct.unpack("<BI", reply.body)

    async def reg_write(self, addr, value):
        reply = await self.command(Command.REG_WRITE, struct.pack("<II", addr, value))
        assert reply.cmd == Command.REG_WRITE | REPLY, reply
        return reply.body[0]

    async def link_status(self):
        reply = await self.command(Command.LINK_STATUS)
        assert reply.cmd == Command.LINK_STATUS | REPLY, reply
        return struct.unpack("<III", reply.body)


async def setup(dut, seed, **host_args):
    _, cfg = load_manifest()
    rng = random.Random(seed)
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    dut.rst.value = 1
    host = Host(dut, cfg, rng, **host_args)
    regs = RegisterModel(dut, random.Random(rng.random()))
    master = AxiMaster(AxiBus.from_prefix(dut, "s_axi_"), dut.clk, dut.rst)
    for channel, p in ((master.write_if.aw_channel, 0.3), (master.write_if.w_channel, 0.3),
                       (master.write_if.b_channel, 0.3), (master.read_if.ar_channel, 0.3),
                       (master.read_if.r_channel, 0.3)):
        channel.set_pause_generator(pauses(random.Random(rng.random()), p))
    await ClockCycles(dut.clk, 5)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 5)
    return host, regs, master, rng


async def check_register_access(host, regs, rng):
    for _ in range(6):
        addr, value = 4 * rng.randrange(REGISTERS - 1), rng.getrandbits(32)
        assert await host.reg_write(addr, value) == RESP_OKAY
        assert await host.reg_read(addr) == (RESP_OKAY, value) == (RESP_OKAY, regs.regs[addr // 4])


@cocotb.test()
async def registers(dut):
    host, regs, _, rng = await setup(dut, 1)
    await check_register_access(host, regs, rng)
    assert await host.reg_read(4 * REGISTERS) == (RESP_SLVERR, 0)          # the register file's SLVERR
    assert await host.reg_write(4 * REGISTERS + 4, 1) == RESP_SLVERR
    assert await host.reg_read(1 << len(dut.m_axil__araddr)) == (RESP_DECERR, 0)   # beyond the port
    assert await host.link_status() == (16, 0, 0)
    assert not host.broken


async def random_traffic(master, host, rng, bursts):
    """``bursts`` random reads (checked against the host memory) and writes, several in flight,
    none crossing a 4 KiB page (as AXI requires: each is one burst, one frame)."""
    written = {}

    async def worker(worker_rng, count):
        for _ in range(count):
            length = 4 * worker_rng.randint(1, MAX_DATA // 4)
            if worker_rng.random() < 0.5:
                page = worker_rng.randrange(READ_REGION[0], READ_REGION[1], 0x1000)
                addr = worker_rng.randrange(page, page + 0x1000 - length + 1, 4)
                result = await master.read(addr, length)
                assert result.resp == AxiResp.OKAY
                assert bytes(result.data) == bytes(host.memory[addr:addr + length]), hex(addr)
            else:
                # each worker writes its own slice of the write region: no two writes race
                base = WRITE_REGION[0] + worker_rng.worker * 0x1000
                addr = worker_rng.randrange(base, base + 0x1000 - length + 1, 4)
                data = worker_rng.randbytes(length)
                result = await master.write(addr, data)
                assert result.resp == AxiResp.OKAY
                written.update({addr + k: b for k, b in enumerate(data)})

    tasks = []
    for n in range(4):
        worker_rng = random.Random(rng.random())
        worker_rng.worker = n
        tasks.append(cocotb.start_soon(worker(worker_rng, bursts // 4 + (n < bursts % 4))))
    for task in tasks:
        await task
    # B came when each MEM_WRITE was handed to the transmitter: a reply sent after is behind it
    await host.reg_read(0)
    assert all(host.memory[addr] == byte for addr, byte in written.items())


@cocotb.test()
async def memory_bursts(dut):
    host, regs, master, rng = await setup(dut, 2)
    await random_traffic(master, host, rng, BURSTS)
    assert host.mem_reads + host.mem_writes == BURSTS and not host.broken


@cocotb.test()
async def slow_host_and_registers_meanwhile(dut):
    # the host answers each MEM_READ only after several frame times; registers still work meanwhile
    host, regs, master, rng = await setup(dut, 3, memory_delay=(10_000, 30_000))
    traffic = cocotb.start_soon(random_traffic(master, host, rng, BURSTS // 3))
    await check_register_access(host, regs, rng)
    await traffic
    assert not host.broken


@cocotb.test()
async def refused_bursts(dut):
    host, _, master, rng = await setup(dut, 4)
    too_long = MAX_DATA + 4
    assert (await master.read(0x100, too_long)).resp == AxiResp.SLVERR
    assert (await master.write(WRITE_REGION[0], bytes(too_long))).resp == AxiResp.SLVERR
    assert (await master.write(WRITE_REGION[0] + 1, b"\x01\x02")).resp == AxiResp.SLVERR   # partial wstrb
    assert host.mem_reads == host.mem_writes == 0
    await random_traffic(master, host, rng, 4)
    assert not host.broken


def malformed_cases(rng):
    """(name, bytes on the wire, the ERROR code and seq the board must answer)."""
    good = encode_frame(0x31, Command.REG_READ, struct.pack("<I", 0))
    flipped = bytearray(good)
    flipped[4] ^= 0x10
    return [
        ("bad crc", bytes(flipped), ErrorCode.BAD_CRC, 0x31),
        ("truncated", good[:5], ErrorCode.TOO_SHORT, 0x31),       # ended by the END sent after it
        ("garbage", bytes([END, 0x00, END]), ErrorCode.TOO_SHORT, 0x00),
        ("bad escape", bytes([END, 0x32, Command.REG_READ, ESC, 0x41, END]), ErrorCode.BAD_ESCAPE, 0x32),
        ("oversize", slip_encode(bytes([0x33, Command.MEM_DATA]) + rng.randbytes(MAX_BODY + 8)),
         ErrorCode.TOO_LONG, 0x33),
        ("unknown command", encode_frame(0x34, 0x55, b""), ErrorCode.UNKNOWN_COMMAND, 0x34),
        ("bad length", encode_frame(0x35, Command.REG_WRITE, bytes(4)), ErrorCode.BAD_LENGTH, 0x35),
        ("unexpected data", encode_frame(0x36, Command.MEM_DATA, bytes(5)), ErrorCode.UNEXPECTED_DATA, 0x36),
    ]


@cocotb.test()
async def malformed_frames(dut):
    host, regs, _, rng = await setup(dut, 5)
    good = refused = 0
    for name, wire, code, seq in malformed_cases(rng):
        host.send(wire)
        if name == "truncated":
            host.send(bytes([END]))
        error = await host.reply(seq)
        assert (error.cmd, error.body[0]) == (Command.ERROR, code), name
        refused += 1
        assert await host.reg_read(0) == (RESP_OKAY, regs.regs[0]), f"after {name}"
        good += 1
    assert await host.link_status() == (good + 1, refused, 0)
    assert not host.broken


@cocotb.test()
async def overrun(dut):
    # a stalled register read holds one buffer, the next frame the other: the third finds none
    host, regs, _, _ = await setup(dut, 6)
    seqs = [host.next_seq() for _ in range(3)]
    for seq in seqs:
        host.send(encode_frame(seq, Command.REG_READ, struct.pack("<I", STALL_ADDRESS)))
    error = await host.reply(seqs[2])
    assert (error.cmd, error.body[0]) == (Command.ERROR, ErrorCode.OVERRUN)
    for seq in seqs[:2]:
        assert (await host.reply(seq)).body == struct.pack("<BI", RESP_OKAY, regs.regs[-1])
    assert await host.reg_read(0) == (RESP_OKAY, regs.regs[0])
    assert await host.link_status() == (4, 1, 0)
    assert not host.broken
