"""The lane networks of :mod:`spattn.hw.lanes` against plain Python, in Amaranth's simulator."""

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from spattn.hw.lanes import less_than, popcount


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 7, 8, 15, 16, 31])
def test_popcount_counts_every_pattern(width):
    """Every input pattern up to 8 bits, 2,000 random ones (and all-ones) beyond."""
    m = Module()
    flags = Signal(width)
    count = popcount(m, [flags[i] for i in range(width)], "count")
    assert len(count) == width.bit_length()
    patterns = (range(1 << width) if width <= 8
                else [(1 << width) - 1, 0] + [random.Random(width).getrandbits(width) for _ in range(2000)])
    sim = Simulator(m)

    async def check(ctx):
        for pattern in patterns:
            ctx.set(flags, pattern)
            assert ctx.get(count) == bin(pattern).count("1"), f"{pattern:0{width}b}"
    sim.add_testbench(check)
    sim.run()


@pytest.mark.parametrize("a_width, b_width", [(1, 1), (4, 4), (3, 5), (16, 16)])
def test_less_than_is_the_unsigned_comparison(a_width, b_width):
    m = Module()
    a, b = Signal(a_width), Signal(b_width)
    less = Signal()
    m.d.comb += less.eq(less_than(a, b))
    rng = random.Random(a_width * 100 + b_width)
    pairs = ([(x, y) for x in range(1 << a_width) for y in range(1 << b_width)] if a_width + b_width <= 10
             else [(rng.getrandbits(a_width), rng.getrandbits(b_width)) for _ in range(2000)]
             + [(0, 0), (1, 0), (0, 1), ((1 << a_width) - 1, (1 << b_width) - 1)])
    sim = Simulator(m)

    async def check(ctx):
        for x, y in pairs:
            ctx.set(a, x)
            ctx.set(b, y)
            assert ctx.get(less) == (x < y), (x, y)
    sim.add_testbench(check)
    sim.run()
