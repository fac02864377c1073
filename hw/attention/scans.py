"""Work generators of a block: its query rows and its keys, as items for the fetch unit."""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .common import Geometry, KeyWalk, ReadPort, block_layout
from .fetch import item_layout
from .masks import mask_word_layout

__all__ = ["QueryScan", "KeyScan"]


class QueryScan(wiring.Component):
    """One item per slot of a block: the query row's MSB plane unless the block recomputes rows
    (fetched with their first block), its LSB plane when the block is at full precision. Invalid
    slots ask for nothing but still pass, so the consumer sees ``R`` items per block.

    Members
    -------
    go : In(1), block : In(:func:`block_layout`)
    items : Out(stream of :func:`spattn.hw.attention.fetch.item_layout`)
        ``slot`` = the slot, ``last`` on slot ``R - 1``.
    idle : Out(1)

    Throughput one item per cycle.
    """

    def __init__(self, geo: Geometry):
        self.geo = geo
        super().__init__({"go": In(1), "block": In(block_layout(geo.cfg)),
                          "items": Out(stream.Signature(item_layout(geo))), "idle": Out(1)})

    def elaborate(self, platform):
        geo = self.geo
        m = Module()
        block = Signal(block_layout(geo.cfg))
        slot = Signal(range(geo.R + 1), init=geo.R)
        m.d.comb += self.idle.eq(slot == geo.R)
        with m.If(self.go):
            m.d.sync += [block.eq(self.block), slot.eq(0)]
        item = self.items.payload
        m.d.comb += [self.items.valid.eq(slot != geo.R), item.slot.eq(slot),
                     item.last.eq(slot == geo.R - 1)]
        for r in range(geo.R):
            with m.If(slot == r):
                m.d.comb += [item.row.eq(block.rows[r]),
                             item.msb.eq(block.valid[r] & ~block.recompute),
                             item.lsb.eq(block.valid[r] & block.full)]
        with m.If(self.items.valid & self.items.ready):
            m.d.sync += slot.eq(slot + 1)
        return m


class KeyScan(wiring.Component):
    """One item per key ``0 .. n_keys - 1`` of a block, in order: the key's K planes (MSB, and LSB
    at full precision) when some row of the block has it present (static and causal masks), else
    nothing.

    Members
    -------
    go : In(1), block : In(:func:`block_layout`), set : In(1), masked : In(1), causal : In(1)
    union_read : Out(:class:`ReadPort` of the mask unit)
    items : Out(stream of :func:`spattn.hw.attention.fetch.item_layout`)
        ``last`` on the block's last key.
    idle : Out(1)

    Latency 2 cycles; throughput one key per cycle.
    """

    def __init__(self, geo: Geometry):
        self.geo = geo
        super().__init__({"go": In(1), "block": In(block_layout(geo.cfg)), "set": In(1),
                          "masked": In(1), "causal": In(1),
                          "union_read": Out(ReadPort(2 * geo.NCH, mask_word_layout(geo))),
                          "items": Out(stream.Signature(item_layout(geo))), "idle": Out(1)})

    def elaborate(self, platform):
        geo = self.geo
        m = Module()
        C = geo.C
        block = Signal(block_layout(geo.cfg))
        bank_set, masked, causal = Signal(), Signal(), Signal()
        advance = Signal()
        walk_keys = KeyWalk(m, geo, self.go, block.n_keys, advance)
        scanning, s1_valid, s1_key, s1_last = (walk_keys.walking, walk_keys.s1_valid, walk_keys.s1_key,
                                               walk_keys.s1_last)
        m.d.comb += [advance.eq(~s1_valid | self.items.ready),
                     self.union_read.addr.eq(bank_set * geo.NCH + walk_keys.key // C),
                     self.union_read.en.eq(advance)]
        with m.If(self.go):
            m.d.sync += [block.eq(self.block), bank_set.eq(self.set), masked.eq(self.masked),
                         causal.eq(self.causal)]
        lane = s1_key % C
        present = 0
        for r in range(geo.R):
            present = present | (block.valid[r] & self.union_read.data[r].bit_select(lane, 1) &
                                 (~causal | (s1_key <= block.rows[r])))
        wanted = Signal()
        # without a static mask, keys 0 .. n_keys - 1 are present for some row, causal or not
        m.d.comb += wanted.eq(~masked | present)
        item = self.items.payload
        m.d.comb += [self.items.valid.eq(s1_valid), item.row.eq(s1_key), item.last.eq(s1_last), item.slot.eq(0),
                     item.msb.eq(wanted), item.lsb.eq(wanted & block.full)]
        m.d.comb += self.idle.eq(~scanning & ~s1_valid)
        return m
