"""The integer softmax parts on their own, in Amaranth's simulator: the exponent lanes against the
golden softmax's exponent, the serial divider against Python's integer division."""

import random

import pytest
from amaranth.sim import Simulator

from spattn.config import preset
from spattn.formats import AttentionFormats
from spattn.hw.softmax import ExpLanes, SerialDivider, reciprocal_bits


def golden_exp(fmt, x):
    """The exponent of :func:`spattn.sim.golden.intattention.softmax_int` for a distance ``x``."""
    frac = fmt.score.frac
    return (((fmt.exp_lut[x & ((1 << frac) - 1)] << 1) >> min(x >> frac, 62)) + 1) >> 1


@pytest.mark.parametrize("name", ["tiny", "minilm"])
def test_exponent_lanes_match_the_golden_exponent(name):
    fmt = AttentionFormats.of(preset(name))
    lanes = 4
    dut = ExpLanes(fmt, lanes)
    top = (1 << (fmt.score.bits + 1)) - 1
    rng = random.Random(7)
    # Every distance below the point where e reaches 0, the boundary, the largest distance, random.
    edge = (fmt.exp_frac + 2) << fmt.score.frac
    xs = list(range(0, min(edge + 8, top + 1))) + [top, top - 1] + [rng.randrange(top + 1) for _ in range(400)]
    xs += [0] * (-len(xs) % lanes)
    got = []

    async def bench(ctx):
        for start in range(0, len(xs), lanes):
            for lane in range(lanes):
                ctx.set(dut.x[lane], xs[start + lane])
            await ctx.tick()
            if start >= 2 * lanes:   # e is valid three cycles after its x: two ticks later here
                got.extend(ctx.get(dut.e[lane]) for lane in range(lanes))
        for _ in range(2):
            await ctx.tick()
            got.extend(ctx.get(dut.e[lane]) for lane in range(lanes))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == [golden_exp(fmt, x) for x in xs]


def test_exponent_of_the_row_maximum_is_one():
    fmt = AttentionFormats.of(preset("minilm"))
    assert golden_exp(fmt, 0) == 1 << fmt.exp_frac


@pytest.mark.parametrize("name", ["tiny", "minilm"])
def test_serial_divider_matches_integer_division(name):
    fmt = AttentionFormats.of(preset(name))
    dividend_bits, divisor_bits = reciprocal_bits(fmt, preset(name).max_tokens)
    dut = SerialDivider(dividend_bits, divisor_bits)
    rng = random.Random(3)
    top_n, top_d = (1 << dividend_bits) - 1, (1 << divisor_bits) - 1
    cases = [(top_n, 1), (top_n, top_d), (0, 5), (1, 1), (top_d, top_d), (top_d - 1, top_d)]
    cases += [(rng.randrange(top_n + 1), rng.randrange(1, top_d + 1)) for _ in range(60)]
    got = []

    async def bench(ctx):
        for dividend, divisor in cases:
            assert ctx.get(dut.idle)
            ctx.set(dut.dividend, dividend)
            ctx.set(dut.divisor, divisor)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles = 0
            while not ctx.get(dut.idle):
                await ctx.tick()
                cycles += 1
            assert cycles == dividend_bits
            got.append(ctx.get(dut.quotient))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == [n // d for n, d in cases]


def test_reciprocal_widths_hold_every_row_sum():
    cfg = preset("minilm")
    fmt = AttentionFormats.of(cfg)
    dividend_bits, divisor_bits = reciprocal_bits(fmt, cfg.max_tokens)
    largest_sum = cfg.max_tokens << fmt.exp_frac          # every exponent at its maximum
    assert largest_sum < 1 << divisor_bits
    assert (1 << (fmt.exp_frac + fmt.prob.frac)) + (largest_sum >> 1) < 1 << dividend_bits
