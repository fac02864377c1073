"""The frame receiver (behind the SLIP decoder) classifies every input as spattn.link does:
FrameDecoder's framing checks, then check_command; plus OVERRUN and dropped errors."""

import random
import struct

from amaranth.hdl import Module
from amaranth.sim import Simulator

from spattn.hw.link.frame_rx import BODY_OFFSET, FrameReceiver
from spattn.hw.link.layouts import BANK_BYTES
from spattn.hw.link.slip_rx import SlipRx
from spattn.link import (BODY_LENGTHS, END, ESC, MAX_BODY, MAX_DATA, Command, ErrorCode, Frame,
                         FrameDecoder, FrameError, check_command, crc32, encode_frame, slip_encode)


class Receiver:
    """SlipRx → FrameReceiver, fed one byte per cycle, with a reader that empties each good frame's
    bank and releases it (unless ``hold`` banks are to stay taken)."""

    def __init__(self):
        self.slip, self.rx = SlipRx(), FrameReceiver()
        self.top = Module()
        self.top.submodules.slip, self.top.submodules.rx = self.slip, self.rx
        self.top.d.comb += [self.rx.i.valid.eq(self.slip.o.valid), self.rx.i.payload.eq(self.slip.o.payload),
                            self.slip.o.ready.eq(self.rx.i.ready)]

    def run(self, chunks, hold=False, take=True):
        """Feed each chunk of bytes, then read the good frames it completed (errors are taken on
        every cycle); returns the items and the number of cycles ``dropped`` was high."""
        items, dropped = [], []
        slip, rx = self.slip, self.rx

        async def bench(ctx):
            async def tick():
                # errors are taken as they come, as the dispatcher does (they need no bank)
                error = bool(take and ctx.get(rx.frames.valid) and ctx.get(rx.frames.payload).error)
                if error:
                    frame = ctx.get(rx.frames.payload)
                    items.append(FrameError(ErrorCode(frame.error), frame.seq, frame.cmd))
                ctx.set(rx.frames.ready, error)
                dropped.append(ctx.get(rx.dropped))
                await ctx.tick()
                ctx.set(rx.frames.ready, 0)

            async def collect():
                while take and ctx.get(rx.frames.valid):
                    frame = ctx.get(rx.frames.payload)
                    ctx.set(rx.frames.ready, 1)
                    await ctx.tick()
                    ctx.set(rx.frames.ready, 0)
                    body = bytearray()
                    for k in range(frame.length):
                        ctx.set(rx.buffer.addr, frame.bank * BANK_BYTES + BODY_OFFSET + k)
                        await tick()
                        body.append(ctx.get(rx.buffer.data))
                    items.append(Frame(frame.seq, frame.cmd, bytes(body)))
                    if not hold:
                        ctx.set(rx.release, 1)
                        await tick()
                        ctx.set(rx.release, 0)

            for chunk in chunks:
                for byte in chunk:
                    ctx.set(slip.i.valid, 1)
                    ctx.set(slip.i.payload, byte)
                    await tick()
                ctx.set(slip.i.valid, 0)
                await tick()
                await collect()

        sim = Simulator(self.top)
        sim.add_clock(1e-8)
        sim.add_testbench(bench)
        sim.run()
        return items, sum(dropped)


def reference(chunks):
    """What the board must answer: FrameDecoder's items, good frames through check_command."""
    decoder, items = FrameDecoder(), []
    for chunk in chunks:
        for item in decoder.feed(chunk):
            code = check_command(item) if isinstance(item, Frame) else None
            items.append(FrameError(code, item.seq, item.cmd) if code else item)
    return items


def good_frame(rng):
    cmd = rng.choice(list(BODY_LENGTHS))
    length = BODY_LENGTHS[cmd]
    body = rng.randbytes(length) if length is not None else bytes([rng.randrange(256)]) + rng.randbytes(
        4 * rng.randint(1, MAX_DATA // 4))
    return encode_frame(rng.randrange(256), cmd, body)


def with_crc(payload):
    return slip_encode(payload + struct.pack("<I", crc32(payload)))


def malformed(rng):
    """One chunk of a random kind of malformed input (or a good frame)."""
    kind = rng.choice(["good", "bad crc", "truncated", "garbage", "bad escape", "oversize",
                       "unknown command", "bad length", "short", "escape at end", "empty"])
    seq = rng.randrange(256)
    if kind == "good":
        return good_frame(rng)
    if kind == "bad crc":
        frame = bytearray(good_frame(rng))
        frame[rng.randrange(1, len(frame) - 1)] ^= 1 << rng.randrange(8)
        return bytes(frame)
    if kind == "truncated":
        frame = good_frame(rng)
        return frame[:rng.randrange(1, len(frame) - 1)]
    if kind == "garbage":
        return bytes(rng.choice([END, ESC, rng.randrange(256)]) for _ in range(rng.randint(1, 40)))
    if kind == "bad escape":
        frame = bytearray(good_frame(rng))
        at = rng.randrange(1, len(frame) - 1)
        return bytes(frame[:at]) + bytes([ESC, rng.choice([0x00, 0x41, ESC, 0xFF])]) + bytes(frame[at:])
    if kind == "oversize":
        return with_crc(bytes([seq, Command.MEM_DATA]) + rng.randbytes(MAX_BODY + rng.randint(1, 20)))
    if kind == "unknown command":
        return encode_frame(seq, rng.choice([0x00, 0x05, 0x40, 0x41, 0x7F, 0x81, 0xFF]), rng.randbytes(4))
    if kind == "bad length":
        cmd = rng.choice(list(BODY_LENGTHS))
        length = rng.choice([0, 1, 3, 5, 7, 9, 2 + MAX_DATA, MAX_BODY]) if cmd == Command.MEM_DATA else (
            BODY_LENGTHS[cmd] + rng.choice([-1, 1, 4]) if BODY_LENGTHS[cmd] else 1)
        return encode_frame(seq, cmd, rng.randbytes(length))
    if kind == "short":
        return slip_encode(rng.randbytes(rng.randint(1, 5)))
    if kind == "escape at end":
        return bytes([END, seq, ESC, END])
    return bytes([END, END])


def test_receiver_classifies_random_inputs_as_the_decoder():
    rng = random.Random(5)
    chunks = [malformed(rng) for _ in range(120)] + [good_frame(rng)]
    expected = reference(chunks)
    assert {type(item) for item in expected} == {Frame, FrameError}
    codes = {item.code for item in expected if isinstance(item, FrameError)}
    assert codes >= {ErrorCode.BAD_CRC, ErrorCode.TOO_SHORT, ErrorCode.TOO_LONG, ErrorCode.BAD_ESCAPE,
                     ErrorCode.UNKNOWN_COMMAND, ErrorCode.BAD_LENGTH}
    items, dropped = Receiver().run(chunks)
    assert dropped == 0
    assert items == expected


def test_full_banks_answer_overrun_then_recover():
    rng = random.Random(2)
    frames = [encode_frame(i, Command.REG_READ, rng.randbytes(4)) for i in range(4)]
    # banks never released: the first two frames fill them, the third is refused
    items, _ = Receiver().run(frames[:3], hold=True)
    assert items[:2] == reference(frames[:2])
    assert items[2] == FrameError(ErrorCode.OVERRUN, 2, Command.REG_READ)
    # a broken frame is still answered for what it is, not OVERRUN
    items, _ = Receiver().run(frames[:2] + [frames[2][:-3] + bytes([END])], hold=True)
    assert items[2].code == ErrorCode.BAD_CRC
    # released banks take frames again
    items, _ = Receiver().run(frames)
    assert items == reference(frames)


def test_errors_beyond_the_queue_are_dropped_not_blocking():
    rng = random.Random(3)
    good = [encode_frame(i, Command.LINK_STATUS) for i in range(2)]
    bad = [encode_frame(9, 0x55, b"") for _ in range(3)]
    # nobody takes descriptors: the two good frames keep their places, the errors find no room
    items, dropped = Receiver().run(good + bad, take=False)
    assert dropped == 3
    items, dropped = Receiver().run(good + bad + [good_frame(rng)])
    assert dropped == 0 and len(items) == 6
