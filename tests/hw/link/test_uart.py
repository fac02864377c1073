"""UART transmitter and receiver: a round trip of random bytes, and a framing error."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from spattn.hw.link.uart_rx import UartRx
from spattn.hw.link.uart_tx import UartTx


@pytest.mark.parametrize("clocks_per_bit", [4, 7, 20])
def test_round_trip(clocks_per_bit):
    rng = random.Random(clocks_per_bit)
    sent = rng.randbytes(40) + bytes([0x00, 0xFF, 0x55, 0xAA])
    m = Module()
    m.submodules.tx, m.submodules.rx = tx, rx = UartTx(clocks_per_bit), UartRx(clocks_per_bit)
    m.d.comb += rx.rx.eq(tx.tx)
    received, errors, line_low_in_reset = bytearray(), [], []

    async def bench(ctx):
        line_low_in_reset.append(not ctx.get(tx.tx))
        ctx.set(rx.o.ready, 1)
        for byte in sent:
            ctx.set(tx.i.valid, 1)
            ctx.set(tx.i.payload, byte)
            await ctx.tick().until(tx.i.ready)
            ctx.set(tx.i.valid, 0)
            while rng.random() < 0.3:   # gaps between bytes, and bytes back to back
                await ctx.tick()
        for _ in range(12 * clocks_per_bit):
            await ctx.tick()

    async def monitor(ctx):
        async for _, _, valid, byte, error in ctx.tick().sample(rx.o.valid, rx.o.payload, rx.framing_error):
            if valid:
                received.append(byte)
            if error:
                errors.append(1)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_process(monitor)
    sim.run()
    assert line_low_in_reset == [False]
    assert bytes(received) == sent and not errors


def test_bad_stop_bit_is_flagged_and_dropped():
    clocks_per_bit = 8
    dut = UartRx(clocks_per_bit)
    received, errors = [], []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)

        async def send(bits):
            for bit in bits:
                ctx.set(dut.rx, bit)
                for _ in range(clocks_per_bit):
                    await ctx.tick()
                    if ctx.get(dut.o.valid):
                        received.append(ctx.get(dut.o.payload))
                    errors.append(ctx.get(dut.framing_error))

        def frame(byte, stop):
            return [0] + [byte >> k & 1 for k in range(8)] + [stop]

        await send(frame(0xA5, stop=0) + [0] * 3 + [1] * 2)   # bad stop bit, then a break
        bad = sum(errors)
        await send(frame(0x3C, stop=1) + [1] * 2)
        assert bad == 1 and sum(errors) == 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert received == [0x3C]


# the refused object exists (Elaboratable.__new__ ran) but is never elaborated
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_too_few_clocks_per_bit_is_refused():
    with pytest.raises(ValueError, match="clocks_per_bit must be an integer of at least 4, not 3"):
        UartRx(3)
