"""Number formats: the one place that defines widths, binary points, rounding, overflow and tie-breaks.

Both the gateware generator (``spattn.hw``) and the golden model (``spattn.sim.golden``) import
these definitions, so the two sides cannot drift. Golden-model helpers here operate on integer
``torch`` tensors (``int64``) and return integer tensors; nothing here is "close enough".
"""

import enum
from dataclasses import dataclass

import torch
from amaranth.hdl import Shape, signed, unsigned

__all__ = ["Overflow", "Rounding", "IntFormat", "TOPK_TIE_BREAK", "bits_for"]


#: Top-k tie-break rule shared by the top-k engine and its golden model: among scores equal to the
#: k-th largest value, the ones earliest in the input stream (lowest index) are kept.
TOPK_TIE_BREAK = "lower_index"


def bits_for(value):
    """Number of bits of an unsigned integer able to hold ``0 ..= value``."""
    if value < 0:
        raise ValueError(f"bits_for takes a non-negative value, not {value!r}")
    return max(1, int(value).bit_length())


class Overflow(enum.Enum):
    """What a value that does not fit its format becomes."""
    WRAP = "wrap"          # two's-complement wrap-around, as plain adders do
    SATURATE = "saturate"  # clamp to the nearest representable value


class Rounding(enum.Enum):
    """How a real value, or an integer with surplus fraction bits, is rounded to a format."""
    FLOOR = "floor"          # towards minus infinity: an arithmetic right shift
    HALF_UP = "half_up"      # to nearest, ties towards plus infinity: add half an LSB, then floor
    HALF_EVEN = "half_even"  # to nearest, ties to even (what torch.round does)


@dataclass(frozen=True)
class IntFormat:
    """A fixed-point integer format: ``bits`` wide, ``frac`` bits after the binary point.

    A stored integer ``q`` stands for the real value ``q / 2**frac``.
    """
    bits: int
    signed: bool = True
    frac: int = 0

    def __post_init__(self):
        if not isinstance(self.bits, int) or self.bits < 1:
            raise ValueError(f"format width must be a positive integer, not {self.bits!r}")
        if self.signed and self.bits < 2:
            raise ValueError(f"a signed format needs at least 2 bits, not {self.bits!r}")
        if not isinstance(self.frac, int) or self.frac < 0:
            raise ValueError(f"format fraction bits must be a non-negative integer, not {self.frac!r}")

    @property
    def min(self):
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max(self):
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def shape(self) -> Shape:
        """The Amaranth shape of a value in this format."""
        return signed(self.bits) if self.signed else unsigned(self.bits)

    def contains(self, values):
        """Whether every integer in ``values`` (a tensor or an int) is representable."""
        t = torch.as_tensor(values)
        return bool(((t >= self.min) & (t <= self.max)).all())

    def saturate(self, values):
        return torch.clamp(torch.as_tensor(values, dtype=torch.int64), self.min, self.max)

    def wrap(self, values):
        t = torch.as_tensor(values, dtype=torch.int64)
        mask = (1 << self.bits) - 1
        t = t & mask
        if self.signed:
            t = torch.where(t > self.max, t - (1 << self.bits), t)
        return t

    def fit(self, values, overflow: Overflow):
        return self.saturate(values) if overflow is Overflow.SATURATE else self.wrap(values)

    def quantize(self, reals, rounding: Rounding = Rounding.HALF_EVEN,
                 overflow: Overflow = Overflow.SATURATE):
        """Real (float) tensor to stored integers of this format."""
        scaled = torch.as_tensor(reals, dtype=torch.float64) * (1 << self.frac)
        if rounding is Rounding.FLOOR:
            ints = torch.floor(scaled)
        elif rounding is Rounding.HALF_UP:
            ints = torch.floor(scaled + 0.5)
        else:
            ints = torch.round(scaled)
        return self.fit(ints.to(torch.int64), overflow)

    def to_real(self, ints):
        return torch.as_tensor(ints, dtype=torch.float64) / (1 << self.frac)

    def random(self, size, generator=None):
        """Uniformly random stored integers over the whole format range."""
        return torch.randint(self.min, self.max + 1, size, generator=generator, dtype=torch.int64)
