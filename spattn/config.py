"""The accelerator configuration: one frozen, validated object that feeds gateware and golden model.

Every parameter of the generated accelerator lives in :class:`AccelConfig`. Constructing one runs
every consistency rule; a violated rule raises :class:`ConfigError` naming the parameter, the value
and the limit, before any gateware is built. Named presets are ``dataclasses.replace`` of a base.
"""

import dataclasses
import math
from dataclasses import dataclass

from .formats import IntFormat, bits_for

__all__ = ["ConfigError", "BoardSpec", "BOARDS", "AccelConfig", "PRESETS", "preset", "check_topk_run"]


class ConfigError(ValueError):
    """An impossible configuration or run parameter; the message names parameter, value and limit."""


@dataclass(frozen=True)
class BoardSpec:
    """The resources of one FPGA board that the generator plans against."""
    name: str
    device: str
    luts: int
    dsps: int          # hardware multipliers (ECP5 MULT18X18D, iCE40 SB_MAC16)
    dsp_width: int     # widest operand one multiplier takes without splitting
    brams: int         # block RAMs (ECP5 DP16KD, iCE40 EBR)
    bram_bits: int     # bits in one block RAM
    clock_mhz: float   # the board oscillator, the default clock target


BOARDS = {
    "ulx3s-85f": BoardSpec("ulx3s-85f", "LFE5U-85F", luts=83640, dsps=156, dsp_width=18,
                           brams=208, bram_bits=18432, clock_mhz=25.0),
    "icebreaker": BoardSpec("icebreaker", "iCE40UP5K", luts=5280, dsps=8, dsp_width=16,
                            brams=30, bram_bits=4096, clock_mhz=12.0),
}

#: Most comparator lanes the top-k engine supports (its compaction networks grow as lanes squared).
MAX_TOPK_COMPARATORS = 32
MAX_TOPK_PAIR_TOKENS = 32


@dataclass(frozen=True)
class AccelConfig:
    """All parameters of one generated accelerator.

    Shapes: ``max_tokens`` tokens per sequence, ``heads`` heads of ``head_dim`` each.
    Formats: Q/K/V values are ``act_bits`` wide (``act_frac`` fraction bits), stored as an MSB plane
    of ``act_msb_bits`` and an LSB plane of the rest; dot products accumulate in ``acc_bits``;
    the top-k engine ranks ``score_bits``-wide signed scores.
    Engines: a ``pe_rows`` x ``pe_cols`` multiply-accumulate array; a top-k engine with
    ``topk_comparators`` lanes, fed ``topk_stream_lanes`` scores per input beat, which ranks runs of
    at most ``topk_pair_tokens`` scores by comparing every pair (0: never).
    Target: ``board`` (a key of :data:`BOARDS`) at ``clock_mhz`` (from the board oscillator through
    a PLL where it differs); the host link's UART runs at ``link_baud``.
    """
    name: str = "default"
    board: str = "ulx3s-85f"
    clock_mhz: float = 25.0
    # The host link's UART (8N1). The ULX3S's FT231X makes 3 MBd / (n + m/8) exactly; 1 MBd is
    # one of those and a whole number of cycles at 12, 25 and 40 MHz.
    link_baud: int = 1_000_000

    max_tokens: int = 1024
    heads: int = 12
    head_dim: int = 64

    act_bits: int = 12
    act_msb_bits: int = 8
    act_frac: int = 6
    acc_bits: int = 32
    score_bits: int = 16

    pe_rows: int = 8
    pe_cols: int = 16

    topk_comparators: int = 16
    topk_stream_lanes: int = 16
    # Runs of at most this many scores (and max_tokens) skip the radix selection: n (n - 1) / 2
    # comparators rank every score at once, so a short run costs a few cycles instead of a few
    # dozen. 16 scores of 16 bits cost about 2,500 LUT4s on the ECP5.
    topk_pair_tokens: int = 16

    # --- Sparse-attention algorithm (golden model, pruning controller). The defaults mean dense:
    # nothing pruned, full precision, no thresholds, no masks. A schedule holds one value per layer
    # (``layers`` values) or a single value for every layer.
    # Encoder layers one run goes through.
    layers: int = 6
    # Cascade token / head pruning: fraction of the alive tokens / heads kept after each layer.
    token_keep: tuple = (1.0,)
    head_keep: tuple = (1.0,)
    # Local value pruning: fraction of the V rows fetched per query row.
    value_keep: float = 1.0
    # Progressive quantization: None = off (full precision); else MSB planes first, and rows whose
    # maximum probability is below this threshold are recomputed with the LSB planes.
    recompute_threshold: float | None = None
    # DynaTran: Q/K/V values with |x| below this (real units) become zero.
    dynatran_threshold: float = 0.0
    # ViTCoD: fraction of attention entries a calibrated fixed mask keeps; key columns of a mask
    # denser than the second threshold go to the dense engine.
    static_mask_density: float = 1.0
    static_dense_threshold: float = 0.5

    def __post_init__(self):
        for rule in _RULES:
            rule(self)

    # Derived values, computed in one place.
    @property
    def link_clocks_per_bit(self) -> int:
        """Clock cycles per UART bit: ``clock_mhz`` / ``link_baud``, rounded."""
        return round(self.clock_mhz * 1e6 / self.link_baud)

    @property
    def board_spec(self) -> BoardSpec:
        return BOARDS[self.board]

    @property
    def score_format(self) -> IntFormat:
        return IntFormat(self.score_bits, signed=True)

    @property
    def act_format(self) -> IntFormat:
        return IntFormat(self.act_bits, signed=True, frac=self.act_frac)

    @property
    def acc_format(self) -> IntFormat:
        return IntFormat(self.acc_bits, signed=True, frac=2 * self.act_frac)

    @property
    def act_lsb_bits(self) -> int:
        return self.act_bits - self.act_msb_bits

    @property
    def index_bits(self) -> int:
        """Width of a token index ``0 .. max_tokens - 1``."""
        return bits_for(self.max_tokens - 1)

    @property
    def count_bits(self) -> int:
        """Width of a token count ``0 ..= max_tokens``."""
        return bits_for(self.max_tokens)

    @property
    def topk_rows(self) -> int:
        """Depth of each top-k buffer bank: the buffers hold ``max_tokens`` scores in rows of P."""
        return -(-self.max_tokens // self.topk_comparators)

    @property
    def topk_row_bits(self) -> int:
        """Width of a row number of a top-k bank (``0 .. topk_rows - 1``, at least one bit)."""
        return bits_for(max(self.topk_rows - 1, 1))

    @property
    def token_importance_bits(self) -> int:
        """Width of a token-importance accumulator: the probabilities a token receives, summed over
        at most ``max_tokens`` queries, ``heads`` heads and ``layers`` layers, never wrap."""
        prob_max = (1 << (self.score_bits - 1)) - 1
        return bits_for(self.layers * self.heads * self.max_tokens * prob_max)

    @property
    def head_importance_bits(self) -> int:
        """Width of a head-importance accumulator: the L1 magnitudes of a head's output rows (each
        at most ``head_dim * 2**(act_bits-1)``), summed over ``max_tokens`` rows and ``layers``."""
        return bits_for(self.layers * self.max_tokens * (self.head_dim << (self.act_bits - 1)))

    @property
    def importance_bits(self) -> int:
        """Signed score width of the pruning controller's top-k engine: either importance, with a
        sign bit (importances are never negative, so nothing is scaled or lost)."""
        return max(self.token_importance_bits, self.head_importance_bits) + 1

    def estimated_dsps(self) -> int:
        """Multipliers the PE array needs: one per MAC, more when operands exceed the DSP width."""
        per_mac = math.ceil(self.act_bits / self.board_spec.dsp_width) ** 2
        return self.pe_rows * self.pe_cols * per_mac

    def estimated_brams(self) -> int:
        """Upper bound on block RAMs: the top-k engine's two banks per lane (its input in order and
        its bucket lists: two sets of 16 lists of up to ``topk_rows`` row numbers), each in blocks
        of its own."""
        input_bits = self.topk_rows * self.score_bits
        list_bits = 2 * 16 * (1 << self.topk_row_bits) * self.topk_row_bits
        blocks = math.ceil(input_bits / self.board_spec.bram_bits) + math.ceil(list_bits / self.board_spec.bram_bits)
        return self.topk_comparators * blocks

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Inverse of :meth:`to_dict`, also after a JSON round trip (lists become tuples again)."""
        return cls(**{key: tuple(value) if isinstance(value, list) else value
                      for key, value in values.items()})


def _positive(*names):
    def rule(cfg):
        for name in names:
            value = getattr(cfg, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
    return rule


def _board(cfg):
    if cfg.board not in BOARDS:
        raise ConfigError(f"board must be one of {sorted(BOARDS)}, not {cfg.board!r}")
    if not (isinstance(cfg.clock_mhz, (int, float)) and cfg.clock_mhz > 0):
        raise ConfigError(f"clock_mhz must be a positive number, not {cfg.clock_mhz!r}")


#: Fewest clock cycles per UART bit the link's receiver samples with (it takes the middle of a bit).
MIN_CLOCKS_PER_BIT = 4
#: Largest difference between the UART's bit time and ``1/link_baud`` (the far end adds its own).
MAX_BAUD_ERROR = 0.02


def _link(cfg):
    baud = cfg.link_baud
    if not isinstance(baud, int) or isinstance(baud, bool) or baud < 1:
        raise ConfigError(f"link_baud must be a positive integer, not {baud!r}")
    exact = cfg.clock_mhz * 1e6 / baud
    if exact < MIN_CLOCKS_PER_BIT:
        raise ConfigError(f"link_baud must be at most clock_mhz / {MIN_CLOCKS_PER_BIT} = "
                          f"{int(cfg.clock_mhz * 1e6 // MIN_CLOCKS_PER_BIT)} baud, not {baud}")
    error = abs(cfg.link_clocks_per_bit / exact - 1)
    if error > MAX_BAUD_ERROR:
        raise ConfigError(f"link_baud {baud} is {100 * error:.1f}% off a whole number of cycles at "
                          f"clock_mhz = {cfg.clock_mhz} (limit {100 * MAX_BAUD_ERROR:.0f}%)")


def _widths(cfg):
    if cfg.act_bits < 2:
        raise ConfigError(f"act_bits must be at least 2 for a signed value, not {cfg.act_bits}")
    if not 1 <= cfg.act_msb_bits < cfg.act_bits:
        raise ConfigError(f"act_msb_bits must be in 1..act_bits-1 = 1..{cfg.act_bits - 1}, "
                          f"not {cfg.act_msb_bits}")
    if cfg.act_frac >= cfg.act_bits:
        raise ConfigError(f"act_frac must be below act_bits = {cfg.act_bits}, not {cfg.act_frac}")
    # A product of two act_bits values needs 2 * act_bits bits (min * min is +2**(2*act_bits - 2));
    # a sum of head_dim of them needs ceil(log2(head_dim)) more to never wrap.
    need = 2 * cfg.act_bits + (bits_for(cfg.head_dim - 1) if cfg.head_dim > 1 else 0)
    if cfg.acc_bits < need:
        raise ConfigError(f"acc_bits must be at least {need} to accumulate {cfg.head_dim} products of "
                          f"{cfg.act_bits}-bit values, not {cfg.acc_bits}")
    if not 2 <= cfg.score_bits <= 32:
        raise ConfigError(f"score_bits must be in 2..32, not {cfg.score_bits}")
    # P·V: a row's rounded probabilities (score_bits - 1 fraction bits) add up to less than
    # 1 + max_tokens LSBs, so |sum_j p_j v_j| < 2**(act_bits-1) * (2**(score_bits-1) + max_tokens).
    pv_bound = (1 << (cfg.act_bits - 1)) * ((1 << (cfg.score_bits - 1)) + cfg.max_tokens)
    if pv_bound >= 1 << (cfg.acc_bits - 1):
        raise ConfigError(f"acc_bits must be at least {pv_bound.bit_length() + 1} to accumulate P·V "
                          f"over {cfg.max_tokens} tokens, not {cfg.acc_bits}")


def _topk(cfg):
    p = cfg.topk_comparators
    if not 1 <= p <= MAX_TOPK_COMPARATORS:
        raise ConfigError(f"topk_comparators must be in 1..{MAX_TOPK_COMPARATORS}, not {p}")
    if cfg.topk_stream_lanes % p:
        raise ConfigError(f"topk_comparators ({p}) must divide topk_stream_lanes "
                          f"({cfg.topk_stream_lanes})")
    pairs = cfg.topk_pair_tokens
    if not isinstance(pairs, int) or isinstance(pairs, bool) or not 0 <= pairs <= MAX_TOPK_PAIR_TOKENS:
        raise ConfigError(f"topk_pair_tokens must be in 0..{MAX_TOPK_PAIR_TOKENS} (its comparators grow "
                          f"as the square), not {pairs!r}")


def _fits_board(cfg):
    spec = cfg.board_spec
    if cfg.estimated_dsps() > spec.dsps:
        raise ConfigError(f"pe_rows x pe_cols = {cfg.pe_rows} x {cfg.pe_cols} needs "
                          f"{cfg.estimated_dsps()} multipliers, more than the {spec.dsps} of board "
                          f"{spec.name}")
    if cfg.estimated_brams() > spec.brams:
        raise ConfigError(f"max_tokens = {cfg.max_tokens} with topk_comparators = "
                          f"{cfg.topk_comparators} needs up to {cfg.estimated_brams()} block RAMs, more "
                          f"than the {spec.brams} of board {spec.name}")


def _fraction(name, value, low_open=True):
    """``value`` must be a number in (0, 1] (``low_open``) or [0, 1]."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 1
    ok = ok and (value > 0 if low_open else value >= 0)
    if not ok:
        raise ConfigError(f"{name} must be a number in {'(0' if low_open else '[0'}, 1], not {value!r}")


def _algorithm(cfg):
    for name in ("token_keep", "head_keep"):
        schedule = getattr(cfg, name)
        if not isinstance(schedule, tuple) or len(schedule) not in (1, cfg.layers):
            raise ConfigError(f"{name} must be a tuple of 1 or layers = {cfg.layers} keep ratios, "
                              f"not {schedule!r}")
        for layer, ratio in enumerate(schedule):
            _fraction(f"{name}[{layer}]", ratio)
    _fraction("value_keep", cfg.value_keep)
    _fraction("static_mask_density", cfg.static_mask_density)
    _fraction("static_dense_threshold", cfg.static_dense_threshold, low_open=False)
    if cfg.recompute_threshold is not None:
        _fraction("recompute_threshold", cfg.recompute_threshold, low_open=False)
    t, top = cfg.dynatran_threshold, cfg.act_format.max / (1 << cfg.act_format.frac)
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= top):
        raise ConfigError(f"dynatran_threshold must be a number in [0, {top}] (the largest act value), "
                          f"not {t!r}")


#: Widest importance score the pruning controller ranks (its top-k comparators and accumulator
#: adders grow with it; beyond this they no longer close timing as one pipeline stage).
MAX_IMPORTANCE_BITS = 40


#: Width of the attention core's fetch counters (plane-row requests issued, responses received). A
#: pending row is released once the responses pass its own request, judged by the sign of their
#: difference, which holds while fewer than ``2**(FETCH_SEQ_BITS - 1)`` responses arrive in one head:
#: each token's Q, K and V rows, MSB and LSB planes, at most once a head (hw/attention/fetch.py).
FETCH_SEQ_BITS = 16
#: Most tokens the fetch counters order without wrapping.
MAX_TOKENS = ((1 << (FETCH_SEQ_BITS - 1)) - 1) // 6


def _fetch(cfg):
    if cfg.max_tokens > MAX_TOKENS:
        raise ConfigError(f"max_tokens must be at most {MAX_TOKENS} (6 plane rows a token through the "
                          f"attention core's {FETCH_SEQ_BITS}-bit fetch counters), not {cfg.max_tokens}")


def _importance(cfg):
    if cfg.importance_bits > MAX_IMPORTANCE_BITS:
        raise ConfigError(f"importance_bits (from max_tokens = {cfg.max_tokens}, heads = {cfg.heads}, "
                          f"layers = {cfg.layers}, score_bits, head_dim and act_bits) must be at most "
                          f"{MAX_IMPORTANCE_BITS}, not {cfg.importance_bits}")
    if cfg.heads > cfg.max_tokens:
        raise ConfigError(f"heads must be at most max_tokens = {cfg.max_tokens} (the controller ranks "
                          f"heads on its token top-k engine), not {cfg.heads}")


_RULES = [
    _positive("max_tokens", "heads", "head_dim", "act_bits", "act_msb_bits", "acc_bits", "score_bits",
              "pe_rows", "pe_cols", "topk_comparators", "topk_stream_lanes"),
    _board, _link, _widths, _topk, _fits_board, _fetch,
    _positive("layers"), _algorithm, _importance,
]


def check_topk_run(cfg: AccelConfig, n, k):
    """Validate the runtime parameters of one top-k run: ``1 <= n <= max_tokens``, ``0 <= k <= n``."""
    if not isinstance(n, int) or not 1 <= n <= cfg.max_tokens:
        raise ConfigError(f"n must be in 1..max_tokens = 1..{cfg.max_tokens}, not {n!r}")
    if not isinstance(k, int) or not 0 <= k <= n:
        raise ConfigError(f"k must be in 0..n = 0..{n}, not {k!r}")


_BASE = AccelConfig()

PRESETS = {
    "tiny": dataclasses.replace(
        _BASE, name="tiny", board="icebreaker", clock_mhz=12.0, max_tokens=64, heads=2, head_dim=16,
        act_bits=8, act_msb_bits=6, act_frac=4, acc_bits=20, score_bits=12,
        pe_rows=2, pe_cols=2, topk_comparators=4, topk_stream_lanes=4,
        # The iCEBreaker's UP5K has no room for 120 comparators beside the engine.
        topk_pair_tokens=0),
    "default": _BASE,
    # 8 fraction bits (range +-8) leave the 8-bit MSB planes 4 fraction bits. MiniLM's Q and K
    # reach +-12.1 in layer 0, so a few outliers saturate, which costs the sentence embeddings less
    # than the MSB precision that act_frac 7 (+-16) or 6 (+-32) gives up (spattn eval).
    "minilm": dataclasses.replace(
        _BASE, name="minilm", max_tokens=256, heads=12, head_dim=32, act_frac=8, pe_rows=8, pe_cols=8,
        # nextpnr closes the accelerator at 44 MHz (reports/accelerator_pnr.md); the PLL makes 40,
        # 20 cycles per bit at 2 MBd.
        clock_mhz=40.0, link_baud=2_000_000,
        # Its only top-k engine is the pruning controller's, whose selections are a few hundred of
        # a layer's million cycles: 120 comparators of 31-bit importance would buy nothing.
        topk_pair_tokens=0),
}


def preset(name) -> AccelConfig:
    """The named preset; an unknown name raises :class:`ConfigError` listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"preset must be one of {sorted(PRESETS)}, not {name!r}") from None


# --- PE array: on-chip operand buffers and the limits of one matmul run ---------------------------

def pe_buffer_depths(cfg: AccelConfig):
    """Rows of each PE-array operand bank: ``(a_depth, b_depth)``.

    The A buffer has ``pe_rows`` banks and holds ``ceil(m / pe_rows) * k`` rows (output-stationary)
    or ``ceil(k / pe_rows) * m`` rows (weight-stationary); the B buffer has ``pe_cols`` banks and
    holds ``k * ceil(n / pe_cols)`` rows. They are sized for the attention products in either
    dataflow: Q·Kᵀ (``max_tokens x head_dim`` by ``head_dim x max_tokens``) and P·V for a block of
    ``pe_rows`` queries (``pe_rows x max_tokens`` by ``max_tokens x head_dim``).
    """
    t, d, r, c = cfg.max_tokens, cfg.head_dim, cfg.pe_rows, cfg.pe_cols
    return max(-(-t // r) * d, -(-d // r) * t, -(-t // r) * r), max(d * -(-t // c), t * -(-d // c))


def check_matmul_run(cfg: AccelConfig, m, k, n, threshold=0):
    """Validate one PE-array run ``(m x k) @ (k x n)`` with an integer DynaTran ``threshold``.

    Every dimension must be in ``1..max_tokens``, the operands must fit the on-chip buffers
    (:func:`pe_buffer_depths`) and the threshold must fit ``act_bits`` unsigned bits.
    """
    for name, value in (("m", m), ("k", k), ("n", n)):
        if not isinstance(value, int) or not 1 <= value <= cfg.max_tokens:
            raise ConfigError(f"{name} must be in 1..max_tokens = 1..{cfg.max_tokens}, not {value!r}")
    a_depth, b_depth = pe_buffer_depths(cfg)
    a_rows = max(-(-m // cfg.pe_rows) * k, -(-k // cfg.pe_rows) * m)    # either dataflow's layout
    if a_rows > a_depth:
        raise ConfigError(f"m x k = {m} x {k} needs {a_rows} rows of the A buffer, more than its {a_depth}")
    if k * -(-n // cfg.pe_cols) > b_depth:
        raise ConfigError(f"k x n = {k} x {n} needs {k * -(-n // cfg.pe_cols)} rows of the B buffer, "
                          f"more than its {b_depth}")
    if not isinstance(threshold, int) or not 0 <= threshold < 1 << cfg.act_bits:
        raise ConfigError(f"threshold must be in 0..{(1 << cfg.act_bits) - 1}, not {threshold!r}")


__all__ += ["pe_buffer_depths", "check_matmul_run"]
