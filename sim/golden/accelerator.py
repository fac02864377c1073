"""Executable specification of the accelerator top (:class:`spattn.hw.accelerator.Accelerator`),
behind the same transport interface as the hardware (:mod:`spattn.fpga.driver`).

:class:`GoldenAccelerator` holds a byte memory laid out by :class:`spattn.memmap.MemoryMap` and the
registers of :func:`spattn.hw.registers.accelerator_registers`. A write of CTRL.START runs the layer
at once, as the hardware does over many cycles: the settings are checked (a bad one sets its STATUS
error bit and nothing runs); each alive head's planes are read from memory and run through
:func:`.attention_core.attention_head` (static masks gathered to the alive tokens); the outputs are
written to memory; token and head importance accumulate as integers; cascade pruning selects the
survivors with :func:`.pruning.select_survivors`; the alive lists are written to memory; and the
counters get the values the hardware must report: bytes read and written on the bus (whole bus
words per burst), rows recomputed, grid steps (:func:`.core_schedule.core_schedule`) and the
layer's tokens and heads. Only CYCLES is the hardware's own (this model reports 0).
"""

import torch

from spattn.formats import VALUE_KEEP_FRAC, AttentionFormats, join_planes
from spattn.hw.accelerator import MEM_BASE_ALIGN_BITS
from spattn.hw.registers import accelerator_registers
from spattn.memmap import BUS_BYTES, LIST_ENTRY_BYTES, MemoryMap, pack_values, unpack_values

from .attention_core import attention_head
from .core_schedule import core_schedule
from .pruning import select_survivors

__all__ = ["GoldenAccelerator", "SETTING_FAMILIES"]

#: One setting of each family of ``spattn eval`` (config changes), the best combined one last: the
#: settings the accelerator is checked under, on the golden model and on the RTL.
SETTING_FAMILIES = {
    "dense": {},
    "token keep": {"token_keep": (0.8,)},
    "head keep": {"head_keep": (0.5,)},
    "value keep": {"value_keep": 0.5},
    "progressive": {"recompute_threshold": 0.2},
    "dynatran": {"dynatran_threshold": 0.1},
    "static mask": {"static_mask_density": 0.5, "recompute_threshold": 0.2},
    "combined": {"recompute_threshold": 0.0, "value_keep": 0.7, "token_keep": (1.0, 1.0, 0.8, 0.8, 0.6, 0.6),
                 "head_keep": (0.9,)},
}


class GoldenAccelerator:
    """The accelerator as a Python object: ``read_reg``/``write_reg``/``read_mem``/``write_mem``."""

    def __init__(self, cfg, memory_bytes=None):
        """``memory_bytes``: size of the memory, at least MEM_BASE plus the memory map's size
        (default: the memory map's size, for MEM_BASE 0)."""
        self.cfg = cfg
        self.memmap = MemoryMap(cfg)
        self.regmap = accelerator_registers(cfg)
        self.fmt = AttentionFormats.of(cfg)
        self.memory = bytearray(memory_bytes or self.memmap.size)
        self.regs = {reg.name: (reg.const if reg.const is not None else reg.reset) for reg in self.regmap}
        self.by_offset = {reg.offset: reg for reg in self.regmap}
        self.token_importance = [0] * cfg.max_tokens
        self.head_importance = [0] * cfg.heads
        self.alive, self.heads = [], []
        #: per layer, ``[(head, HeadResult)]`` of every head run (what the controller is fed)
        self.trace = []
        for name in ("STATUS", "ALIVE_TOKENS", "ALIVE_HEADS", "LAYER_TOKENS", "LAYER_HEADS", "CYCLES",
                     "BYTES_READ", "BYTES_WRITTEN", "ROWS_RECOMPUTED", "PE_BUSY_CYCLES"):
            self.regs[name] = 0

    # ---- transport interface -----------------------------------------------------------------
    async def read_reg(self, offset):
        return self.regs[self.by_offset[offset].name]

    async def write_reg(self, offset, value):
        reg = self.by_offset[offset]
        if reg.name == "CTRL":
            self._command(value)
        elif reg.access == "rw":
            self.regs[reg.name] = value

    async def read_mem(self, address, length):
        return bytes(self.memory[address:address + length])

    async def write_mem(self, address, data):
        if address + len(data) > len(self.memory):
            raise ValueError(f"write of {len(data)} bytes at 0x{address:x} is past the memory's "
                             f"{len(self.memory)} bytes")
        self.memory[address:address + len(data)] = data

    # ---- the layer ---------------------------------------------------------------------------
    def _set(self, flag, on=True):
        bit = 1 << self.regmap["STATUS"].field(flag).lsb
        self.regs["STATUS"] = self.regs["STATUS"] | bit if on else self.regs["STATUS"] & ~bit

    def _command(self, value):
        ctrl = self.regmap["CTRL"]
        if value >> ctrl.field("CLEAR").lsb & 1:
            self.regs["STATUS"] = 0
        if not value >> ctrl.field("START").lsb & 1:
            return
        self._set("DONE", False)
        r, cfg, full = self.regs, self.cfg, 1 << VALUE_KEEP_FRAC
        first = bool(value >> ctrl.field("FIRST").lsb & 1)
        bad_tokens = not 1 <= r["TOKENS"] <= cfg.max_tokens or (not first and r["TOKENS"] != len(self.alive))
        bad_keep = not (1 <= r["TOKEN_KEEP"] <= full and 1 <= r["HEAD_KEEP"] <= full)
        bad_setting = (not 1 <= r["VALUE_KEEP"] <= full or r["THRESHOLD"] > 1 << self.fmt.prob.bits
                       or r["LAYER"] >= cfg.layers or r["MEM_BASE"] % (1 << MEM_BASE_ALIGN_BITS))
        for flag, bad in (("ERR_TOKENS", bad_tokens), ("ERR_KEEP", bad_keep), ("ERR_SETTING", bad_setting)):
            if bad:
                self._set(flag)
        if bad_tokens or bad_keep or bad_setting:
            return
        if first:
            self.token_importance = [0] * cfg.max_tokens
            self.head_importance = [0] * cfg.heads
            self.alive, self.heads = list(range(r["TOKENS"])), list(range(cfg.heads))
        self._run_layer()
        self._set("DONE")

    def _read_rows(self, address, row, count, bits, signed, values):
        return [unpack_values(self.memory[address + i * row.stride:address + i * row.stride + row.nbytes],
                              bits, values, signed) for i in range(count)]

    def _run_layer(self):
        cfg, mm, r = self.cfg, self.memmap, self.regs
        base, n, layer = r["MEM_BASE"], len(self.alive), r["LAYER"]
        causal, masked, progressive = (bool(r["FLAGS"] >> self.regmap["FLAGS"].field(flag).lsb & 1)
                                       for flag in ("CAUSAL", "MASKED", "PROGRESSIVE"))
        read = written = recomputed = steps = 0
        self.trace.append([])
        for head in self.heads:
            planes = {}
            for t in mm.TENSORS:
                for p in mm.PLANES:
                    planes[t, p] = torch.tensor(self._read_rows(
                        base + mm.plane_address(t, p, head, 0), mm.plane_row[p], n, mm.plane_bits[p],
                        p == "msb", cfg.head_dim), dtype=torch.int64)
            q, k, v = (join_planes(planes[t, "msb"], planes[t, "lsb"], cfg.act_lsb_bits) for t in mm.TENSORS)
            mask = None
            if masked:
                rows = self._read_rows(base + mm.mask_address(layer, head, 0), mm.mask_row, cfg.max_tokens, 1,
                                       False, cfg.max_tokens)
                full_mask = torch.tensor(rows, dtype=torch.bool)
                mask = full_mask[self.alive][:, self.alive]
            result = attention_head(cfg, q, k, v, causal=causal, mask=mask, progressive=progressive,
                                    threshold=r["THRESHOLD"], value_keep=r["VALUE_KEEP"],
                                    dynatran=r["DYNATRAN"])
            self.trace[-1].append((head, result))
            for i in range(n):
                address = base + mm.out_address(head, i)
                self.memory[address:address + mm.out_row.nbytes] = pack_values(
                    result.out[i].tolist(), 16, mm.out_row.nbytes)
            for j, p in enumerate(result.probs.sum(dim=0).tolist()):
                self.token_importance[self.alive[j]] += p
            self.head_importance[head] += int(result.magnitude.sum())
            read += sum(len(rows) * mm.plane_row[plane].bus_bytes for (_, plane), rows in result.fetched.items())
            if masked:      # a mask row each time a block computes a row
                read += (n + result.rows_recomputed) * mm.mask_row.bus_bytes
            written += n * mm.out_row.bus_bytes
            recomputed += result.rows_recomputed
            steps += core_schedule(cfg, n, causal, progressive, result.full_precision, result.kept)[1]
        r["LAYER_TOKENS"], r["LAYER_HEADS"] = n, len(self.heads)
        keep_tokens = select_survivors(torch.tensor([self.token_importance[p] for p in self.alive]),
                                       r["TOKEN_KEEP"], forced=0).tolist()
        keep_heads = select_survivors(torch.tensor([self.head_importance[h] for h in self.heads]),
                                      r["HEAD_KEEP"]).tolist()
        self.alive = [self.alive[i] for i in keep_tokens]
        self.heads = [self.heads[i] for i in keep_heads]
        for name, entries in (("alive_tokens", self.alive), ("alive_heads", self.heads)):
            nbytes = -(-len(entries) * LIST_ENTRY_BYTES // BUS_BYTES) * BUS_BYTES
            address = base + mm.list_address(name)
            self.memory[address:address + nbytes] = pack_values(entries, 8 * LIST_ENTRY_BYTES, nbytes)
            written += nbytes
        r.update(ALIVE_TOKENS=len(self.alive), ALIVE_HEADS=len(self.heads), BYTES_READ=read,
                 BYTES_WRITTEN=written, ROWS_RECOMPUTED=recomputed, PE_BUSY_CYCLES=steps, CYCLES=0)
