"""Scheduler: the blocks of a head, the order of the units' work on them, and the head's counters."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .common import Geometry, attention_command_layout, block_layout

__all__ = ["Scheduler", "TABLE"]

#: Blocks in flight at once (from issue until their rows are out).
TABLE = 4


class Scheduler(wiring.Component):
    """Cuts a head into blocks and tells each unit when it may work on its next block.

    Blocks are the queries in order, ``R`` at a time (from MSB planes with progressive
    quantization, else at full precision), then blocks of the rows the softmax unit sent back for
    recomputation (at full precision, ``R`` at a time; a partial one once every block in order has
    been checked). Every unit works through the blocks in order; a block's description stays in a
    table of :data:`TABLE` entries until its rows are out. The order constraints, which make every
    buffer single- or double-buffered:

    * mask rows of block b load into set ``b % 2`` once the scores of block b - 2 are written;
    * the grid runs Q·Kᵀ of a block as soon as its rows are loaded, at most two blocks ahead of
      P·V, otherwise P·V of the oldest block whose walk list is being written and whose previous
      block's rows are out;
    * softmax pass 2 of block b waits for the merge of block b - 1 and the value selector;
    * the merge of block b waits for its value selection and the P·V walk of block b - 1.

    Members
    -------
    cmd : In(stream of :func:`attention_command_layout`)
    head : Out(:func:`attention_command_layout`)
        The running command.
    busy : Out(1), busy_cycles : Out(32), rows_recomputed : Out(32), start : Out(1)
    *_block : Out(:func:`block_layout`), *_set : Out(1)
        The block each unit works on, from the table.
    *_go, qk_walk, pv_walk, pass2 : Out(1)
    (unit progress inputs, see :meth:`elaborate`)
    redo : In(stream of row index)
    """

    UNITS = ("mask", "qscan", "kscan", "qk", "score", "sm", "merge", "pv", "out")

    def __init__(self, geo: Geometry):
        self.geo = geo
        blk = block_layout(geo.cfg)
        members = {
            "cmd": In(stream.Signature(attention_command_layout(geo.cfg))),
            "head": Out(attention_command_layout(geo.cfg)),
            "busy": Out(1), "busy_cycles": Out(32), "rows_recomputed": Out(32), "start": Out(1),
            "mask_go": Out(1), "mask_done": In(1),
            "qscan_go": Out(1), "qscan_idle": In(1),
            "kscan_go": Out(1), "kscan_idle": In(1),
            "qk_loaded": In(1), "qk_walk": Out(1), "qk_walked": In(1),
            "score_done": In(1),
            "sm_go": Out(1), "sm_idle": In(1), "sm_decided": In(1), "sm_final": In(geo.R),
            "sm_done": In(1), "pass2": Out(1),
            "vs_done": In(1), "vs_idle": In(1),
            "merge_go": Out(1), "merge_idle": In(1), "merge_done": In(1),
            "pv_walk": Out(1), "pv_walked": In(1),
            "out_done": In(1),
            "redo": In(stream.Signature(geo.index)),
        }
        for unit in self.UNITS:
            members[f"{unit}_block"] = Out(blk)
            members[f"{unit}_set"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform):
        geo = self.geo
        m = Module()
        R = geo.R
        count = lambda name: Signal(geo.block_bits, name=name)       # noqa: E731
        issued = count("issued")
        done = {unit: count(f"{unit}_count") for unit in self.UNITS}  # blocks each unit is past
        mask_loaded, vs_count, merge_count = count("mask_loaded"), count("vs_count"), count("merge_done")
        table = [Signal(block_layout(geo.cfg), name=f"table{i}") for i in range(TABLE)]
        for unit in self.UNITS:
            index = done[unit] % TABLE
            m.d.comb += [getattr(self, f"{unit}_block").eq(table[0]), getattr(self, f"{unit}_set").eq(done[unit][0])]
            for i in range(1, TABLE):
                with m.If(index == i):
                    m.d.comb += getattr(self, f"{unit}_block").eq(table[i])

        head = Signal(attention_command_layout(geo.cfg))
        m.d.comb += self.head.eq(head)
        running = Signal()
        m.d.comb += self.busy.eq(running)
        busy_cycles, recomputed = Signal(32), Signal(32)
        m.d.comb += [self.busy_cycles.eq(busy_cycles), self.rows_recomputed.eq(recomputed)]
        with m.If(running):
            m.d.sync += busy_cycles.eq(busy_cycles + 1)

        # ---- unit progress -----------------------------------------------------------------------
        for unit, pulse in (("mask", self.mask_go), ("qscan", self.qscan_go), ("kscan", self.kscan_go),
                            ("qk", self.qk_walked), ("score", self.score_done), ("sm", self.sm_done),
                            ("merge", self.merge_go), ("pv", self.pv_walked), ("out", self.out_done)):
            with m.If(pulse):
                m.d.sync += done[unit].eq(done[unit] + 1)
        for counter, pulse in ((mask_loaded, self.mask_done), (vs_count, self.vs_done),
                               (merge_count, self.merge_done)):
            with m.If(pulse):
                m.d.sync += counter.eq(counter + 1)
        mask_idle = done["mask"] == mask_loaded
        m.d.comb += [
            self.mask_go.eq(running & mask_idle & (done["mask"] < issued) & (done["mask"] < done["score"] + 2)),
            self.qscan_go.eq(running & self.qscan_idle & (done["qscan"] < issued)),
            self.kscan_go.eq(running & self.kscan_idle & (done["kscan"] < mask_loaded)),
            self.sm_go.eq(running & self.sm_idle & (done["sm"] < done["score"])),
            self.pass2.eq((merge_count >= done["sm"]) & self.vs_idle & (vs_count == done["sm"])),
            self.merge_go.eq(running & self.merge_idle & (done["merge"] < vs_count) &
                             (done["merge"] == done["pv"])),
        ]
        # the grid: one feed at a time
        grid_busy = Signal()
        qk_ok = self.qk_loaded & (done["qk"] < issued) & (done["qk"] < done["pv"] + 2)
        pv_ok = (done["pv"] < done["merge"]) & (done["out"] == done["pv"])
        with m.If(running & ~grid_busy):
            with m.If(qk_ok):
                m.d.comb += self.qk_walk.eq(1)
                m.d.sync += grid_busy.eq(1)
            with m.Elif(pv_ok):
                m.d.comb += self.pv_walk.eq(1)
                m.d.sync += grid_busy.eq(1)
        with m.If(self.qk_walked | self.pv_walked):
            m.d.sync += grid_busy.eq(0)

        # ---- blocks --------------------------------------------------------------------------------
        decided_in_order = count("decided_in_order")
        with m.If(self.sm_decided):
            entry = done["sm"] % TABLE
            for i in range(TABLE):
                with m.If(entry == i):
                    m.d.sync += table[i].final.eq(self.sm_final)
                    with m.If(~table[i].recompute):
                        m.d.sync += decided_in_order.eq(decided_in_order + 1)

        m.submodules.redo_rows = redo = SyncFIFOBuffered(width=geo.index.width, depth=geo.T)
        m.d.comb += [redo.w_data.eq(self.redo.payload), redo.w_en.eq(self.redo.valid),
                     self.redo.ready.eq(redo.w_rdy)]
        with m.If(self.redo.valid & self.redo.ready):
            m.d.sync += recomputed.eq(recomputed + 1)

        n = head.n
        first_row = Signal(range(geo.T + R + 1))
        in_order_total = count("in_order_total")
        staged = Signal(block_layout(geo.cfg))
        slot = Signal(range(R + 1))
        room = (issued - done["out"]) < TABLE
        start = Signal()
        m.d.comb += self.start.eq(start)

        def issue(block):
            for i in range(TABLE):
                with m.If(issued % TABLE == i):
                    m.d.sync += table[i].eq(block)
            m.d.sync += issued.eq(issued + 1)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.comb += start.eq(1)
                    m.d.sync += [head.eq(self.cmd.payload), running.eq(1), busy_cycles.eq(0),
                                 recomputed.eq(0), first_row.eq(0), issued.eq(0), mask_loaded.eq(0),
                                 vs_count.eq(0), merge_count.eq(0), decided_in_order.eq(0),
                                 in_order_total.eq((self.cmd.payload.n + R - 1) // R)]
                    m.d.sync += [counter.eq(0) for counter in done.values()]
                    m.next = "RUN"
            with m.State("RUN"):
                rows_left = n - first_row
                normal = Signal(block_layout(geo.cfg))
                for r in range(R):
                    m.d.comb += [normal.rows[r].eq(first_row + r), normal.valid[r].eq(rows_left > r)]
                m.d.comb += [normal.full.eq(~head.progressive), normal.recompute.eq(0), normal.final.eq(0),
                             normal.n_keys.eq(Mux(head.causal & (first_row + R < n), first_row + R, n))]
                all_checked = decided_in_order == in_order_total
                with m.If(first_row < n):
                    with m.If(room):
                        issue(normal)
                        m.d.sync += first_row.eq(first_row + R)
                with m.Elif((redo.level != 0) & ((redo.level >= R) | all_checked)):
                    with m.If(room):
                        m.d.sync += [staged.eq(0), slot.eq(0)]
                        m.next = "RECOMPUTE"
                with m.Elif(all_checked & (redo.level == 0) & (done["out"] == issued)):
                    m.d.sync += running.eq(0)
                    m.next = "IDLE"
            with m.State("RECOMPUTE"):
                # gather up to R rows to recompute into one block
                with m.If(redo.r_rdy & (slot < R)):
                    m.d.comb += redo.r_en.eq(1)
                    m.d.sync += slot.eq(slot + 1)
                    for r in range(R):
                        with m.If(slot == r):
                            m.d.sync += [staged.rows[r].eq(redo.r_data), staged.valid[r].eq(1)]
                    m.d.sync += staged.n_keys.eq(Mux(head.causal, redo.r_data + 1, n))
                with m.Elif((slot == R) | ((slot != 0) & all_checked & (redo.level == 0))):
                    block = Signal(block_layout(geo.cfg))
                    m.d.comb += [block.eq(staged), block.full.eq(1), block.recompute.eq(1)]
                    issue(block)
                    m.next = "RUN"
        return m
