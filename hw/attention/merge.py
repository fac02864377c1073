"""Kept-key merge: the keys some final row of a block keeps, in order, as the P·V walk list."""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .common import Geometry, KeyWalk, ReadPort, block_layout
from .fetch import item_layout
from .softmax_unit import prob_word_layout

__all__ = ["KeptMerge", "walk_entry_layout"]


def walk_entry_layout(geo: Geometry):
    """A key of the P·V walk and each block row's probability of it (0 where the row does not
    keep the key's V row)."""
    return data.StructLayout({"key": geo.index, "prob": data.ArrayLayout(unsigned(geo.fmt.prob.bits), geo.R)})


class KeptMerge(wiring.Component):
    """Walks a block's keys once and keeps, per final row, the keys its probability ranks among its
    kept ones: all present keys of a row that is not pruned; for a pruned row the keys with
    ``p > kth`` and the first ``ties`` keys with ``p == kth``. A key some row keeps becomes the next
    entry of the walk list (the P·V feed reads it) and an item for its V rows (MSB, and LSB at full
    precision) for the fetch unit.

    Members
    -------
    go : In(1), block : In(:func:`block_layout`)
    pruned : In(R), kth : In(array R of prob), ties : In(array R of count)
        From the value selector.
    prob_read : Out(:class:`ReadPort` of the prob bank)
    v_items : Out(stream of items)
    walk_read : In(:class:`ReadPort` of :func:`walk_entry_layout`)
    entries : Out(count)
        Entries written for the current block.
    finished : Out(1)
        The walk of the current block is over (until the next ``go``).
    done : Out(1)
        One cycle, as the walk ends.
    idle : Out(1)

    Latency: one key per cycle, less the stalls of ``v_items``; the first entry 3 cycles after ``go``.
    """

    def __init__(self, geo: Geometry):
        self.geo = geo
        prob = unsigned(geo.fmt.prob.bits)
        super().__init__({
            "go": In(1), "block": In(block_layout(geo.cfg)),
            "pruned": In(geo.R), "kth": In(data.ArrayLayout(prob, geo.R)),
            "ties": In(data.ArrayLayout(geo.count, geo.R)),
            "prob_read": Out(ReadPort(geo.T, prob_word_layout(geo))),
            "v_items": Out(stream.Signature(item_layout(geo))),
            "walk_read": In(ReadPort(geo.T, walk_entry_layout(geo))),
            "entries": Out(geo.count), "finished": Out(1, init=1), "done": Out(1), "idle": Out(1),
        })

    def elaborate(self, platform):
        geo = self.geo
        m = Module()
        R = geo.R
        block = Signal(block_layout(geo.cfg))
        advance = Signal()
        walk_keys = KeyWalk(m, geo, self.go, block.n_keys, advance)
        walking, s1_valid, s1_key, s1_last = (walk_keys.walking, walk_keys.s1_valid, walk_keys.s1_key,
                                              walk_keys.s1_last)
        m.d.comb += [self.prob_read.addr.eq(walk_keys.key), self.prob_read.en.eq(advance)]
        with m.If(self.go):
            m.d.sync += [block.eq(self.block), self.entries.eq(0), self.finished.eq(0)]

        # S1: the prob-bank word; which rows keep the key.  S2: the entry and its V item, registered
        word = self.prob_read.data
        equal_seen = [Signal(geo.count, name=f"equal_seen{r}") for r in range(R)]
        kept, equal = [], []
        for r in range(R):
            p = word.prob[r]
            is_equal = word.present[r] & (p == self.kth[r])
            kept.append(word.present[r] & (~self.pruned[r] | (p > self.kth[r]) |
                                           (is_equal & (equal_seen[r] < self.ties[r]))))
            equal.append(is_equal)
        s2_valid, s2_any, s2_key, s2_last = Signal(), Signal(), Signal(geo.index), Signal()
        s2_prob = Signal(data.ArrayLayout(unsigned(geo.fmt.prob.bits), R))
        s2_free = Signal()
        m.d.comb += [s2_free.eq(~s2_valid | ~s2_any | self.v_items.ready), advance.eq(~s1_valid | s2_free),
                     self.v_items.valid.eq(s2_valid & s2_any), self.v_items.payload.row.eq(s2_key),
                     self.v_items.payload.msb.eq(1), self.v_items.payload.lsb.eq(block.full),
                     self.v_items.payload.slot.eq(0), self.v_items.payload.last.eq(0)]
        with m.If(s2_free):
            m.d.sync += [s2_valid.eq(s1_valid), s2_any.eq(Cat(*kept).any()), s2_key.eq(s1_key),
                         s2_last.eq(s1_last)]
            for r in range(R):
                m.d.sync += s2_prob[r].eq(Mux(kept[r], word.prob[r], 0))
        with m.If(s1_valid & s2_free):
            for r in range(R):
                with m.If(equal[r]):
                    m.d.sync += equal_seen[r].eq(equal_seen[r] + 1)

        walk = memory.Memory(shape=walk_entry_layout(geo), depth=geo.T, init=[])
        m.submodules.walk = walk
        write, read = walk.write_port(), walk.read_port()
        s2_take = s2_valid & s2_free
        m.d.comb += [write.addr.eq(self.entries), write.data.key.eq(s2_key), write.data.prob.eq(s2_prob),
                     write.en.eq(s2_take & s2_any),
                     read.addr.eq(self.walk_read.addr), read.en.eq(self.walk_read.en),
                     self.walk_read.data.eq(read.data)]
        with m.If(s2_take):
            with m.If(s2_any):
                m.d.sync += self.entries.eq(self.entries + 1)
            with m.If(s2_last):
                m.d.sync += self.finished.eq(1)
                m.d.comb += self.done.eq(1)
        with m.If(self.go):
            m.d.sync += [seen.eq(0) for seen in equal_seen]
        m.d.comb += self.idle.eq(~walking & ~s1_valid & ~s2_valid)
        return m
