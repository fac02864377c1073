"""The pruning controller on its own, in Amaranth's simulator, against the integer golden model
(:func:`spattn.sim.golden.pruning.select_survivors`), layer after layer.

Each layer sends the controller what the attention core and the top would: per alive head, blocks
of key-major probability beats (random ``final`` lanes, random gaps) and one magnitude per output
row; then a prune with the layer's keep ratios. The alive lists are read back through the
controller's read ports and compared with the golden selection on the golden accumulators.
Importances are drawn from a few values so that ties at the cut are common; one test replays the
real probabilities and magnitudes of a MiniLM sentence (the golden accelerator's heads).
"""

import asyncio
import dataclasses
import random

import pytest
import torch
from amaranth.sim import Simulator

from spattn.config import preset
from spattn.formats import VALUE_KEEP_FRAC, AttentionFormats, value_keep_int
from spattn.hw.pruning import PruningController
from spattn.sim.golden.pruning import select_survivors

FULL = 1 << VALUE_KEEP_FRAC


def golden_layers(cfg, n, layers, seed):
    """Stimulus and expected lists: ``[(beats, magnitudes, token_keep, head_keep, tokens, heads)]``."""
    rng = random.Random(seed)
    fmt = AttentionFormats.of(cfg)
    R = cfg.pe_rows
    alive, heads = list(range(n)), list(range(cfg.heads))
    token_imp, head_imp = [0] * n, [0] * cfg.heads
    out = []
    for layer in layers:
        token_keep, head_keep, tie_values = layer
        values = [rng.choice(tie_values) if tie_values else rng.randint(0, fmt.prob.max)
                  for _ in range(64)]
        beats, magnitudes = [], []
        for head in heads:
            for _block in range(rng.randint(1, 3)):
                final = [rng.random() < 0.8 for _ in range(R)]
                for key in range(len(alive)):
                    data = [rng.choice(values) if final[r] else rng.randint(0, fmt.prob.max)
                            for r in range(R)]
                    beats.append({"key": key, "final": sum(f << r for r, f in enumerate(final)),
                                  "data": data, "rows": [0] * R, "last": 0})
                    token_imp[alive[key]] += sum(d for d, f in zip(data, final) if f)
            for _row in range(len(alive)):
                magnitude = rng.choice([0, 5, 5, 9, rng.randint(0, cfg.head_dim << (cfg.act_bits - 1))])
                magnitudes.append({"head": head, "magnitude": magnitude})
                head_imp[head] += magnitude
        keep_t = select_survivors(torch.tensor([token_imp[p] for p in alive]), token_keep, forced=0)
        keep_h = select_survivors(torch.tensor([head_imp[h] for h in heads]), head_keep)
        alive = [alive[i] for i in keep_t.tolist()]
        heads = [heads[i] for i in keep_h.tolist()]
        out.append((beats, magnitudes, token_keep, head_keep, list(alive), list(heads)))
    return out


def run_controller(cfg, n, layers, seed, gap=0.3):
    expected = golden_layers(cfg, n, layers, seed)
    results = replay(cfg, n, [layer[:4] for layer in expected], gap=gap, seed=seed)
    for layer, ((tokens, heads), want) in enumerate(zip(results, expected)):
        assert tokens == want[4], f"layer {layer}: alive tokens"
        assert heads == want[5], f"layer {layer}: alive heads"
    return results


def replay(cfg, n, layers, gap=0.0, seed=0):
    """Feed ``layers`` (``[(probs beats, magnitudes, token_keep, head_keep)]``) to a controller
    after a ``begin`` of ``n`` tokens; the alive lists after each layer's prune."""
    dut = PruningController(cfg)
    rng = random.Random(seed + 1)
    results = []

    async def bench(ctx):
        ctx.set(dut.tokens, n)
        ctx.set(dut.begin, 1)
        await ctx.tick()
        ctx.set(dut.begin, 0)
        await ctx.tick().until(~dut.busy)
        for beats, magnitudes, token_keep, head_keep in layers:
            stream = [("probs", b) for b in beats] + [("magnitude", mg) for mg in magnitudes]
            rng.shuffle(stream)                  # the two streams interleave freely
            for port, payload in stream:
                while rng.random() < gap:
                    await ctx.tick()
                ctx.set(getattr(dut, port).payload, payload)
                ctx.set(getattr(dut, port).valid, 1)
                await ctx.tick()
                ctx.set(getattr(dut, port).valid, 0)
            ctx.set(dut.prune.payload, {"token_keep": token_keep, "head_keep": head_keep})
            ctx.set(dut.prune.valid, 1)
            await ctx.tick().until(dut.prune.ready)
            ctx.set(dut.prune.valid, 0)
            await ctx.tick().until(~dut.busy)
            tokens = []
            for i in range(ctx.get(dut.tokens_alive)):
                ctx.set(dut.alive_read.addr, i)
                await ctx.tick()
                tokens.append(ctx.get(dut.alive_read.data))
            heads = []
            for i in range(ctx.get(dut.heads_alive)):
                ctx.set(dut.head_read_addr, i)
                heads.append(ctx.get(dut.head_read_data))
            results.append((tokens, heads))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


TINY = preset("tiny")


@pytest.mark.parametrize("seed", range(3))
def test_random_layers(seed):
    """Random importances, ratios from 1.0 down to 0.3, six layers, ties at the cut."""
    rng = random.Random(seed)
    layers = [(rng.choice([FULL, int(0.9 * FULL), int(0.6 * FULL), int(0.3 * FULL), rng.randint(1, FULL)]),
               rng.choice([FULL, FULL // 2, rng.randint(1, FULL)]),
               rng.choice([None, [0, 1, 2], [7]])) for _ in range(6)]
    run_controller(TINY, rng.randint(1, TINY.max_tokens), layers, seed)


def test_keep_all():
    """Keep 1.0: nothing pruned, lists unchanged."""
    results = run_controller(TINY, 37, [(FULL, FULL, None)] * 3, seed=5)
    assert results[-1] == (list(range(37)), list(range(TINY.heads)))


def test_only_cls_and_one_head():
    """The smallest ratio keeps [CLS] alone, even when other tokens are far more important."""
    results = run_controller(TINY, TINY.max_tokens, [(1, 1, None), (FULL, FULL, None)], seed=6)
    assert results[0][0] == [0] and len(results[0][1]) == 1


def test_all_equal_and_length_one():
    """All importances equal (ties everywhere: the lowest positions win); a one-token sentence."""
    run_controller(TINY, 20, [(FULL // 2, FULL // 2, [3])] * 2, seed=7, gap=0)
    run_controller(TINY, 1, [(FULL // 2, FULL // 2, None)] * 2, seed=8)


def test_max_tokens_not_a_power_of_two():
    """48 tokens: the second bank of the alive list starts at 48, not at 64."""
    cfg = dataclasses.replace(TINY, max_tokens=48)
    run_controller(cfg, 48, [(int(0.95 * FULL), FULL, None), (int(0.7 * FULL), FULL, None)] * 2, seed=10)


def test_minilm_shape():
    """The minilm preset: 12 heads pruned step by step, 256-token importances."""
    cfg = preset("minilm")
    layers = [(int(r * FULL), int(h * FULL), None) for r, h in
              ((0.9, 0.9), (0.8, 0.75), (0.7, 0.5), (0.5, 0.5), (0.5, 0.1), (1.0, 1.0))]
    run_controller(cfg, 40, layers, seed=9, gap=0)


def test_real_minilm_importances():
    """The probabilities and output magnitudes of a real MiniLM sentence (the golden accelerator's
    heads, token keep 0.7 and head keep 0.8 per layer), fed as the core sends them: per head, per
    block of R query rows, one beat per key. The lists must be the golden model's."""
    from spattn.fpga.driver import Driver
    from spattn.sim.golden.accelerator import GoldenAccelerator
    from spattn.sim.golden.minilm import load_minilm

    cfg = dataclasses.replace(preset("minilm"), token_keep=(0.7,), head_keep=(0.8,))
    model = load_minilm()
    ids = model.encode("A man is playing a guitar on the stage while the crowd sings along.")
    golden = GoldenAccelerator(cfg)
    run = asyncio.run(Driver(golden, cfg).run_sentence(model, ids))
    R, keep_t, keep_h = cfg.pe_rows, value_keep_int(0.7), value_keep_int(0.8)
    layers = []
    for heads in golden.trace:
        beats, magnitudes = [], []
        for head, result in heads:
            n = result.probs.shape[0]
            for first in range(0, n, R):
                rows = list(range(first, min(n, first + R)))
                for key in range(n):
                    data = [int(result.probs[i, key]) for i in rows] + [0] * (R - len(rows))
                    beats.append({"key": key, "final": (1 << len(rows)) - 1, "data": data,
                                  "rows": [0] * R, "last": 0})
            magnitudes += [{"head": head, "magnitude": int(m)} for m in result.magnitude]
        layers.append((beats, magnitudes, keep_t, keep_h))
    want = [(list(b.tokens), list(b.heads)) for b in run.layers[1:]]
    got = replay(cfg, len(ids), layers)
    assert got[:len(want)] == want
