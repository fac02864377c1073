"""Golden model of the tiled PE array: integer matmul with DynaTran pruning, and its tile counters.

``A`` (``m x k``, the activations) is pruned with the DynaTran threshold (``|a| < threshold`` becomes
0, :func:`spattn.formats.dynatran_zero`) and multiplied by ``B`` (``k x n``); the exact integer dot
products are fitted to the ``acc_bits`` accumulator format with the array's overflow rule
(:data:`spattn.formats.PE_ACC_OVERFLOW` unless another is given). The tile statistics are the values
the array's counters must show: which activation tiles are all zero and skipped, and how many
multiply-accumulates are performed.
"""

from dataclasses import dataclass

import torch

from spattn.config import AccelConfig, check_matmul_run
from spattn.formats import PE_ACC_OVERFLOW, Overflow, dynatran_zero

__all__ = ["matmul_int", "TileStats", "tile_stats", "ideal_cycles"]


def _operands(a, b, threshold, cfg):
    a = torch.as_tensor(a, dtype=torch.int64)
    b = torch.as_tensor(b, dtype=torch.int64)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"operands must be m x k and k x n matrices, "
                         f"not {tuple(a.shape)} and {tuple(b.shape)}")
    if cfg is not None:
        m, k = a.shape
        check_matmul_run(cfg, m, k, b.shape[1], threshold)
        for name, t in (("A", a), ("B", b)):
            if not cfg.act_format.contains(t):
                raise ValueError(f"{name} must lie in the {cfg.act_bits}-bit signed act format "
                                 f"[{cfg.act_format.min}, {cfg.act_format.max}]")
    return dynatran_zero(a, threshold), b


def matmul_int(a, b, threshold, cfg: AccelConfig, overflow: Overflow = PE_ACC_OVERFLOW):
    """``fit(dynatran_zero(A, threshold) @ B)`` in the accumulator format, as an ``int64`` tensor.

    The run is validated with :func:`spattn.config.check_matmul_run` and the operands against the
    act format; an impossible run raises :class:`spattn.config.ConfigError` or ``ValueError``.
    """
    a, b = _operands(a, b, threshold, cfg)
    exact = a @ b      # int64: |sum| <= max_tokens * 2**(2 * act_bits - 2), far inside 63 bits
    return cfg.acc_format.fit(exact, overflow)


@dataclass(frozen=True)
class TileStats:
    """What the PE array's counters show after one run (see :class:`spattn.hw.pe_array.PEArray`).

    * ``zero_tiles``: activation tiles (``pe_rows`` rows x ``k_tile`` columns of pruned A) all zero.
    * ``skipped_tiles``: tile passes skipped, ``zero_tiles`` times the ``ceil(n / pe_cols)`` output
      tiles of each row panel that would have used them.
    * ``macs``: multiply-accumulates on real (not padding) rows and columns in the tiles that run,
      zero activations in a non-skipped tile included.
    * ``mac_cycles``: array cycles that multiply: each non-skipped tile costs its column count per
      output tile.
    """
    zero_tiles: int
    skipped_tiles: int
    macs: int
    mac_cycles: int


def tile_stats(a, n, threshold, cfg: AccelConfig, k_tile=1, dataflow="output_stationary"):
    """The :class:`TileStats` of ``A`` (``m x k``) pruned with ``threshold``, times ``B`` with ``n`` columns.

    Output-stationary: activation tile ``(p, t)`` is rows ``p * pe_rows ..`` (padding rows past
    ``m`` count as zero) and columns ``t * k_tile ..`` (the last tile of a panel may be narrower) of
    the pruned A. Weight-stationary: the same with rows and columns of A exchanged (panels are
    ``pe_rows`` columns of A, tiles ``k_tile`` rows of such a panel).
    """
    if dataflow not in ("output_stationary", "weight_stationary"):
        raise ValueError(f"dataflow must be output_stationary or weight_stationary, not {dataflow!r}")
    a = dynatran_zero(a, threshold)
    if dataflow == "weight_stationary":
        a = a.T
    m, k = a.shape
    r, c = cfg.pe_rows, cfg.pe_cols
    col_tiles = -(-n // c)
    zero_tiles = macs = mac_cycles = 0
    for m0 in range(0, m, r):
        rows = min(r, m - m0)
        live_columns = 0
        for k0 in range(0, k, k_tile):
            width = min(k_tile, k - k0)
            if bool((a[m0:m0 + rows, k0:k0 + width] == 0).all()):
                zero_tiles += 1
            else:
                live_columns += width
        mac_cycles += live_columns * col_tiles
        macs += live_columns * rows * n      # each live position meets every column of B
    return TileStats(zero_tiles=zero_tiles, skipped_tiles=zero_tiles * col_tiles, macs=macs,
                     mac_cycles=mac_cycles)


def ideal_cycles(m, k, n, cfg: AccelConfig):
    """``m * k * n / (pe_rows * pe_cols)``: cycles of a perfectly used array on dense work."""
    return m * k * n / (cfg.pe_rows * cfg.pe_cols)
