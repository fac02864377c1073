"""Shapes, layouts and small helpers shared by the units of the attention core."""

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from spattn.config import AccelConfig
from spattn.formats import VALUE_KEEP_FRAC, AttentionFormats, bits_for

__all__ = ["TENSOR_Q", "TENSOR_K", "TENSOR_V", "PLANE_MSB", "PLANE_LSB", "Geometry",
           "attention_command_layout", "mem_request_layout", "mem_response_layout",
           "mask_request_layout", "mask_layout", "probs_layout", "out_layout", "block_layout",
           "ReadPort", "plane_lane_bits", "saturate", "operand", "raw_chunks", "chunk_bits",
           "chunk_operands", "KeyWalk"]

#: ``tensor`` field of a memory request.
TENSOR_Q, TENSOR_K, TENSOR_V = 0, 1, 2
#: ``plane`` field of a memory request.
PLANE_MSB, PLANE_LSB = 0, 1


@dataclass(frozen=True)
class Geometry:
    """The sizes every unit derives from the configuration, computed once.

    ``T`` tokens, ``d`` head dimensions, an ``R`` x ``C`` multiply-accumulate grid; a head row is
    ``W = ceil(d / C)`` chunks of ``C`` values; a row of ``T`` keys is ``NCH`` chunks of ``C``.
    """
    cfg: AccelConfig
    fmt: AttentionFormats
    T: int
    d: int
    R: int
    C: int
    W: int
    NCH: int
    M: int
    L: int
    block_bits: int
    operand_bits: int

    @classmethod
    def of(cls, cfg: AccelConfig) -> "Geometry":
        fmt = AttentionFormats.of(cfg)
        T, R, C = cfg.max_tokens, cfg.pe_rows, cfg.pe_cols
        # a head has at most ceil(T / R) blocks in order and as many blocks of recomputed rows
        blocks = 2 * -(-T // R) + 2
        return cls(cfg=cfg, fmt=fmt, T=T, d=cfg.head_dim, R=R, C=C, W=-(-cfg.head_dim // C),
                   NCH=-(-T // C), M=cfg.act_msb_bits, L=cfg.act_lsb_bits,
                   block_bits=bits_for(blocks),
                   # probabilities are the A operand of P·V: unsigned prob bits need one more as signed
                   operand_bits=max(cfg.act_bits, fmt.prob.bits + 1))

    @property
    def index(self):
        return unsigned(self.cfg.index_bits)

    @property
    def count(self):
        return unsigned(self.cfg.count_bits)


def attention_command_layout(cfg: AccelConfig):
    """One head: ``n`` tokens; masks; progressive quantization; value pruning; DynaTran."""
    fmt = AttentionFormats.of(cfg)
    return data.StructLayout({
        "n": unsigned(cfg.count_bits),
        "causal": 1,
        "masked": 1,
        "progressive": 1,
        "threshold": unsigned(fmt.prob.bits + 1),
        "value_keep": unsigned(VALUE_KEEP_FRAC + 1),
        "dynatran": unsigned(cfg.act_bits),
    })


def plane_lane_bits(cfg: AccelConfig):
    """Width of one value's lane in a memory response: the wider of the two planes."""
    return max(cfg.act_msb_bits, cfg.act_lsb_bits)


def mem_request_layout(cfg: AccelConfig):
    """Fetch one row (token ``row``) of one plane of Q, K or V of the head."""
    return data.StructLayout({"tensor": unsigned(2), "plane": 1, "row": unsigned(cfg.index_bits)})


def mem_response_layout(cfg: AccelConfig):
    """The ``head_dim`` values of the requested plane row, one per lane, in the lane's low bits
    (the MSB plane as two's complement ``act_msb_bits``, the LSB plane unsigned ``act_lsb_bits``)."""
    return data.StructLayout({"data": data.ArrayLayout(unsigned(plane_lane_bits(cfg)), cfg.head_dim)})


def mask_request_layout(cfg: AccelConfig):
    """The static-mask row of query ``row``, wanted on the ``mask`` stream."""
    return data.StructLayout({"row": unsigned(cfg.index_bits)})


def mask_layout(cfg: AccelConfig):
    """One query row of a static mask: bit ``j`` set = key ``j`` present."""
    return data.StructLayout({"keys": unsigned(cfg.max_tokens)})


def probs_layout(cfg: AccelConfig):
    """The final probabilities of one key for the ``pe_rows`` query rows of a block: lane ``r`` is
    query ``rows[r]``'s probability of key ``key`` when bit ``r`` of ``final`` is set, else 0."""
    fmt = AttentionFormats.of(cfg)
    return data.StructLayout({
        "key": unsigned(cfg.index_bits),
        "rows": data.ArrayLayout(unsigned(cfg.index_bits), cfg.pe_rows),
        "final": unsigned(cfg.pe_rows),
        "data": data.ArrayLayout(fmt.prob.shape, cfg.pe_rows),
        "last": 1,
    })


def out_layout(cfg: AccelConfig):
    """One output row, its L1 magnitude and whether it was computed at full precision."""
    fmt = AttentionFormats.of(cfg)
    return data.StructLayout({
        "row": unsigned(cfg.index_bits),
        "data": data.ArrayLayout(fmt.act.shape, cfg.head_dim),
        "magnitude": unsigned(bits_for(cfg.head_dim << (cfg.act_bits - 1))),
        "full_precision": 1,
    })


def block_layout(cfg: AccelConfig):
    """A block: up to ``pe_rows`` query rows computed together.

    ``rows``/``valid``: the queries (slot ``r`` holds query ``rows[r]`` when bit ``r`` of ``valid``
    is set); ``full``: from both planes (else MSB planes only); ``recompute``: a block of rows
    computed again at full precision; ``n_keys``: keys ``0 .. n_keys - 1`` get scores; ``final``:
    the rows whose results are final (set by the softmax unit's confidence check).
    """
    return data.StructLayout({
        "rows": data.ArrayLayout(unsigned(cfg.index_bits), cfg.pe_rows),
        "valid": unsigned(cfg.pe_rows),
        "full": 1,
        "recompute": 1,
        "n_keys": unsigned(cfg.count_bits),
        "final": unsigned(cfg.pe_rows),
    })


class ReadPort(wiring.Signature):
    """A synchronous memory read port seen from the reader: ``data`` is the word at the ``addr``
    of the previous cycle (``en`` low holds it)."""

    def __init__(self, depth, shape):
        super().__init__({"addr": Out(range(max(2, depth))), "en": Out(1, init=1), "data": In(shape)})


def saturate(value, fmt):
    """``value`` clamped to the range of the integer format ``fmt``."""
    return Mux(value > fmt.max, fmt.max, Mux(value < fmt.min, fmt.min, value))


def operand(msb, lsb, use_lsb, threshold, lsb_bits, bits):
    """The value a plane pair stands for as the grid sees it: the LSB plane reads as zeros unless
    ``use_lsb``, and DynaTran zeroes ``|x| < threshold`` (:func:`spattn.formats.dynatran_zero`)."""
    value = Cat(Mux(use_lsb, lsb, 0)[:lsb_bits], msb).as_signed()
    magnitude = Mux(value < 0, -value, value).as_unsigned()[:bits]
    return Mux(magnitude < threshold, 0, value)


def raw_chunks(geo, pair):
    """A plane-pair row as ``W`` chunks of ``C`` lanes, each lane its value's LSB plane then MSB
    plane, i.e. the stored value's bits (zeros past ``head_dim``): one flat value,
    ``chunk_bits(geo)`` bits a chunk."""
    zero_msb, zero_lsb = Const(0, geo.M), Const(0, geo.L)
    lanes = []
    for i in range(geo.W * geo.C):
        lanes += [pair.lsb[i], pair.msb[i]] if i < geo.d else [zero_lsb, zero_msb]
    return Cat(*lanes)


def chunk_bits(geo):
    return geo.C * (geo.M + geo.L)


def chunk_operands(m, geo, raw, full, threshold, name):
    """The ``C`` grid operands (see :func:`operand`) of one raw chunk (:func:`raw_chunks`)."""
    act = signed(geo.cfg.act_bits)
    chunk = Signal(data.ArrayLayout(act, geo.C), name=name)
    lane_bits = geo.M + geo.L
    for c in range(geo.C):
        lane = raw[c * lane_bits:(c + 1) * lane_bits]
        m.d.comb += chunk[c].eq(operand(lane[geo.L:].as_signed(), lane[:geo.L], full, threshold, geo.L,
                                        geo.cfg.act_bits))
    return chunk


class KeyWalk:
    """Keys ``0 .. n_keys - 1`` of a block, one per cycle while ``advance``, into a register stage
    ``s1`` a cycle behind ``key`` (so ``key`` addresses a synchronous read whose data is ``s1``'s).

    Built into the module ``m`` of its unit: ``KeyWalk(m, geo, go, n_keys, advance)``; ``walking``
    is high from ``go`` until the last key enters ``s1``.
    """

    def __init__(self, m, geo, go, n_keys, advance):
        self.key = Signal(geo.count)
        self.walking = Signal()
        self.s1_valid, self.s1_key, self.s1_last = Signal(), Signal(geo.index), Signal()
        with m.If(go):
            m.d.sync += [self.key.eq(0), self.walking.eq(1)]
        with m.Elif(self.walking & advance):
            m.d.sync += self.key.eq(self.key + 1)
            with m.If(self.key + 1 == n_keys):
                m.d.sync += self.walking.eq(0)
        with m.If(advance):
            m.d.sync += [self.s1_valid.eq(self.walking), self.s1_key.eq(self.key),
                         self.s1_last.eq(self.key + 1 == n_keys)]
