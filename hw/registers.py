"""The accelerator's control and status registers: one description that the register file
(:class:`spattn.hw.register_file.RegisterFile`), the C header and the Markdown documentation
(:mod:`spattn.gen.regmap`) are all generated from.

Registers are 32 bits wide at byte offsets that are multiples of 4. A register holds either one
unsigned value of ``width`` bits (bits ``width .. 31`` read as 0) or named :class:`Field` s. Access:

* ``"ro"``: read only. The value comes from the design (an input port of the register file), or,
  when the register has a ``const``, from the register file itself (no port).
* ``"rw"``: read/write storage; the stored value is an output port, ``reset`` after reset.
* ``"wo"``: write-only command: a write makes the output port carry the written value for one
  cycle (0 otherwise); a read returns 0.

A write of a value with bits outside the register's bits (above ``width``, or between fields) is
refused by the register file, so every stored value is one the design can represent.
"""

from dataclasses import dataclass

from spattn.config import AccelConfig, ConfigError
from spattn.formats import VALUE_KEEP_FRAC, AttentionFormats, bits_for
from spattn.hw.axi import AXI_DATA_BITS

__all__ = ["ACCESS_MODES", "REGISTER_BYTES", "ID_VALUE", "Field", "Register", "RegisterMap",
           "accelerator_registers"]

#: Access modes a register may have (see the module documentation).
ACCESS_MODES = ("ro", "rw", "wo")
#: Every register is one AXI4-Lite data word.
REGISTER_BYTES = AXI_DATA_BITS // 8
#: The value of the ID register: "SPAT" in ASCII, first letter in the top byte.
ID_VALUE = 0x53504154


@dataclass(frozen=True)
class Field:
    """Bits ``lsb .. lsb + width - 1`` of a register, named ``name`` (upper case)."""
    name: str
    lsb: int
    width: int
    doc: str = ""

    def __post_init__(self):
        if not self.name.isidentifier() or self.name != self.name.upper():
            raise ValueError(f"field name must be an upper-case identifier, not {self.name!r}")
        if not isinstance(self.lsb, int) or self.lsb < 0:
            raise ValueError(f"field {self.name}: lsb must be a non-negative integer, not {self.lsb!r}")
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"field {self.name}: width must be a positive integer, not {self.width!r}")

    @property
    def msb(self) -> int:
        return self.lsb + self.width - 1

    @property
    def mask(self) -> int:
        """The field's bits in place (shifted to ``lsb``)."""
        return ((1 << self.width) - 1) << self.lsb


@dataclass(frozen=True)
class Register:
    """One 32-bit register at byte ``offset``.

    ``width`` is the number of low bits the register uses; with ``fields`` it defaults to the top
    field's ``msb + 1``, without to 32. ``reset`` is the value of an ``"rw"`` register after reset;
    ``const`` makes an ``"ro"`` register a constant that the register file drives itself.
    """
    name: str
    offset: int
    access: str
    width: int | None = None
    fields: tuple = ()
    reset: int = 0
    doc: str = ""
    const: int | None = None

    def __post_init__(self):
        if not self.name.isidentifier() or self.name != self.name.upper():
            raise ValueError(f"register name must be an upper-case identifier, not {self.name!r}")
        if self.access not in ACCESS_MODES:
            raise ValueError(f"register {self.name}: access must be one of {ACCESS_MODES}, "
                             f"not {self.access!r}")
        if not isinstance(self.offset, int) or self.offset < 0 or self.offset % REGISTER_BYTES:
            raise ValueError(f"register {self.name}: offset must be a non-negative multiple of "
                             f"{REGISTER_BYTES}, not {self.offset!r}")
        object.__setattr__(self, "fields", tuple(self.fields))
        top = max((field.msb + 1 for field in self.fields), default=AXI_DATA_BITS)
        if self.width is None:
            object.__setattr__(self, "width", top)
        if not isinstance(self.width, int) or not 1 <= self.width <= AXI_DATA_BITS:
            raise ValueError(f"register {self.name}: width must be in 1..{AXI_DATA_BITS}, "
                             f"not {self.width!r}")
        if top > self.width and self.fields:
            raise ValueError(f"register {self.name}: fields reach bit {top - 1}, beyond its "
                             f"width of {self.width} bits")
        used = 0
        for field in self.fields:
            if used & field.mask:
                raise ValueError(f"register {self.name}: field {field.name} overlaps another field")
            used |= field.mask
        if len({field.name for field in self.fields}) != len(self.fields):
            raise ValueError(f"register {self.name}: field names must be unique")
        if self.const is not None and self.access != "ro":
            raise ValueError(f"register {self.name}: only a read-only register can be a constant")
        if self.reset and self.access != "rw":
            raise ValueError(f"register {self.name}: only a read/write register has a reset value")
        for what, value in (("reset", self.reset), ("const", self.const)):
            if value is not None and (not isinstance(value, int) or value < 0 or value & ~self.mask):
                raise ValueError(f"register {self.name}: {what} value {value!r} does not fit its bits "
                                 f"0x{self.mask:08x}")

    @property
    def mask(self) -> int:
        """The bits a value of this register may have: its fields, or its low ``width`` bits."""
        if self.fields:
            bits = 0
            for field in self.fields:
                bits |= field.mask
            return bits
        return (1 << self.width) - 1

    @property
    def port_name(self) -> str | None:
        """Name of the register file's port for this register (``None`` for a constant)."""
        return None if self.const is not None else self.name.lower()

    def field(self, name) -> Field:
        for field in self.fields:
            if field.name == name:
                return field
        raise KeyError(f"register {self.name} has no field {name!r}")

    def pack(self, **values) -> int:
        """The register value with the named fields set (a field value must fit the field)."""
        word = 0
        for name, value in values.items():
            field = self.field(name)
            if not 0 <= value < 1 << field.width:
                raise ValueError(f"{self.name}.{name} = {value!r} does not fit {field.width} bits")
            word |= value << field.lsb
        return word


class RegisterMap:
    """An ordered set of registers with unique names and offsets."""

    def __init__(self, registers, name="spattn"):
        self.name = name
        self.registers = tuple(registers)
        self._by_name = {}
        offsets = {}
        for reg in self.registers:
            if reg.name in self._by_name:
                raise ValueError(f"two registers are named {reg.name}")
            if reg.offset in offsets:
                raise ValueError(f"registers {offsets[reg.offset]} and {reg.name} share offset "
                                 f"0x{reg.offset:02x}")
            self._by_name[reg.name] = reg
            offsets[reg.offset] = reg.name

    def __iter__(self):
        return iter(self.registers)

    def __len__(self):
        return len(self.registers)

    def __getitem__(self, name) -> Register:
        return self._by_name[name]

    def __contains__(self, name):
        return name in self._by_name

    @property
    def size(self) -> int:
        """Bytes from offset 0 to the end of the last register."""
        return max(reg.offset for reg in self.registers) + REGISTER_BYTES

    @property
    def addr_bits(self) -> int:
        """Byte-address bits that reach every register (addresses above the map are unmapped)."""
        return bits_for(self.size - 1)


def _flag(name, bit, doc):
    return Field(name, bit, 1, doc)


def _const_fields(reg_name, fields, values):
    """The constant of a register from its fields' values, refusing a value its field cannot hold."""
    word = 0
    for field in fields:
        value = values[field.name]
        if not 0 <= value < 1 << field.width:
            raise ConfigError(f"{field.name.lower()} = {value} does not fit the {field.width}-bit "
                              f"field {reg_name}.{field.name} (at most {(1 << field.width) - 1})")
        word |= value << field.lsb
    return word


def accelerator_registers(cfg: AccelConfig) -> RegisterMap:
    """The register map of the accelerator generated for ``cfg``.

    A shape or format parameter too large for its field in SHAPE or FORMAT raises
    :class:`~spattn.config.ConfigError`.
    """
    keep_bits = VALUE_KEEP_FRAC + 1
    one = 1 << VALUE_KEEP_FRAC
    prob_bits = AttentionFormats.of(cfg).prob.bits
    shape_fields = (
        Field("MAX_TOKENS", 0, 16, "most tokens per sequence"),
        Field("HEADS", 16, 8, "attention heads per layer"),
        Field("LAYERS", 24, 8, "encoder layers of one run"),
    )
    format_fields = (
        Field("HEAD_DIM", 0, 8, "values per head row"),
        Field("ACT_BITS", 8, 8, "width of a Q/K/V value"),
        Field("ACT_MSB_BITS", 16, 8, "width of a value's MSB plane"),
        Field("SCORE_BITS", 24, 8, "width of an attention score"),
    )
    keep = f"unsigned fixed point, {VALUE_KEEP_FRAC} fraction bits (1 << {VALUE_KEEP_FRAC} = 1.0)"
    registers = [
        Register("ID", 0x00, "ro", const=ID_VALUE, doc='identifies the accelerator: "SPAT" in ASCII'),
        Register("SHAPE", 0x04, "ro", fields=shape_fields, doc="generated shape limits",
                 const=_const_fields("SHAPE", shape_fields, {
                     "MAX_TOKENS": cfg.max_tokens, "HEADS": cfg.heads, "LAYERS": cfg.layers})),
        Register("FORMAT", 0x08, "ro", fields=format_fields, doc="generated number formats",
                 const=_const_fields("FORMAT", format_fields, {
                     "HEAD_DIM": cfg.head_dim, "ACT_BITS": cfg.act_bits,
                     "ACT_MSB_BITS": cfg.act_msb_bits, "SCORE_BITS": cfg.score_bits})),
        Register("CTRL", 0x0C, "wo", doc="commands; a write acts once, reads return 0", fields=(
            _flag("START", 0, "run one layer with the current settings"),
            _flag("FIRST", 1, "with START: a new sequence (importance cleared, all tokens and heads alive)"),
            _flag("CLEAR", 2, "clear DONE and the error bits of STATUS"),
        )),
        Register("STATUS", 0x10, "ro", doc="state and sticky error bits", fields=(
            _flag("BUSY", 0, "a layer is running"),
            _flag("DONE", 1, "a layer finished since the last START"),
            _flag("ERR_BUSY", 8, "START while busy"),
            _flag("ERR_TOKENS", 9, "TOKENS is 0, above max_tokens or not the previous layer's survivors"),
            _flag("ERR_KEEP", 10, "a token or head keep ratio is 0 or above 1.0"),
            _flag("ERR_SETTING", 11, "VALUE_KEEP 0 or above 1.0, THRESHOLD out of range, LAYER >= layers or "
                  "MEM_BASE not 4 KiB aligned"),
            _flag("ERR_MEMORY", 12, "an AXI memory response was not OKAY"),
        )),
        Register("TOKENS", 0x14, "rw", cfg.count_bits, doc="alive tokens of this layer"),
        Register("LAYER", 0x18, "rw", bits_for(cfg.layers - 1), doc="index of this layer"),
        Register("FLAGS", 0x1C, "rw", doc="options of this layer", fields=(
            _flag("CAUSAL", 0, "query i sees keys 0..i only"),
            _flag("MASKED", 1, "apply the static (ViTCoD) masks of this layer"),
            _flag("PROGRESSIVE", 2, "progressive quantization: MSB planes first, recompute below THRESHOLD"),
        )),
        Register("TOKEN_KEEP", 0x20, "rw", keep_bits, reset=one,
                 doc=f"fraction of the alive tokens kept after this layer, {keep}"),
        Register("HEAD_KEEP", 0x24, "rw", keep_bits, reset=one,
                 doc=f"fraction of the alive heads kept after this layer, {keep}"),
        Register("VALUE_KEEP", 0x28, "rw", keep_bits, reset=one,
                 doc=f"fraction of the V rows fetched per query row, {keep}"),
        Register("THRESHOLD", 0x2C, "rw", prob_bits + 1,
                 doc="recompute a row whose maximum probability is below this, in probability LSBs"),
        Register("DYNATRAN", 0x30, "rw", cfg.act_bits,
                 doc="DynaTran: Q/K/V values with |x| below this become 0, in act LSBs"),
        Register("MEM_BASE", 0x34, "rw", 32, doc="byte address of the memory map, 4 KiB aligned"),
        Register("ALIVE_TOKENS", 0x38, "ro", cfg.count_bits, doc="tokens surviving the last layer"),
        Register("ALIVE_HEADS", 0x3C, "ro", bits_for(cfg.heads), doc="heads alive after the last layer"),
        Register("LAYER_TOKENS", 0x40, "ro", cfg.count_bits, doc="tokens the last layer ran"),
        Register("LAYER_HEADS", 0x44, "ro", bits_for(cfg.heads), doc="heads the last layer ran"),
        Register("CYCLES", 0x48, "ro", 32, doc="clock cycles of the last layer"),
        Register("BYTES_READ", 0x4C, "ro", 32, doc="bytes the last layer read from memory"),
        Register("BYTES_WRITTEN", 0x50, "ro", 32, doc="bytes the last layer wrote to memory"),
        Register("ROWS_RECOMPUTED", 0x54, "ro", 32,
                 doc="score rows the last layer recomputed with the LSB planes"),
        Register("PE_BUSY_CYCLES", 0x58, "ro", 32,
                 doc="PE-grid steps of the last layer, summed over its heads"),
    ]
    return RegisterMap(registers, name=f"spattn_{cfg.name}")
