"""Host driver: the transformer flow around the accelerator, over any transport.

The accelerator (:class:`spattn.hw.accelerator.Accelerator`) runs the attention of each layer; this
driver runs the rest, for the alive tokens and heads only (:func:`run_sentence`): tokenised
sentence -> embeddings; per layer: Q, K, V projections of the alive tokens, quantized to the act
format and split into MSB and LSB planes (:class:`~spattn.sim.golden.arith.IntArith`), written to
memory by :class:`~spattn.memmap.MemoryMap` (with the static masks, on the first layer), the layer's
settings and CTRL.START written, STATUS polled until DONE, the head outputs read back, the output
projection and feed-forward block run, the new alive lists read back; finally the survivors are
mean-pooled. The settings come from the :class:`~spattn.config.AccelConfig`'s algorithm fields, as
:func:`spattn.sim.golden.sparse.run_sentence` reads them, so the two give the same embedding.

A transport has four coroutines: ``read_reg(offset)``, ``write_reg(offset, value)``,
``read_mem(address, length)`` and ``write_mem(address, data)``. The golden model
(:class:`spattn.sim.golden.accelerator.GoldenAccelerator`) is one; the cocotb bench drives the
generated Verilog through AXI models with another; a board is reached over a serial link.
"""

from dataclasses import dataclass, field
from typing import Protocol

import torch

from spattn.config import ConfigError
from spattn.formats import (AttentionFormats, dynatran_threshold_int, recompute_threshold_int,
                            split_planes, value_keep_int)
from spattn.hw.registers import ID_VALUE, accelerator_registers
from spattn.memmap import BUS_BYTES, LIST_ENTRY_BYTES, MemoryMap, pack_values, unpack_values
from spattn.sim.golden.arith import IntArith
from spattn.sim.golden.bert import embed_tokens, finish_layer, mean_pool, project_qkv
from spattn.sim.golden.pruning import schedule_at
from spattn.sim.golden.sparse import check_model_fits

__all__ = ["Transport", "AcceleratorError", "LayerReport", "RunResult", "Driver", "COUNTERS"]

#: The per-layer counter registers a run reports.
COUNTERS = ("CYCLES", "BYTES_READ", "BYTES_WRITTEN", "ROWS_RECOMPUTED", "PE_BUSY_CYCLES", "LAYER_TOKENS",
            "LAYER_HEADS")
ERRORS = ("ERR_BUSY", "ERR_TOKENS", "ERR_KEEP", "ERR_SETTING", "ERR_MEMORY")


class Transport(Protocol):
    async def read_reg(self, offset: int) -> int: ...
    async def write_reg(self, offset: int, value: int) -> None: ...
    async def read_mem(self, address: int, length: int) -> bytes: ...
    async def write_mem(self, address: int, data: bytes) -> None: ...


class AcceleratorError(RuntimeError):
    """The accelerator refused a layer (STATUS error bits) or is not the one the config describes."""


@dataclass(frozen=True)
class LayerReport:
    """What one layer did: the tokens (sentence positions) and heads it ran, and its counters."""
    tokens: tuple
    heads: tuple
    counters: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    embedding: torch.Tensor
    layers: tuple


class Driver:
    """One accelerator behind ``transport``, generated for ``cfg``; its memory map at ``mem_base``."""

    def __init__(self, transport: Transport, cfg, mem_base: int = 0, max_polls: int = 1 << 24):
        self.transport, self.cfg, self.mem_base = transport, cfg, mem_base
        self.regmap = accelerator_registers(cfg)
        self.memmap = MemoryMap(cfg)
        self.fmt = AttentionFormats.of(cfg)
        self.max_polls = max_polls

    # ---- registers -----------------------------------------------------------------------------
    async def read(self, name):
        return await self.transport.read_reg(self.regmap[name].offset)

    async def write(self, name, value):
        await self.transport.write_reg(self.regmap[name].offset, value)

    def bit(self, register, flag):
        return 1 << self.regmap[register].field(flag).lsb

    async def identify(self):
        """Check that the accelerator is the one ``cfg`` describes (ID and SHAPE registers)."""
        ident, shape = await self.read("ID"), await self.read("SHAPE")
        want = self.regmap["SHAPE"].const
        if ident != ID_VALUE or shape != want:
            raise AcceleratorError(f"the accelerator reports ID 0x{ident:08x} SHAPE 0x{shape:08x}; "
                                   f"preset {self.cfg.name} expects 0x{ID_VALUE:08x} 0x{want:08x}")

    async def run_layer(self, layer, tokens, first):
        """Set the layer's settings from the config, start it, wait for DONE, return its counters."""
        cfg = self.cfg
        progressive = cfg.recompute_threshold is not None
        flags = ((self.bit("FLAGS", "MASKED") if cfg.static_mask_density < 1 else 0)
                 | (self.bit("FLAGS", "PROGRESSIVE") if progressive else 0))
        settings = {
            "TOKENS": tokens, "LAYER": layer, "FLAGS": flags, "MEM_BASE": self.mem_base,
            "TOKEN_KEEP": value_keep_int(schedule_at(cfg.token_keep, layer)),
            "HEAD_KEEP": value_keep_int(schedule_at(cfg.head_keep, layer)),
            "VALUE_KEEP": value_keep_int(cfg.value_keep),
            "THRESHOLD": recompute_threshold_int(cfg.recompute_threshold, self.fmt.prob) if progressive else 0,
            "DYNATRAN": dynatran_threshold_int(cfg.dynatran_threshold, self.fmt.act),
        }
        for name, value in settings.items():
            await self.write(name, value)
        await self.write("CTRL", self.bit("CTRL", "START") | (self.bit("CTRL", "FIRST") if first else 0))
        await self.wait_done()
        return {name: await self.read(name) for name in COUNTERS}

    async def wait_done(self):
        """Poll STATUS until DONE; an error bit raises :class:`AcceleratorError` naming it, once
        the accelerator is idle (a memory error does not stop the layer)."""
        for _ in range(self.max_polls):
            status = await self.read("STATUS")
            errors = [name for name in ERRORS if status & self.bit("STATUS", name)]
            if errors and not status & self.bit("STATUS", "BUSY"):
                await self.write("CTRL", self.bit("CTRL", "CLEAR"))
                raise AcceleratorError(f"the accelerator reports {', '.join(errors)} (STATUS 0x{status:04x})")
            if status & self.bit("STATUS", "DONE"):
                return
        raise AcceleratorError(f"no DONE after {self.max_polls} polls of STATUS")

    # ---- memory ----------------------------------------------------------------------------------
    async def write_planes(self, heads, q, k, v):
        """The plane rows of every alive head (``q``, ``k``, ``v``: ``(heads, n, d)`` stored ints)."""
        mm = self.memmap
        for tensor, values in zip(mm.TENSORS, (q, k, v)):
            planes = dict(zip(mm.PLANES, split_planes(values, self.cfg.act_lsb_bits)))
            for plane, rows in planes.items():
                row = mm.plane_row[plane]
                for slot, head in enumerate(heads):
                    data = b"".join(pack_values(r.tolist(), mm.plane_bits[plane], row.stride)
                                    for r in rows[slot])
                    await self.transport.write_mem(self.mem_base + mm.plane_address(tensor, plane, head, 0), data)

    async def write_masks(self, masks, n):
        """Static masks of every layer and head for sentence positions ``0 .. n-1``."""
        mm = self.memmap
        for layer in range(self.cfg.layers):
            for head in range(self.cfg.heads):
                data = b"".join(pack_values(masks[layer, head, p, :self.cfg.max_tokens].int().tolist(), 1,
                                            mm.mask_row.stride) for p in range(n))
                await self.transport.write_mem(self.mem_base + mm.mask_address(layer, head, 0), data)

    async def read_outputs(self, heads, n):
        """``(heads, n, d)`` int64 outputs of the alive heads."""
        mm, row = self.memmap, self.memmap.out_row
        out = []
        for head in heads:
            raw = await self.transport.read_mem(self.mem_base + mm.out_address(head, 0), n * row.stride)
            out.append([unpack_values(raw[i * row.stride:i * row.stride + row.nbytes], 16, self.cfg.head_dim, True)
                        for i in range(n)])
        return torch.tensor(out, dtype=torch.int64)

    async def read_list(self, name, count):
        nbytes = -(-count * LIST_ENTRY_BYTES // BUS_BYTES) * BUS_BYTES
        raw = await self.transport.read_mem(self.mem_base + self.memmap.list_address(name), nbytes)
        return unpack_values(raw, 8 * LIST_ENTRY_BYTES, count, False)

    # ---- a sentence --------------------------------------------------------------------------------
    async def run_sentence(self, model, ids, masks=None, on_layer=None) -> RunResult:
        """Embed one tokenised sentence; ``on_layer(layer, report)`` is called after each layer."""
        cfg = self.cfg
        check_model_fits(model, cfg)
        if not 1 <= len(ids) <= cfg.max_tokens:
            raise ConfigError(f"sentence length must be in 1..max_tokens = 1..{cfg.max_tokens}, not {len(ids)}")
        if cfg.static_mask_density < 1 and masks is None:
            raise ValueError("static_mask_density < 1 needs the calibrated masks")
        await self.identify()
        arith = IntArith(cfg)
        state = embed_tokens(model, ids)
        alive, heads = list(range(len(ids))), list(range(cfg.heads))
        if cfg.static_mask_density < 1:
            await self.write_masks(masks, len(ids))
        reports = []
        for layer in range(cfg.layers):
            x = state[alive]
            q, k, v = (arith.fmt.act.quantize(t[heads]) for t in project_qkv(model, layer, x))
            await self.write_planes(heads, q, k, v)
            counters = await self.run_layer(layer, len(alive), first=layer == 0)
            out = await self.read_outputs(heads, len(alive))
            context = torch.zeros(cfg.heads, len(alive), cfg.head_dim)
            context[heads] = arith.out_real(out)
            state[alive] = finish_layer(model, layer, x, context)
            report = LayerReport(tokens=tuple(alive), heads=tuple(heads), counters=counters)
            reports.append(report)
            if on_layer is not None:
                on_layer(layer, report)
            pooled = alive
            alive = await self.read_list("alive_tokens", await self.read("ALIVE_TOKENS"))
            heads = await self.read_list("alive_heads", await self.read("ALIVE_HEADS"))
        return RunResult(embedding=mean_pool(state[pooled]), layers=tuple(reports))
