"""Memory-traffic model: the Q, K, V bits an accelerator fetches from external memory in one layer.

Each head's K and V rows are fetched once per layer into on-chip buffers and reused by every query
(FLAT-style fusion; the score matrix never leaves the chip), Q rows once each. Every value is an
MSB plane of ``act_msb_bits`` and an LSB plane of ``act_bits - act_msb_bits``. Counted:

* only alive heads and alive tokens; a key no alive query's static mask selects is not fetched;
* a V row only if some query of its head keeps it (local value pruning);
* with progressive quantization, MSB planes always and LSB planes only for recomputed rows: their
  Q row, the K rows of the keys present in some recomputed row of the head (with a static mask,
  fewer than all fetched K rows), and the V rows those rows keep; without it, the full
  ``act_bits`` of everything fetched.

These are the rows the attention core requests (:func:`.attention_core.fetched_rows`).

DynaTran's zeros are not assumed to be compressed in memory: they save compute, not traffic.
The dense baseline fetches Q, K, V of every token and head at ``act_bits``.
"""

from dataclasses import dataclass, fields

__all__ = ["Traffic", "dense_traffic"]


@dataclass(frozen=True)
class Traffic:
    """Bits fetched, per tensor and plane."""
    q_msb: int = 0
    q_lsb: int = 0
    k_msb: int = 0
    k_lsb: int = 0
    v_msb: int = 0
    v_lsb: int = 0

    @property
    def bits(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    @property
    def bytes(self) -> float:
        return self.bits / 8

    def __add__(self, other: "Traffic") -> "Traffic":
        return Traffic(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def dense_traffic(tokens: int, heads: int, head_dim: int, act_bits: int) -> Traffic:
    """One dense layer: Q, K and V of every token and head at full precision (in the MSB fields)."""
    each = tokens * heads * head_dim * act_bits
    return Traffic(q_msb=each, k_msb=each, v_msb=each)
