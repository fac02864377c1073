"""The accelerator's external memory map: where every tensor, plane, head and row lives.

One definition, used by the accelerator top (address generation), the host driver (what it writes
and reads), the golden traffic model (bytes per burst) and the README. Addresses are byte offsets
from the ``MEM_BASE`` register; the memory is little-endian and ``AXI_DATA_BITS`` wide.

Regions, in this order, each starting on a 4 KiB boundary:

* ``planes``: Q, K, V, each as an MSB plane then an LSB plane (``plane_region(tensor, plane)``);
  in each, head ``h`` (the model's head number) and row ``i`` (the i-th *alive* token of the layer:
  compact) at ``(h * max_tokens + i) * stride``. A row holds ``head_dim`` values of the plane's
  width packed from bit 0 (value ``c`` at bits ``c*w .. c*w+w-1`` of the little-endian row; MSB
  planes two's complement, LSB planes unsigned).
* ``masks``: the static (ViTCoD) mask of layer ``l``, head ``h``, query at sentence position ``p``:
  ``max_tokens`` bits, bit ``j`` set when key position ``j`` is present, at
  ``((l * heads + h) * max_tokens + p) * stride``. Positions are the sentence's, not compact: the
  accelerator gathers each row to the alive tokens.
* ``out``: the attention output of head ``h``, row ``i`` (compact), ``head_dim`` signed 16-bit values
  (act format, sign-extended) at ``(h * max_tokens + i) * stride``.
* ``alive_tokens``: after each layer, the sentence positions of the surviving tokens, ascending,
  as 16-bit values; ``alive_heads``: the surviving heads, ascending, as 16-bit values.

Every row stride is a power of two of at least one bus word, so no burst crosses a 4 KiB boundary.
A row is read or written as one burst of ``row_beats`` words; the bytes counted on the bus are
``row_beats * AXI_DATA_BITS / 8``.
"""

from dataclasses import dataclass

from spattn.formats import plane_row_bytes
from spattn.hw.axi import AXI_ADDR_BITS, AXI_DATA_BITS

__all__ = ["BUS_BYTES", "REGION_ALIGN", "OUT_VALUE_BYTES", "LIST_ENTRY_BYTES", "Row", "MemoryMap",
           "pack_values", "unpack_values"]

BUS_BYTES = AXI_DATA_BITS // 8
REGION_ALIGN = 4096
#: An output value is stored sign-extended in this many bytes.
OUT_VALUE_BYTES = 2
#: An alive-list entry (a token position or a head number) is stored in this many bytes.
LIST_ENTRY_BYTES = 2


def pack_values(values, bits, nbytes):
    """``values`` (integers; negative ones two's complement) packed ``bits`` each from bit 0 of a
    little-endian row of ``nbytes`` bytes."""
    row = 0
    for i, value in enumerate(values):
        row |= (int(value) & ((1 << bits) - 1)) << (i * bits)
    return row.to_bytes(nbytes, "little")


def unpack_values(raw, bits, count, signed):
    """The first ``count`` ``bits``-wide values of the little-endian row ``raw``."""
    row = int.from_bytes(bytes(raw), "little")
    values = [(row >> (i * bits)) & ((1 << bits) - 1) for i in range(count)]
    if signed:
        values = [v - (1 << bits) if v >> (bits - 1) else v for v in values]
    return values


def _words(nbytes):
    return -(-nbytes // BUS_BYTES)


def _stride(nbytes):
    """The smallest power of two of at least one bus word that holds ``nbytes``."""
    stride = BUS_BYTES
    while stride < nbytes:
        stride *= 2
    return stride


def _align(offset):
    return -(-offset // REGION_ALIGN) * REGION_ALIGN


@dataclass(frozen=True)
class Row:
    """The geometry of one kind of row: bytes of content, bus words per burst, address stride."""
    nbytes: int
    stride: int

    @property
    def beats(self) -> int:
        return _words(self.nbytes)

    @property
    def bus_bytes(self) -> int:
        """Bytes one burst of this row moves on the bus."""
        return self.beats * BUS_BYTES


class MemoryMap:
    """The memory map of one :class:`~spattn.config.AccelConfig`."""

    TENSORS = ("q", "k", "v")
    PLANES = ("msb", "lsb")

    def __init__(self, cfg):
        self.cfg = cfg
        t, h, d = cfg.max_tokens, cfg.heads, cfg.head_dim
        self.plane_bits = {"msb": cfg.act_msb_bits, "lsb": cfg.act_lsb_bits}
        self.plane_row = {p: self._row(plane_row_bytes(d, bits)) for p, bits in self.plane_bits.items()}
        self.mask_row = self._row(-(-t // 8))
        self.out_row = self._row(d * OUT_VALUE_BYTES)
        offset, self.regions = 0, {}
        for tensor in self.TENSORS:
            for plane in self.PLANES:
                offset = self._place(f"{tensor}_{plane}", offset, h * t * self.plane_row[plane].stride)
        offset = self._place("masks", offset, cfg.layers * h * t * self.mask_row.stride)
        offset = self._place("out", offset, h * t * self.out_row.stride)
        offset = self._place("alive_tokens", offset, t * LIST_ENTRY_BYTES)
        offset = self._place("alive_heads", offset, h * LIST_ENTRY_BYTES)
        self.size = offset
        if self.size > 1 << AXI_ADDR_BITS:
            raise ValueError(f"the memory map needs {self.size} bytes, more than the "
                             f"{AXI_ADDR_BITS}-bit address space")

    @staticmethod
    def _row(nbytes):
        return Row(nbytes=nbytes, stride=_stride(nbytes))

    def _place(self, name, offset, size):
        self.regions[name] = (offset, size)
        return _align(offset + size)

    def plane_address(self, tensor: str, plane: str, head: int, row: int) -> int:
        base, _ = self.regions[f"{tensor}_{plane}"]
        return base + (head * self.cfg.max_tokens + row) * self.plane_row[plane].stride

    def mask_address(self, layer: int, head: int, position: int) -> int:
        base, _ = self.regions["masks"]
        return base + ((layer * self.cfg.heads + head) * self.cfg.max_tokens + position) * self.mask_row.stride

    def out_address(self, head: int, row: int) -> int:
        base, _ = self.regions["out"]
        return base + (head * self.cfg.max_tokens + row) * self.out_row.stride

    def list_address(self, name: str, index: int = 0) -> int:
        """Entry ``index`` of ``"alive_tokens"`` or ``"alive_heads"``."""
        base, _ = self.regions[name]
        return base + index * LIST_ENTRY_BYTES

    def strides(self):
        """Row (or list entry) stride in bytes of every region, by region name."""
        return {**{f"{t}_{p}": self.plane_row[p].stride for t in self.TENSORS for p in self.PLANES},
                "masks": self.mask_row.stride, "out": self.out_row.stride,
                "alive_tokens": LIST_ENTRY_BYTES, "alive_heads": LIST_ENTRY_BYTES}

    def table(self):
        """Markdown table of the regions (name, offset, size, row stride)."""
        strides = self.strides()
        lines = ["| region | offset | bytes | row stride |", "|---|---:|---:|---:|"]
        lines += [f"| `{name}` | 0x{offset:08x} | {size} | {strides[name]} |"
                  for name, (offset, size) in self.regions.items()]
        return "\n".join(lines)
