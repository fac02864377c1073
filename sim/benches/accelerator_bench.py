"""cocotb bench of the accelerator top: whole sentences through every layer, against the golden model.

The host is the real driver (:class:`spattn.fpga.driver.Driver`), the same code a board runs; its
transport here reaches the generated Verilog through models someone else wrote: cocotbext-axi's
``AxiLiteMaster`` on the register port and ``AxiRam`` on the memory port, with random pauses on
every channel of both (valid gaps on the manager's side, ready gaps on the subordinate's). The
driver writes each layer's planes into the RAM as a host writes shared memory, and reads outputs
and alive lists back from it.

Every sentence runs twice: on the RTL and on :class:`spattn.sim.golden.accelerator.GoldenAccelerator`
(the golden model behind the same driver). The embeddings must be equal (``torch.equal``), per
layer the alive tokens and heads and every counter register but CYCLES, and at the end the whole
memory image (outputs, alive lists, padding: nothing written that should not be).

Presets shaped like all-MiniLM-L6-v2 run real sentences through the real model; others run random
token ids through a random encoder of the preset's shape (:func:`~spattn.sim.golden.minilm.random_encoder`).

Environment: ``SPATTN_MANIFEST`` (set by :func:`spattn.sim.runner.run_bench`); ``SPATTN_ACCEL_TOKENS``
(comma-separated sentence lengths, default ``5,12``); ``SPATTN_ACCEL_SETTINGS`` (comma-separated
names of :data:`~spattn.sim.golden.accelerator.SETTING_FAMILIES`, default all);
``SPATTN_ACCEL_LONGEST_SETTINGS`` (the same, for the longest sentence only: default the same as the
others); ``SPATTN_ACCEL_STALL`` (pause probability of every AXI channel, default 0.3); ``SPATTN_BENCH_OUT`` (a file that gets one JSON line per layer, for
``spattn bench accelerator``).
"""

import dataclasses
import itertools
import json
import logging
import os
import random
import warnings

import cocotb
import torch

# cocotbext-axi 0.1.28 still uses cocotb 1.x calls that cocotb 2 deprecates (one warning per transfer)
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"cocotbext\.axi")
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam, AxiResp

from spattn.fpga.driver import COUNTERS, AcceleratorError, Driver
from spattn.hw.registers import accelerator_registers
from spattn.memmap import MemoryMap
from spattn.sim.golden.accelerator import SETTING_FAMILIES, GoldenAccelerator
from spattn.sim.golden.corpus import eval_sentences
from spattn.sim.golden.masks import calibrate_masks
from spattn.sim.golden.minilm import load_minilm, random_encoder
from spattn.sim.runner import load_manifest

SEED = int(os.environ.get("SPATTN_SEED", "20261130"))
#: Where the bench puts the memory map: not at 0, so that MEM_BASE takes part in every address.
MEM_BASE = 0x10000
CLOCK_NS = 10


def _pauses(rng, probability):
    """An endless pause pattern for a cocotbext-axi channel: paused with ``probability`` per cycle."""
    while True:
        yield rng.random() < probability


class SimTransport:
    """The driver's transport onto the simulated accelerator: registers through ``AxiLiteMaster``,
    memory as the host's view of the ``AxiRam`` behind the memory port."""

    def __init__(self, dut, cfg, rng, stall):
        self.dut = dut
        self.status = accelerator_registers(cfg)["STATUS"].offset
        self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi_"), dut.clk, dut.rst, size=MEM_BASE + MemoryMap(cfg).size)
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil_"), dut.clk, dut.rst)
        for prefix in ("m_axi_", "s_axil_"):     # one line per transfer otherwise
            logging.getLogger(f"cocotb.{dut._name}.{prefix}").setLevel(logging.WARNING)
        for channel in (self.ram.write_if.aw_channel, self.ram.write_if.w_channel, self.ram.write_if.b_channel,
                        self.ram.read_if.ar_channel, self.ram.read_if.r_channel,
                        self.axil.write_if.aw_channel, self.axil.write_if.w_channel,
                        self.axil.write_if.b_channel, self.axil.read_if.ar_channel, self.axil.read_if.r_channel):
            channel.set_pause_generator(_pauses(rng, stall))

    async def read_reg(self, offset):
        if offset == self.status and self.dut.irq.value == 0:
            # interrupt-assisted polling: wait for irq (or a while) before asking again
            await First(RisingEdge(self.dut.irq), ClockCycles(self.dut.clk, 2000))
        resp = await self.axil.read(offset, 4)
        assert resp.resp == AxiResp.OKAY, f"register read at 0x{offset:02x}: {resp.resp!r}"
        return int.from_bytes(resp.data, "little")

    async def write_reg(self, offset, value):
        resp = await self.axil.write(offset, int(value).to_bytes(4, "little"))
        assert resp.resp == AxiResp.OKAY, f"register write 0x{value:x} at 0x{offset:02x}: {resp.resp!r}"

    async def read_mem(self, address, length):
        return self.ram.read(address, length)

    async def write_mem(self, address, data):
        self.ram.write(address, data)


def minilm_shaped(cfg):
    """Whether ``cfg`` has all-MiniLM-L6-v2's shape (12 heads of 32, 6 layers): its sentences then run
    on the real model; on other presets, on a seeded random encoder of the preset's shape."""
    return (cfg.heads, cfg.head_dim, cfg.layers) == (12, 32, 6)


class Bench:
    def __init__(self, dut):
        self.dut = dut
        _, self.cfg = load_manifest()
        self.rng = random.Random(SEED)
        self.stall = float(os.environ.get("SPATTN_ACCEL_STALL", "0.3"))
        self.transport = SimTransport(dut, self.cfg, self.rng, self.stall)
        self.minilm_shaped = minilm_shaped(self.cfg)
        self.model = load_minilm() if self.minilm_shaped else random_encoder(self.cfg, seed=SEED)
        self.lengths = [int(n) for n in os.environ.get("SPATTN_ACCEL_TOKENS", "5,12").split(",")]
        names = os.environ.get("SPATTN_ACCEL_SETTINGS", "")
        self.settings = [name for name in names.split(",") if name] or list(SETTING_FAMILIES)
        longest = os.environ.get("SPATTN_ACCEL_LONGEST_SETTINGS", "")
        self.longest_settings = [name for name in longest.split(",") if name] or self.settings
        unknown = set(self.settings + self.longest_settings) - set(SETTING_FAMILIES)
        assert not unknown, f"unknown settings {sorted(unknown)}; known: {list(SETTING_FAMILIES)}"
        self.out = os.environ.get("SPATTN_BENCH_OUT")
        Clock(dut.clk, CLOCK_NS, unit="ns").start()

    async def reset(self, cycles=5):
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, cycles)
        self.dut.rst.value = 0
        await ClockCycles(self.dut.clk, 2)

    def sentence(self, n, index):
        """Token ids of about ``n`` tokens: a real sentence cut to ``n`` (keeping [SEP]), or random ids."""
        if not self.minilm_shaped:
            gen = torch.Generator().manual_seed(SEED + 7 * n + index)
            return torch.randint(0, 64, (n,), generator=gen)
        texts = eval_sentences()
        ids = self.model.encode(" ".join(texts[index:]))
        return torch.cat([ids[:n - 1], ids[-1:]]) if len(ids) > n else ids

    def masks(self, cfg, ids):
        if cfg.static_mask_density >= 1:
            return None
        if self.minilm_shaped:
            return calibrate_masks(self.model, cfg, [" ".join(eval_sentences()[:3])])
        # random masks over the sentence's positions (the driver writes rows of max_tokens bits,
        # the columns past the sentence 0), each query keeping itself
        n = len(ids)
        gen = torch.Generator().manual_seed(SEED + n)
        shape = (cfg.layers, cfg.heads, n, n)
        return (torch.rand(shape, generator=gen) < cfg.static_mask_density) | torch.eye(n, dtype=torch.bool)

    async def run(self, setting, ids, label):
        """One sentence on the RTL and on the golden model; everything compared; returns the RTL run."""
        cfg = dataclasses.replace(self.cfg, **SETTING_FAMILIES[setting])
        return await run_against_golden(self.transport, cfg, self.model, ids, self.masks(cfg, ids),
                                        f"{label}, {setting}", log=self.dut._log, out=self.out,
                                        record={"sentence": label, "setting": setting})


async def run_against_golden(transport, cfg, model, ids, masks, label, log, out=None, record=None,
                             mem_base=MEM_BASE):
    """Embed ``ids`` with the driver over ``transport`` (the RTL) and over the golden model; assert
    that the embeddings, the memory images, and per layer the alive tokens and heads and every counter
    but CYCLES are equal (``label`` names the run in a failure). ``out``: a file that gets one JSON
    line per layer, ``record``'s fields first. Returns the RTL run."""
    size = MemoryMap(cfg).size
    await transport.write_mem(mem_base, bytes(size))       # a clean memory, as the golden model's
    got = await Driver(transport, cfg, mem_base).run_sentence(model, ids, masks=masks)
    golden = GoldenAccelerator(cfg, memory_bytes=mem_base + size)
    want = await Driver(golden, cfg, mem_base).run_sentence(model, ids, masks=masks)
    # the whole memory image: no stray write, no row too many, lists padded alike
    image = await transport.read_mem(mem_base, size)
    if image != bytes(golden.memory[mem_base:]):
        first = next(i for i, (a, b) in enumerate(zip(image, golden.memory[mem_base:])) if a != b)
        region = next((name for name, (offset, length) in MemoryMap(cfg).regions.items()
                       if offset <= first < offset + length), "between regions")
        raise AssertionError(f"{label}: memory differs from the golden model's first at offset 0x{first:x} "
                             f"(region {region})")
    for layer, (g, w) in enumerate(zip(got.layers, want.layers)):
        where = f"{label}, layer {layer}"
        assert (g.tokens, g.heads) == (w.tokens, w.heads), f"{where}: alive tokens/heads differ"
        if os.environ.get("SPATTN_ACCEL_DEBUG"):
            log.info("%s: RTL %s golden %s", where, g.counters, w.counters)
            continue
        for name in COUNTERS:
            if name != "CYCLES":
                assert g.counters[name] == w.counters[name], (
                    f"{where}: {name} is {g.counters[name]}, the golden model says {w.counters[name]}")
        assert g.counters["CYCLES"] > 0, f"{where}: no cycles counted"
        if out:
            with open(out, "a") as f:
                f.write(json.dumps({**(record or {}), "tokens": len(ids), "layer": layer,
                                    "alive_tokens": len(g.tokens),
                                    "alive_heads": len(g.heads), **g.counters}) + "\n")
    assert torch.equal(got.embedding, want.embedding), f"{label}: the embeddings differ"
    return got


@cocotb.test()
async def sentences(dut):
    """Whole sentences through every layer under each setting family; embeddings bit-exact."""
    bench = Bench(dut)
    await bench.reset()
    for (index, n), setting in itertools.product(enumerate(bench.lengths), bench.settings):
        if n == max(bench.lengths) and len(bench.lengths) > 1 and setting not in bench.longest_settings:
            continue
        ids = bench.sentence(n, index)
        await bench.run(setting, ids, f"sentence of {len(ids)} tokens")
        dut._log.info("%d tokens, %s: bit-exact", len(ids), setting)


@cocotb.test()
async def bad_settings(dut):
    """Each refused setting sets its STATUS bit and runs nothing; the next correct layer runs. A
    START while a layer runs sets ERR_BUSY and the layer still finishes. Bad register accesses get
    SLVERR. A whole sentence after all this is still bit-exact."""
    bench = Bench(dut)
    await bench.reset()
    cfg = bench.cfg
    driver = Driver(bench.transport, cfg)
    full = 1 << 16
    cases = [("TOKENS", 0, "ERR_TOKENS"), ("TOKENS", cfg.max_tokens + 1, "ERR_TOKENS"),
             ("TOKEN_KEEP", 0, "ERR_KEEP"), ("HEAD_KEEP", full + 1, "ERR_KEEP"),
             ("VALUE_KEEP", 0, "ERR_SETTING"), ("VALUE_KEEP", full + 1, "ERR_SETTING"),
             ("THRESHOLD", (1 << (cfg.score_bits - 1)) + 1, "ERR_SETTING"), ("LAYER", cfg.layers, "ERR_SETTING"),
             ("MEM_BASE", 0x800, "ERR_SETTING")]
    start_first = driver.bit("CTRL", "START") | driver.bit("CTRL", "FIRST")

    async def good_settings():
        for name, good in (("TOKENS", 3), ("LAYER", 0), ("TOKEN_KEEP", full), ("HEAD_KEEP", full),
                           ("VALUE_KEEP", full), ("THRESHOLD", 0), ("FLAGS", 0), ("MEM_BASE", MEM_BASE)):
            await driver.write(name, good)

    for register, value, error in cases:
        if value >= 1 << accelerator_registers(cfg)[register].width:
            continue             # the register file itself refuses it (bad register writes)
        await good_settings()
        await driver.write(register, value)
        await driver.write("CTRL", start_first)
        await ClockCycles(dut.clk, 20)
        status = await driver.read("STATUS")
        assert status & driver.bit("STATUS", error), f"{register} = {value}: no {error} (STATUS 0x{status:x})"
        assert not status & (driver.bit("STATUS", "BUSY") | driver.bit("STATUS", "DONE")), (
            f"{register} = {value}: the layer ran (STATUS 0x{status:x})")
        try:
            await driver.wait_done()
        except AcceleratorError as e:
            assert error in str(e)
        else:
            raise AssertionError(f"{register} = {value}: wait_done did not raise")
    # CLEAR in the same write as a refused START: only the new error remains
    await good_settings()
    await driver.write("TOKEN_KEEP", 0)
    await driver.write("CTRL", start_first)
    await good_settings()
    await driver.write("VALUE_KEEP", 0)
    await driver.write("CTRL", start_first | driver.bit("CTRL", "CLEAR"))
    status = await driver.read("STATUS")
    assert status & driver.bit("STATUS", "ERR_SETTING") and not status & driver.bit("STATUS", "ERR_KEEP"), (
        f"CLEAR with a refused START: STATUS 0x{status:x}")
    await driver.write("CTRL", driver.bit("CTRL", "CLEAR"))
    # a layer without FIRST whose TOKENS differs from the survivors
    await good_settings()
    await driver.write("CTRL", driver.bit("CTRL", "START") | driver.bit("CTRL", "FIRST"))
    await driver.wait_done()
    await driver.write("TOKENS", 2)
    await driver.write("CTRL", driver.bit("CTRL", "START"))
    status = await driver.read("STATUS")
    assert status & driver.bit("STATUS", "ERR_TOKENS"), f"TOKENS 2 after 3 survivors: STATUS 0x{status:x}"
    await driver.write("CTRL", driver.bit("CTRL", "CLEAR"))
    # START while busy
    await driver.write("TOKENS", min(cfg.max_tokens, 16))
    await driver.write("CTRL", start_first)
    await driver.write("CTRL", start_first)
    status = await driver.read("STATUS")
    assert status & driver.bit("STATUS", "ERR_BUSY"), f"START while busy: STATUS 0x{status:x}"
    while not (await driver.read("STATUS")) & driver.bit("STATUS", "DONE"):
        pass
    await driver.write("CTRL", driver.bit("CTRL", "CLEAR"))
    # bad register accesses
    regmap = accelerator_registers(cfg)
    for offset, what in ((regmap["ID"].offset, "read-only ID"), (regmap.size, "unmapped"),
                         (regmap["TOKENS"].offset + 2, "unaligned")):
        resp = await bench.transport.axil.write(offset, (1).to_bytes(4, "little"))
        assert resp.resp == AxiResp.SLVERR, f"write to the {what} register: {resp.resp!r}"
    resp = await bench.transport.axil.read(regmap.size, 4)
    assert resp.resp == AxiResp.SLVERR, f"read of an unmapped register: {resp.resp!r}"
    await bench.run("dense", bench.sentence(bench.lengths[0], 0), "after the errors")


@cocotb.test()
async def reset_mid_layer(dut):
    """A reset in the middle of a layer (memory traffic in flight), then a correct sentence."""
    bench = Bench(dut)
    await bench.reset()
    ids = bench.sentence(max(bench.lengths), 1)
    run = cocotb.start_soon(Driver(bench.transport, bench.cfg).run_sentence(bench.model, ids))
    await RisingEdge(dut.m_axi__rvalid)
    await ClockCycles(dut.clk, bench.rng.randint(50, 400))
    run.cancel()
    await bench.reset(cycles=8)
    await bench.run("combined", ids, "after a reset")
