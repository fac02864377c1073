"""Number formats: the one place that defines widths, binary points, rounding, overflow and tie-breaks.

Both the gateware generator (``spattn.hw``) and the golden model (``spattn.sim.golden``) import
these definitions, so the two sides cannot drift. Golden-model helpers here operate on integer
``torch`` tensors (``int64``) and return integer tensors; nothing here is "close enough".
"""

import enum
import math
from dataclasses import dataclass

import torch
from amaranth.hdl import Shape, signed, unsigned

__all__ = ["Overflow", "Rounding", "IntFormat", "TOPK_TIE_BREAK", "PE_ACC_OVERFLOW", "dynatran_zero",
           "dynatran_threshold_int", "bits_for", "split_planes", "join_planes",
           "AttentionFormats", "VALUE_KEEP_FRAC", "value_keep_int", "kept_count",
           "recompute_threshold_int", "plane_row_bytes"]


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


# --- Progressive quantization planes -------------------------------------------------------------

def split_planes(values, lsb_bits: int):
    """Split stored integers into an MSB plane and an LSB plane: ``value = (msb << lsb_bits) + lsb``.

    ``msb`` keeps the sign (an arithmetic shift), ``lsb`` is unsigned in ``0 .. 2**lsb_bits - 1``.
    """
    t = torch.as_tensor(values, dtype=torch.int64)
    return t >> lsb_bits, t & ((1 << lsb_bits) - 1)


def join_planes(msb, lsb, lsb_bits: int):
    """Inverse of :func:`split_planes`; ``lsb = 0`` gives the MSB-only value ``msb << lsb_bits``."""
    return (torch.as_tensor(msb, dtype=torch.int64) << lsb_bits) + torch.as_tensor(lsb, dtype=torch.int64)


# --- Integer attention: scores, softmax, P·V ----------------------------------------------------

#: Integer bits (sign included) of a softmax score. Scores are in base-2 log units (the 1/sqrt(d)
#: scaling multiply also folds in log2(e)), so 8 bits cover differences up to 128, where 2**-x is
#: far below one probability LSB; the remaining ``score_bits - 8`` bits are fraction bits.
SCORE_INT_BITS = 8
#: At most this many score fraction bits address the exponent table (2**10 entries).
MAX_SCORE_FRAC = 10
#: Width of the unsigned constant that multiplies a Q·Kᵀ sum by ``log2(e) / sqrt(head_dim)``.
SCALE_MULT_BITS = 16


@dataclass(frozen=True)
class AttentionFormats:
    """The fixed-point formats and constants of the integer attention path of one configuration.

    * ``act``: Q, K, V and the P·V output (signed ``act_bits``, ``act_frac`` fraction bits).
    * ``acc``: the exact Q·Kᵀ sum (fraction ``2 * act_frac``); the config rules make it never wrap.
    * ``score``: ``s = sat(floor((acc * scale_mult + 2**(scale_shift-1)) / 2**scale_shift))``, signed
      ``score_bits`` with ``score.frac`` fraction bits, standing for ``q·k / sqrt(d) * log2(e)``
      (round half up, saturate): a ``SCALE_MULT_BITS`` multiplier and a shift.
    * exponent: with ``m`` the row maximum and ``x = m - s >= 0`` split as ``x = u * 2**F + f``
      (``F = score.frac``), ``e = ((exp_lut[f] << 1 >> u) + 1) >> 1``, a table of ``2**F`` entries
      and a shifter that rounds half up (``e = 0`` for any ``u > exp_frac + 1``);
      ``exp_lut[f] = round(2**exp_frac * 2**(-f / 2**F))`` so ``e / 2**exp_frac`` approximates
      ``2**(-x / 2**F) = exp(score_real - max_real)``, and the row maximum gets exactly 1.0.
    * reciprocal: one integer division per row, rounded: with ``S = sum(e)``,
      ``r = floor((2**(exp_frac + prob.frac) + floor(S / 2)) / S)`` (a serial divider).
    * ``prob``: ``p = min(floor((e * r + 2**(exp_frac-1)) / 2**exp_frac), prob.max)``, unsigned
      ``score_bits - 1`` bits, all fraction, so probabilities also fit the top-k engine's signed
      ``score_bits`` scores. A single present key gets ``prob.max``, 1.0 less one LSB. Measured
      errors against float softmax are in ``reports/softmax_error.md`` (``spattn bench softmax``):
      up to about 20 LSB, mostly from the score rounding; the exponent roundings add up in the
      row sum, so the error of the softmax step alone grows with the row length.
    * P·V: ``o = sat(floor((sum_j p_j v_j + 2**(prob.frac-1)) / 2**prob.frac))`` in ``act``.
    """
    act: IntFormat
    acc: IntFormat
    score: IntFormat
    scale_mult: int
    scale_shift: int
    exp_frac: int
    exp_lut: tuple
    prob: IntFormat

    @classmethod
    def of(cls, cfg) -> "AttentionFormats":
        """The formats of an :class:`~spattn.config.AccelConfig` (its widths and ``head_dim``)."""
        score_frac = max(0, min(cfg.score_bits - SCORE_INT_BITS, MAX_SCORE_FRAC))
        score = IntFormat(cfg.score_bits, signed=True, frac=score_frac)
        prob = IntFormat(cfg.score_bits - 1, signed=False, frac=cfg.score_bits - 1)
        act_frac = cfg.act_format.frac
        # real factor from an acc LSB (2**-2*act_frac) to a score LSB (2**-score_frac)
        factor = math.log2(math.e) / math.sqrt(cfg.head_dim) * 2.0 ** (score_frac - 2 * act_frac)
        shift = SCALE_MULT_BITS - 1 - math.floor(math.log2(factor))
        while round(factor * 2 ** shift) >= 1 << SCALE_MULT_BITS:
            shift -= 1
        exp_frac = prob.frac + 1
        lut = tuple(round(2 ** exp_frac * 2.0 ** (-f / (1 << score_frac))) for f in range(1 << score_frac))
        return cls(act=cfg.act_format, acc=cfg.acc_format, score=score,
                   scale_mult=round(factor * 2 ** shift), scale_shift=shift, exp_frac=exp_frac,
                   exp_lut=lut, prob=prob)


# --- PE array (tiled integer matmul with DynaTran pruning) ----------------------------------------

#: What a PE-array result that does not fit the ``acc_bits`` accumulator format becomes, unless the
#: array is generated with another rule. The rule applies to the exact dot product (both rules are
#: then independent of the order in which the products are added): WRAP keeps its low ``acc_bits``
#: bits (two's complement, a plain adder); SATURATE clamps it to the accumulator range, with guard
#: bits in the accumulators so that nothing wraps before the clamp.
PE_ACC_OVERFLOW = Overflow.WRAP


def dynatran_zero(values, threshold: int):
    """DynaTran pruning on stored integers: every value with ``|x| < threshold`` becomes 0.

    ``threshold`` is an integer in the stored format's units (0 prunes nothing).
    """
    t = torch.as_tensor(values, dtype=torch.int64)
    return torch.where(t.abs() < int(threshold), torch.zeros_like(t), t)


def dynatran_threshold_int(threshold: float, fmt: IntFormat) -> int:
    """The integer threshold of a real one: ``|q| < threshold_int`` iff ``|q / 2**frac| < threshold``."""
    return math.ceil(threshold * (1 << fmt.frac))


# --- Attention core: runtime thresholds, value pruning, memory rows -------------------------------

#: Fraction bits of every runtime keep ratio (value keep in the attention core, token and head keep
#: in the pruning controller): an unsigned ``VALUE_KEEP_FRAC + 1``-bit integer ``w`` stands for
#: ``w / 2**VALUE_KEEP_FRAC`` (so 1.0 is representable).
VALUE_KEEP_FRAC = 16


def value_keep_int(ratio: float) -> int:
    """The runtime integer of a keep ratio in (0, 1] (value, token or head keep): rounded down to ``VALUE_KEEP_FRAC`` bits,
    so that ``kept_count`` never keeps more than ``ceil(ratio * present)`` (half-up rounding made
    0.3 keep 4 of 10)."""
    return math.floor(ratio * (1 << VALUE_KEEP_FRAC))


def kept_count(value_keep: int, present: int) -> int:
    """How many of ``present`` candidates an integer keep ratio keeps (V rows of a query's present
    keys; alive tokens or heads in cascade pruning): ``min(present, max(1, ceil(w * present /
    2**VALUE_KEEP_FRAC)))`` for the integer ratio ``w`` (an integer multiply, an add and a shift)."""
    wanted = (value_keep * present + (1 << VALUE_KEEP_FRAC) - 1) >> VALUE_KEEP_FRAC
    return min(present, max(1, wanted))


def recompute_threshold_int(threshold: float, prob: IntFormat) -> int:
    """The integer threshold of a real one: a row is recomputed when its maximum probability ``p``
    (stored integer) has ``p < recompute_threshold_int``, i.e. ``p / 2**frac < threshold``."""
    return math.ceil(threshold * (1 << prob.frac))


def plane_row_bytes(head_dim: int, bits: int) -> int:
    """Bytes one memory row of a plane takes (``head_dim`` values of ``bits``, byte-aligned rows)."""
    return -(-head_dim * bits // 8)
