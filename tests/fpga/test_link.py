"""The host side of the link (:mod:`spattn.fpga.link`): :class:`LinkTransport` against a fake board
written here from :mod:`spattn.link`'s contract (register file, MEM_READ/MEM_WRITE while a register
command is pending, ERROR replies, lost frames, silence), over an in-memory channel pair; and
:class:`SerialChannel` on a pty."""

import asyncio
import os
import random
import struct
import time

import pytest

from spattn.fpga.link import LinkError, LinkStatus, LinkTransport, SerialChannel
from spattn.link import REPLY, Command, ErrorCode, FrameDecoder, FrameError, Status, encode_frame

MEMORY = 4096
REGISTERS = 0x100       # the fake board's register file: offsets below this
WAIT_S = 0.01


class QueueChannel:
    """One end of an in-memory byte pipe; sends go out in random small chunks, as a UART delivers."""

    def __init__(self, inbox, outbox, rng):
        self.inbox, self.outbox, self.rng = inbox, outbox, rng

    async def send(self, data):
        at = 0
        while at < len(data):
            step = self.rng.randint(1, 64)
            await self.outbox.put(bytes(data[at:at + step]))
            at += step

    async def receive(self):
        try:
            chunks = [await asyncio.wait_for(self.inbox.get(), WAIT_S)]
        except asyncio.TimeoutError:
            return b""
        while not self.inbox.empty():
            chunks.append(self.inbox.get_nowait())
        return b"".join(chunks)


def channel_pair(seed=0):
    rng = random.Random(seed)
    to_board, to_host = asyncio.Queue(), asyncio.Queue()
    return QueueChannel(to_host, to_board, rng), QueueChannel(to_board, to_host, rng)


class FakeBoard:
    """The board's side of the protocol. ``before_reply(board, frame)`` runs before a register
    command is answered (to start memory traffic); ``mangle(seq, wire)`` may damage host frames on
    their way in, as line noise would (the board then answers ERROR with the code its decoder finds)."""

    def __init__(self, channel, before_reply=None, mangle=None, reply=True):
        self.channel, self.before_reply, self.mangle, self.reply = channel, before_reply, mangle, reply
        self.registers = {offset: 0 for offset in range(0, REGISTERS, 4)}
        self.decoder = FrameDecoder()
        self.frames = []             # host frames received, in order
        self.data = asyncio.Queue()  # MEM_DATA frames, for the memory traffic
        self.seq = 0                 # seq of the next frame the board starts
        self.tag = 0
        self.status_counts = [0, 0, 0]

    async def start_frame(self, cmd, body):
        """Send a frame the board starts (MEM_READ, MEM_WRITE), counting its seq."""
        await self.channel.send(encode_frame(self.seq, cmd, body))
        self.seq = (self.seq + 1) % 256

    async def mem_read(self, address, length):
        """Send a MEM_READ; returns its tag (the answer is awaited with :meth:`answer`)."""
        tag, self.tag = self.tag, (self.tag + 1) % 256
        await self.start_frame(Command.MEM_READ, struct.pack("<BIH", tag, address, length))
        return tag

    async def answer(self, tag):
        frame = await self.data.get()
        assert frame.body[0] == tag, f"MEM_DATA tag {frame.body[0]}, expected {tag}"
        return frame.body[1:]

    async def mem_write(self, address, data):
        await self.start_frame(Command.MEM_WRITE, struct.pack("<I", address) + data)

    async def run(self):
        """Receive frames; MEM_DATA goes to :attr:`data` at once, commands to a worker of their own,
        so that a command held up by memory traffic does not stop the MEM_DATA it waits for."""
        commands = asyncio.Queue()
        worker = asyncio.create_task(self.work(commands))
        try:
            await self.receive(commands)
        finally:
            worker.cancel()

    async def work(self, commands):
        while True:
            await self.act(await commands.get())

    async def receive(self, commands):
        pending = b""
        while True:
            pending += await self.channel.receive()
            # act on whole frames only, so that mangle sees each frame's bytes
            while pending.count(bytes([0xC0])) >= 2 and pending.index(0xC0, 1) > 0:
                end = pending.index(0xC0, 1) + 1
                wire, pending = pending[:end], pending[end:]
                if self.mangle is not None:
                    wire = self.mangle(wire)
                for item in self.decoder.feed(wire):
                    if isinstance(item, FrameError):
                        self.status_counts[1] += 1
                        error = encode_frame(item.seq, Command.ERROR, bytes([item.code, item.cmd]))
                        await self.channel.send(error)
                        continue
                    self.frames.append(item)
                    self.status_counts[0] += 1
                    await (self.data if item.cmd == Command.MEM_DATA else commands).put(item)

    async def act(self, item):
        if self.before_reply is not None:
            await self.before_reply(self, item)
        if not self.reply:
            return
        if item.cmd == Command.REG_READ:
            (offset,) = struct.unpack("<I", item.body)
            ok = offset in self.registers
            body = struct.pack("<BI", Status.OKAY if ok else Status.SLVERR, self.registers.get(offset, 0))
        elif item.cmd == Command.REG_WRITE:
            offset, value = struct.unpack("<II", item.body)
            ok = offset in self.registers
            if ok:
                self.registers[offset] = value
            body = bytes([Status.OKAY if ok else Status.SLVERR])
        else:
            body = struct.pack("<III", *self.status_counts)
        await self.channel.send(encode_frame(item.seq, item.cmd | REPLY, body))


def run_with_board(host_calls, timeout=5.0, seed=0, **board_options):
    """Run ``host_calls(transport, board)`` against a fake board; returns its result, the transport
    and the board."""
    async def main():
        host_end, board_end = channel_pair(seed)
        board = FakeBoard(board_end, **board_options)
        transport = LinkTransport(host_end, MEMORY, timeout=timeout)
        board_task = asyncio.create_task(board.run())
        try:
            return await host_calls(transport, board), transport, board
        finally:
            board_task.cancel()
    return asyncio.run(main())


def test_registers_and_link_status():
    async def calls(transport, board):
        await transport.write_reg(0x10, 0xDEADBEEF)
        await transport.write_reg(0x14, 0xC0DBC0DB)    # SLIP's END and ESC in the value
        return [await transport.read_reg(0x10), await transport.read_reg(0x14), await transport.link_status()]

    got, transport, board = run_with_board(calls)
    assert got == [0xDEADBEEF, 0xC0DBC0DB, LinkStatus(frames_accepted=5, frames_refused=0, replies_dropped=0)]
    assert [f.seq for f in board.frames] == [0, 1, 2, 3, 4]
    assert transport.stats.register_commands == 5 and transport.stats.frames_sent == 5
    assert transport.stats.frames_received == 5 and transport.stats.resends == 0


def test_out_of_range_register_names_offset_and_status():
    async def calls(transport, board):
        await transport.read_reg(0x4000)

    with pytest.raises(LinkError, match=r"register read of offset 0x4000 answered SLVERR \(status 2\), "
                                        r"not OKAY"):
        run_with_board(calls)

    async def write(transport, board):
        await transport.write_reg(0x4004, 1)

    with pytest.raises(LinkError, match=r"register write of offset 0x4004 answered SLVERR"):
        run_with_board(write)


def test_memory_is_served_while_a_register_command_waits():
    """Before answering a STATUS read the board issues three MEM_READs at once (all in flight), then
    two MEM_WRITEs, and checks every MEM_DATA; the writes land in the host's memory. A MEM_READ that
    follows a reply in the same chunk is answered before the call returns."""
    rng = random.Random(7)
    image = rng.randbytes(MEMORY)
    written = {0x800: rng.randbytes(64), 0xF00: bytes([0xC0, 0xDB] * 128)}
    reads = [(0x000, 256), (0x100, 16), (0xFF0, 16)]
    seen = []

    async def traffic(board, frame):
        if frame.cmd != Command.REG_READ:
            return
        tags = [await board.mem_read(address, length) for address, length in reads]
        for address, data in written.items():
            await board.mem_write(address, data)
        seen.extend([await board.answer(tag) for tag in tags])

    async def calls(transport, board):
        await transport.write_mem(0, image)
        return await transport.read_reg(0x10)

    status, transport, board = run_with_board(calls, before_reply=traffic)
    assert status == 0
    assert seen == [image[a:a + n] for a, n in reads]      # served before the writes came in
    for address, data in written.items():
        assert transport.memory[address:address + len(data)] == data
    assert [f.body[0] for f in board.frames if f.cmd == Command.MEM_DATA] == [0, 1, 2]
    stats = transport.stats
    assert (stats.mem_reads, stats.mem_writes) == (3, 2)
    assert stats.mem_bytes_served == 256 + 16 + 16 and stats.mem_bytes_stored == 64 + 256
    assert stats.frames_sent == 1 + 3 and stats.frames_received == 1 + 3 + 2


def test_read_right_behind_the_reply_is_answered_before_returning():
    """A reply and a MEM_READ in one chunk: the read is answered without another command."""
    async def reply_then_read(board, frame):
        await board.channel.outbox.put(
            encode_frame(frame.seq, Command.REG_READ | REPLY, struct.pack("<BI", 0, 5))
            + encode_frame(board.seq, Command.MEM_READ, struct.pack("<BIH", board.tag, 0x20, 4)))

    async def calls(transport, board):
        await transport.write_mem(0x20, b"\x01\x02\x03\x04")
        value = await transport.read_reg(0x10)
        return value, await asyncio.wait_for(board.answer(0), 1.0)

    got, transport, _ = run_with_board(calls, before_reply=reply_then_read, reply=False)
    assert got == (5, b"\x01\x02\x03\x04")
    assert transport.stats.mem_reads == 1


def test_wire_byte_counts_are_what_crossed():
    async def calls(transport, board):
        await transport.write_reg(0x0C, 0xC0C0C0C0)
        return await transport.read_reg(0x0C)

    _, transport, _ = run_with_board(calls)
    # seq 0: END + 10 payload bytes (4 of them END, escaped to 2) + CRC; each way
    sent = len(encode_frame(0, Command.REG_WRITE, struct.pack("<II", 0x0C, 0xC0C0C0C0))) + len(
        encode_frame(1, Command.REG_READ, struct.pack("<I", 0x0C)))
    received = len(encode_frame(0, Command.REG_WRITE | REPLY, b"\x00")) + len(
        encode_frame(1, Command.REG_READ | REPLY, struct.pack("<BI", 0, 0xC0C0C0C0)))
    assert (transport.stats.wire_bytes_sent, transport.stats.wire_bytes_received) == (sent, received)


def flip_first(count):
    """Damage the first ``count`` host frames: one bit of the first body byte (a register offset's
    low byte, never a SLIP byte here), so the board's CRC check fails with seq and cmd intact."""
    damaged = []

    def mangle(wire):
        if len(damaged) < count:
            damaged.append(wire)
            wire = wire[:3] + bytes([wire[3] ^ 0x01]) + wire[4:]
        return wire
    return mangle


def test_damaged_register_command_is_resent():
    async def calls(transport, board):
        await transport.write_reg(0x20, 77)
        return await transport.read_reg(0x20)

    value, transport, board = run_with_board(calls, mangle=flip_first(2))
    assert value == 77
    assert transport.stats.resends == 2
    assert board.registers[0x20] == 77


def test_damage_that_persists_raises_naming_the_code():
    async def calls(transport, board):
        await transport.read_reg(0x20)

    with pytest.raises(LinkError, match=r"refused the REG_READ frame seq 0 with ERROR BAD_CRC after 3 tries"):
        run_with_board(calls, mangle=flip_first(3))


def test_error_reply_that_a_resend_cannot_cure():
    async def refuse(board, frame):
        await board.channel.send(encode_frame(frame.seq, Command.ERROR, bytes([ErrorCode.UNEXPECTED_DATA,
                                                                                 Command.MEM_DATA])))

    async def calls(transport, board):
        await transport.read_reg(0x20)

    with pytest.raises(LinkError, match=r"refused the MEM_DATA frame seq 0 with ERROR UNEXPECTED_DATA "
                                        r"\(waiting for the reply to REG_READ \(seq 0, offset 0x0020\)\)"):
        run_with_board(calls, before_reply=refuse, reply=False)


def test_lost_board_frame_is_a_seq_gap():
    async def lose_one(board, frame):
        tag = await board.mem_read(0, 4)
        await board.answer(tag)
        board.seq += 1          # this MEM_WRITE never reaches the host
        await board.mem_write(0x40, bytes(4))

    async def calls(transport, board):
        await transport.read_reg(0x10)

    with pytest.raises(LinkError, match=r"MEM_WRITE frame from the board has seq 2, expected 1: 1 frame\(s\) "
                                        r"the board started were lost"):
        run_with_board(calls, before_reply=lose_one)


def test_read_tags_out_of_order():
    async def skip_a_tag(board, frame):
        await board.answer(await board.mem_read(0, 4))
        board.tag += 1
        await board.mem_read(0, 4)

    async def calls(transport, board):
        await transport.read_reg(0x10)

    with pytest.raises(LinkError, match=r"MEM_READ \(seq 1\) has tag 2, expected 1"):
        run_with_board(calls, before_reply=skip_a_tag, reply=False)


def test_read_outside_the_memory():
    async def far(board, frame):
        await board.mem_read(MEMORY - 8, 16)

    async def calls(transport, board):
        await transport.read_reg(0x10)

    with pytest.raises(LinkError, match=rf"memory read \(MEM_READ seq 0\) of 16 bytes at 0x{MEMORY - 8:x} is "
                                        rf"outside the host's {MEMORY}-byte memory"):
        run_with_board(calls, before_reply=far, reply=False)


def test_damaged_board_frame():
    async def noise(board, frame):
        await board.channel.send(bytes([0xC0, 1, 2, 3, 4, 5, 6, 7, 0xC0]))

    async def calls(transport, board):
        await transport.read_reg(0x10)

    with pytest.raises(LinkError, match=r"a frame from the board does not decode "
                                        r"\(BAD_CRC, seq 1, cmd 0x02\)"):
        run_with_board(calls, before_reply=noise, reply=False)


def test_reply_with_another_seq():
    async def calls(transport, board):
        transport.seq = 5
        board.before_reply = None
        board.reply = False
        task = transport.read_reg(0x10)
        await board.channel.send(encode_frame(4, Command.REG_READ | REPLY, struct.pack("<BI", 0, 0)))
        await task

    with pytest.raises(LinkError, match=r"reply REG_READ with seq 4 came while waiting for the reply to "
                                        r"REG_READ \(seq 5"):
        run_with_board(calls)


def test_silence_times_out_saying_what_it_waited_for():
    async def calls(transport, board):
        await transport.write_reg(0x30, 1)

    started = time.monotonic()
    with pytest.raises(LinkError, match=r"no reply to REG_WRITE \(seq 0, offset 0x0030\) from the board "
                                        r"after 0.2 s without a frame"):
        run_with_board(calls, timeout=0.2, reply=False)
    assert time.monotonic() - started < 2


def test_serial_channel_on_a_pty():
    """Every byte value both ways through a pty in raw mode; receive() returns b"" when idle."""
    master, slave = os.openpty()
    data = bytes(range(256)) * 4

    async def main():
        with SerialChannel(os.ttyname(slave), 115200, wait_s=0.05) as channel:
            assert await channel.receive() == b""
            os.write(master, data)
            got = b""
            while len(got) < len(data):
                got += await channel.receive()
            await channel.send(data)
            back = b""
            while len(back) < len(data):
                back += os.read(master, 4096)
            return got, back

    try:
        got, back = asyncio.run(main())
    finally:
        os.close(master)
        os.close(slave)
    assert got == data and back == data
