"""The attention core's blocks and grid work for one head: the specification of its counters.

:class:`spattn.hw.attention.AttentionCore` computes a head in blocks of ``R = pe_rows`` query
rows: the rows in order, ``R`` at a time, then (with progressive quantization) the rows the
confidence check sent back, ``R`` at a time in ascending order, at full precision. The grid
computes Q·Kᵀ of a block over keys ``0 .. n_keys - 1`` and P·V over the keys some final row of the
block keeps, one step per chunk of ``C = pe_cols`` head dimensions. :func:`core_schedule` gives
these blocks and the grid steps and multiply-accumulates the core's ``pe_busy_cycles`` and
``pe_macs`` counters must equal.
"""

from dataclasses import dataclass

__all__ = ["Block", "core_schedule", "ideal_cycles"]


@dataclass(frozen=True)
class Block:
    """One block: its query rows, the rows final in it, its keys and its P·V keys."""
    rows: tuple
    final: tuple
    recompute: bool
    n_keys: int
    kept_keys: int


def core_schedule(cfg, n, causal, progressive, full_precision, kept):
    """Blocks, grid steps and MACs of one head. ``full_precision``: bool ``(n,)`` of the golden
    result (rows recomputed, with progressive quantization); ``kept``: bool ``(n, n)``, the V rows
    each row keeps. Returns ``(blocks, steps, macs)``."""
    R, C, d = cfg.pe_rows, cfg.pe_cols, cfg.head_dim
    chunks = -(-d // C)
    recomputed = [i for i in range(n) if progressive and bool(full_precision[i])]
    groups = [(tuple(range(i0, min(n, i0 + R))), False) for i0 in range(0, n, R)]
    groups += [(tuple(recomputed[i:i + R]), True) for i in range(0, len(recomputed), R)]
    blocks = []
    for rows, recompute in groups:
        final = rows if recompute else tuple(i for i in rows if i not in recomputed)
        n_keys = min(n, max(rows) + 1 if recompute else rows[0] + R) if causal else n
        kept_keys = sum(1 for j in range(n_keys) if any(bool(kept[i][j]) for i in final))
        blocks.append(Block(rows, final, recompute, n_keys, kept_keys))
    steps = sum(chunks * (b.n_keys + b.kept_keys) for b in blocks)
    macs = sum(len(b.rows) * d * (b.n_keys + b.kept_keys) for b in blocks)
    return blocks, steps, macs


def ideal_cycles(cfg, n):
    """Grid cycles of a dense head at full utilization: ``2 · n² · d / (R · C)``."""
    return 2 * n * n * cfg.head_dim / (cfg.pe_rows * cfg.pe_cols)
