"""P·V feed: the walk list of a block against its V rows, one chunk of head dimensions at a time."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .common import Geometry, ReadPort, block_layout, chunk_bits, chunk_operands, raw_chunks
from .fetch import item_layout, plane_pair_layout
from .grid import pv_step_layout
from .merge import walk_entry_layout
from .qk_feed import chunk_macs

__all__ = ["PVFeed"]


class PVFeed(wiring.Component):
    """For each chunk ``t`` of ``C`` head dimensions, walks the block's walk list and sends one
    grid step per entry: the entry's probabilities (one per row) against chunk ``t`` of the
    entry's V row, at the block's precision, DynaTran applied. While the merge is still writing
    the list, an entry is walked once the fetch unit has released its V item.

    Members
    -------
    block : In(:func:`block_layout`), dynatran : In(act_bits)
    walk : In(1)
        Start the block (the grid is ours).
    entries : In(count), finished : In(1)
        The merge's progress on the block's walk list.
    walk_read : Out(:class:`ReadPort` of :func:`walk_entry_layout`)
    v_items : In(stream of items)
        Released V items, one per entry, in order (always taken).
    v_read : Out(:class:`ReadPort` of plane pairs)
    step : Out(stream of :func:`pv_step_layout`)
    walked : Out(1)
        One cycle when the block's last step is sent (once the walk list is known to be empty, for
        a block with no final row).
    skipped : Out(1)
        With ``walked``: the walk list was empty, no step was sent.
    busy : Out(1)

    Latency 4 cycles from an entry to its step; one step per cycle.
    """

    def __init__(self, geo: Geometry):
        self.geo = geo
        super().__init__({
            "block": In(block_layout(geo.cfg)), "dynatran": In(geo.cfg.act_bits),
            "walk": In(1), "entries": In(geo.count), "finished": In(1),
            "walk_read": Out(ReadPort(geo.T, walk_entry_layout(geo))),
            "v_items": In(stream.Signature(item_layout(geo))),
            "v_read": Out(ReadPort(geo.T, plane_pair_layout(geo))),
            "step": Out(stream.Signature(pv_step_layout(geo))),
            "walked": Out(1), "skipped": Out(1), "busy": Out(1),
        })

    def elaborate(self, platform):
        geo = self.geo
        m = Module()
        R, W = geo.R, geo.W
        block = self.block
        released = Signal(geo.count)
        m.d.comb += self.v_items.ready.eq(1)
        with m.If(self.v_items.valid):
            m.d.sync += released.eq(released + 1)

        walking = Signal()
        m.d.comb += self.busy.eq(walking)
        chunk = Signal(range(max(2, W)))
        entry = Signal(geo.count)
        # an entry may go once its V rows are on chip and it is known whether it is the last one
        known = self.finished & (released == self.entries)
        ready = (entry < released) & ((entry + 1 < released) | known)
        last = known & (entry + 1 == self.entries)
        issue = Signal()
        m.d.comb += [issue.eq(walking & ready), self.walk_read.addr.eq(entry)]
        s1_valid, s1_first, s1_last, s1_chunk, s1_end = Signal(), Signal(), Signal(), Signal(range(max(2, W))), Signal()
        m.d.sync += [s1_valid.eq(issue), s1_first.eq(entry == 0), s1_last.eq(last), s1_chunk.eq(chunk),
                     s1_end.eq(last & (chunk == W - 1))]
        with m.If(issue):
            with m.If(last):
                m.d.sync += [entry.eq(0), chunk.eq(chunk + 1)]
                with m.If(chunk == W - 1):
                    m.d.sync += walking.eq(0)
            with m.Else():
                m.d.sync += entry.eq(entry + 1)
        # an empty walk list (no final row in the block) ends the walk without a step
        empty = walking & known & (self.entries == 0)
        with m.If(self.walk):
            m.d.sync += [walking.eq(1), entry.eq(0), chunk.eq(0)]
        with m.If(empty):
            m.d.sync += walking.eq(0)

        # S1: the entry; its V row is read.  S2: the V row.
        entry_data = self.walk_read.data
        m.d.comb += self.v_read.addr.eq(entry_data.key)
        s2_valid, s2_first, s2_last, s2_chunk, s2_end = Signal(), Signal(), Signal(), Signal(range(max(2, W))), Signal()
        s2_prob = Signal.like(entry_data.prob)
        m.d.sync += [s2_valid.eq(s1_valid), s2_first.eq(s1_first), s2_last.eq(s1_last),
                     s2_chunk.eq(s1_chunk), s2_end.eq(s1_end), s2_prob.eq(entry_data.prob)]
        # S3: the chunk's raw planes in registers; the step goes out with them as operands
        raw = raw_chunks(geo, self.v_read.data).word_select(s2_chunk[:max(1, (W - 1).bit_length())],
                                                           chunk_bits(geo))
        s3_valid, s3_first, s3_last, s3_chunk, s3_end = (Signal(), Signal(), Signal(),
                                                         Signal(range(max(2, W))), Signal())
        s3_prob, s3_raw = Signal.like(s2_prob), Signal(chunk_bits(geo))
        m.d.sync += [s3_valid.eq(s2_valid), s3_first.eq(s2_first), s3_last.eq(s2_last),
                     s3_chunk.eq(s2_chunk), s3_end.eq(s2_end), s3_prob.eq(s2_prob), s3_raw.eq(raw)]
        step = self.step.payload
        valid_rows = sum(block.valid[r] for r in range(R))
        m.d.comb += [self.step.valid.eq(s3_valid), step.p.eq(s3_prob), step.first.eq(s3_first),
                     step.last.eq(s3_last), step.tag.chunk.eq(s3_chunk), step.tag.end.eq(s3_end),
                     step.tag.key.eq(0),
                     step.macs.eq(chunk_macs(m, geo, valid_rows, s3_chunk)),
                     step.v.eq(chunk_operands(m, geo, s3_raw, block.full, self.dynatran, "v_chunk"))]
        m.d.comb += [self.walked.eq(empty | (s3_valid & s3_end)), self.skipped.eq(empty)]
        with m.If(self.walked):
            m.d.sync += released.eq(Mux(self.v_items.valid, 1, 0))
        return m
