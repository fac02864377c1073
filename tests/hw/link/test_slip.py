"""SLIP encoder against spattn.link.slip_encode, decoder symbols against spattn.link's decoding."""

import random

from amaranth.sim import Simulator

from spattn.hw.link.slip_rx import SlipRx
from spattn.hw.link.slip_tx import SlipTx
from spattn.link import END, ESC, ESC_END, ESC_ESC, slip_encode


def payloads(rng):
    return [bytes([END]), bytes([ESC]), bytes([ESC, END, ESC_END, ESC_ESC])] + [
        bytes(rng.choice([END, ESC, rng.randrange(256)]) for _ in range(rng.randint(1, 30))) for _ in range(20)]


def test_encoder_matches_slip_encode_with_stalls():
    rng = random.Random(4)
    frames = payloads(rng)
    dut, out = SlipTx(), bytearray()

    async def bench(ctx):
        queue = [(byte, k == len(frame) - 1) for frame in frames for k, byte in enumerate(frame)]
        offer = False
        while queue or len(out) < sum(len(slip_encode(f)) for f in frames):
            offer = bool(queue) and (offer or rng.random() < 0.7)   # held until taken
            ctx.set(dut.i.valid, offer)
            if queue:
                ctx.set(dut.i.payload, {"data": queue[0][0], "last": queue[0][1]})
            ctx.set(dut.o.ready, rng.random() < 0.6)
            taken_in = offer and ctx.get(dut.i.ready)
            if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                out.append(ctx.get(dut.o.payload))
            await ctx.tick()
            if taken_in:
                queue.pop(0)
                offer = False

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert bytes(out) == b"".join(slip_encode(f) for f in frames)


def test_decoder_gives_frame_bytes_ends_and_bad_escapes():
    rng = random.Random(6)
    frames = payloads(rng)
    line = b"".join(slip_encode(f) for f in frames) + bytes([7, ESC, 0x41, 8, END, ESC, END])
    dut, symbols = SlipRx(), []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for byte in line:
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, byte)
            assert ctx.get(dut.i.ready)
            if ctx.get(dut.o.valid):
                symbol = ctx.get(dut.o.payload)
                symbols.append("end" if symbol.end else symbol.data)
                if symbol.bad_escape:
                    symbols.append("bad")
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    expected = []
    for frame in frames:
        expected += ["end", *frame, "end"]
    expected += [7, 0x41, "bad", 8, "end", "end", "bad"]
    assert symbols == expected
