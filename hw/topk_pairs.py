"""All-pairs ranking: which of up to S keys are among the k largest, from every pairwise comparison."""

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from spattn.formats import bits_for

from .lanes import less_than, popcount

__all__ = ["PairRanks", "PAIR_RANKS_LATENCY"]

#: Cycles from ``keys``, ``present`` and ``k`` to the ``keep`` that follows from them.
PAIR_RANKS_LATENCY = 3


class PairRanks(wiring.Component):
    """Marks the ``k`` largest of the present keys; ties go to the lower position.

    Key ``i`` beats key ``j`` when it is present and larger, or equal and ``i < j``
    (:data:`spattn.formats.TOPK_TIE_BREAK`). Its rank is the number of keys that beat it, and it is
    kept when it is present and its rank is below ``k``: exactly ``min(k, present keys)`` keys.

    Members
    -------
    keys : In(array of ``size`` unsigned ``key_bits`` keys)
    present : In(``size``)
        Which keys take part; an absent key beats none and is never kept.
    k : In(unsigned ``count_bits``)
    keep : Out(``size``)
        The kept keys, ``PAIR_RANKS_LATENCY`` (3) cycles after the inputs they follow from.

    A fully pipelined function unit, one set of inputs per cycle: ``size (size - 1) / 2`` comparators
    (borrows of a subtraction, which map onto the carry chain alone; registered), a popcount of ``size - 1`` bits per key (registered), a comparison with ``k``
    (registered). The caller holds its inputs steady for the latency, or tracks them in flight.
    """

    def __init__(self, size, key_bits, count_bits):
        self.size = size
        super().__init__({
            "keys": In(data.ArrayLayout(unsigned(key_bits), size)),
            "present": In(size),
            "k": In(unsigned(count_bits)),
            "keep": Out(size),
        })

    def elaborate(self, platform):
        m = Module()
        size = self.size
        keys = [self.keys[i] for i in range(size)]
        # One comparator per pair i < j: whether j's key is larger. Otherwise i beats j (i is the
        # lower position, so it also wins the tie).
        larger = {}
        for i in range(size):
            for j in range(i + 1, size):
                larger[i, j] = Signal(name=f"larger_{i}_{j}")
                m.d.sync += larger[i, j].eq(less_than(keys[i], keys[j]))
        present = Signal(size)
        k = Signal.like(self.k)
        m.d.sync += [present.eq(self.present), k.eq(self.k)]

        rank_shape = unsigned(bits_for(max(size - 1, 1)))
        ranks = [Signal(rank_shape, name=f"rank{i}") for i in range(size)]
        present_late = Signal(size)
        k_late = Signal.like(self.k)
        m.d.sync += [present_late.eq(present), k_late.eq(k)]
        for i in range(size):
            beaten_by = [present[j] & (larger[i, j] if i < j else ~larger[j, i])
                         for j in range(size) if j != i]
            m.d.sync += ranks[i].eq(popcount(m, beaten_by, f"rank{i}") if beaten_by else 0)

        for i in range(size):
            m.d.sync += self.keep[i].eq(present_late[i] & (ranks[i] < k_late))
        return m
