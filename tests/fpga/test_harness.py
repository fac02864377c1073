"""The on-chip self-test harness, simulated around the real top-k engine (and broken copies of it)."""

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from spattn.config import ConfigError, preset
from spattn.fpga.harness import TopKHarness, default_ks, harness_model, lane_seeds, xorshift32
from spattn.hw.topk import TopKEngine


class _FaultyEngine(wiring.Component):
    """The real engine with one fault injected into its index stream (for testing the harness)."""

    def __init__(self, cfg, fault):
        self.cfg, self.fault = cfg, fault
        self.inner = TopKEngine(cfg)
        super().__init__(self.inner.signature)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self.inner
        wiring.connect(m, wiring.flipped(self.cmd), inner.cmd)
        wiring.connect(m, wiring.flipped(self.scores), inner.scores)
        m.d.comb += [
            self.busy.eq(inner.busy),
            self.indices.valid.eq(inner.indices.valid),
            inner.indices.ready.eq(self.indices.ready),
            self.indices.payload.eq(inner.indices.payload),
        ]
        out = inner.indices.payload
        if self.fault == "index":      # the lowest bit of lane 0 flipped in every non-empty beat
            with m.If(out.count != 0):
                m.d.comb += self.indices.payload.index[0].eq(out.index[0] ^ 1)
        elif self.fault == "count":    # one index short in every beat of more than one
            with m.If(out.count > 1):
                m.d.comb += self.indices.payload.count.eq(out.count - 1)
        else:
            raise ValueError(self.fault)
        return m


def _run(harness, max_cycles):
    result = {}

    async def bench(ctx):
        for cycle in range(max_cycles):
            if ctx.get(harness.done) or ctx.get(harness.failed):
                break
            await ctx.tick()
        result.update(cycles=cycle, done=ctx.get(harness.done), passed=ctx.get(harness.passed),
                      failed=ctx.get(harness.failed), checksum=ctx.get(harness.checksum))

    sim = Simulator(harness)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return result


def test_tiny_harness_passes_with_real_engine():
    cfg = preset("tiny")
    harness = TopKHarness(cfg)
    result = _run(harness, 20_000)
    assert result["done"] and result["passed"] and not result["failed"], result
    assert result["checksum"] == harness.expected_checksum


@pytest.mark.parametrize("fault", ["index", "count"])
def test_tiny_harness_catches_a_faulty_engine(fault):
    cfg = preset("tiny")
    harness = TopKHarness(cfg, engine=_FaultyEngine(cfg, fault))
    result = _run(harness, 20_000)
    assert result["failed"] and not result["passed"], result


@pytest.mark.slow
def test_default_harness_passes_with_real_engine():
    cfg = preset("default")
    harness = TopKHarness(cfg, ks=[0, cfg.max_tokens, 1, 700])
    result = _run(harness, 100_000)
    assert result["done"] and result["passed"] and not result["failed"], result


def test_model_counts_and_checksum():
    cfg = preset("tiny")
    ks = default_ks(cfg)
    assert ks[:3] == [0, 1, cfg.max_tokens] and all(0 <= k <= cfg.max_tokens for k in ks)
    checksum, total = harness_model(cfg, ks)
    assert total == sum(ks)
    assert harness_model(cfg, [0]) == (0, 0)
    # Keeping everything folds in every index 0..n-1 once, at positions 0..n-1.
    n = cfg.max_tokens
    expected = 0
    for j in range(n):
        word = (j << 1) | 1
        r = j % 32
        expected ^= ((word << r) | (word >> (32 - r))) & 0xFFFFFFFF if r else word
    assert harness_model(cfg, [n]) == (expected, n)
    assert harness_model(cfg, [5])[0] != harness_model(cfg, [6])[0]


def test_lane_generators():
    cfg = preset("default")
    seeds = lane_seeds(cfg)
    assert len(set(seeds)) == cfg.topk_stream_lanes and 0 not in seeds
    assert xorshift32(1) == 270369     # Marsaglia's xorshift32 (13, 17, 5) from state 1


def test_harness_refuses_bad_runs():
    cfg = preset("tiny")
    with pytest.raises(ConfigError, match=r"k must be in 0\.\.n = 0\.\.64, not 65"):
        TopKHarness(cfg, ks=[65])
    with pytest.raises(ValueError, match="at least one run"):
        TopKHarness(cfg, ks=[])
