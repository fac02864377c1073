"""The attention core: its units joined by streams and read ports."""

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from spattn.config import AccelConfig

from .common import (Geometry, attention_command_layout, mask_layout, mask_request_layout,
                     mem_request_layout, mem_response_layout, out_layout, probs_layout)
from .fetch import FetchUnit
from .grid import MacGrid
from .masks import MaskUnit
from .merge import KeptMerge
from .output import OutputUnit
from .pv_feed import PVFeed
from .qk_feed import QKFeed
from .scans import KeyScan, QueryScan
from .schedule import Scheduler
from .scores import ScoreUnit
from .select import ValueSelector
from .softmax_unit import SoftmaxUnit

__all__ = ["AttentionCore"]


class AttentionCore(wiring.Component):
    """One head of attention over ``n`` tokens, bit-exact with
    :func:`spattn.sim.golden.attention_core.attention_head`.

    The queries go in blocks of R = ``pe_rows`` through a pipeline of units (each in its own file,
    each with its contract): the :class:`~.schedule.Scheduler` cuts the head into blocks; the
    :class:`~.masks.MaskUnit` loads their static-mask rows; :class:`~.scans.QueryScan` and
    :class:`~.scans.KeyScan` turn them into work items that the :class:`~.fetch.FetchUnit` lets
    through once their plane rows are on chip; the :class:`~.qk_feed.QKFeed` streams keys past the
    block's query rows into the R x C :class:`~.grid.MacGrid`; the :class:`~.scores.ScoreUnit`
    scales the sums into the score bank (scores never leave the chip); the
    :class:`~.softmax_unit.SoftmaxUnit` makes probabilities and sends unconfident rows back for
    recomputation from both planes (progressive quantization); the
    :class:`~.select.ValueSelector` and :class:`~.merge.KeptMerge` decide which V rows each row
    keeps (local value pruning) and list them; the :class:`~.pv_feed.PVFeed` runs P·V on the same
    grid and the :class:`~.output.OutputUnit` rounds and sends the rows. The grid alternates
    between Q·Kᵀ of one block and P·V of the previous one, so softmax and selection of a block
    overlap Q·Kᵀ of the next, and fetching overlaps everything.

    Members
    -------
    cmd : In(stream of :func:`attention_command_layout`)
        One beat starts a head. ``n`` in ``1..max_tokens``. ``causal``: key ``j`` is present for
        query ``i`` only if ``j <= i``. ``masked``: ``mask`` rows give each query's keys.
        ``progressive``: scores first from the MSB planes, then rows whose maximum probability is
        below ``threshold`` (prob LSBs; ``2**prob.bits`` recomputes every row) again from both
        planes; without it every row is computed once from both planes. ``value_keep``: the
        fraction (``VALUE_KEEP_FRAC`` fraction bits) of each row's present keys whose V rows it
        uses (:func:`spattn.formats.kept_count`; ties to the lower key). ``dynatran``: Q, K and V
        values with ``|x| < dynatran`` (stored units) count as 0.
    mask_req : Out(stream of :func:`mask_request_layout`)
        With ``masked``: the query rows whose mask the core needs, each time a block computes
        them (a recomputed row is asked for again).
    mask : In(stream of :func:`mask_layout`)
        One beat per ``mask_req`` beat, in order. Every row must have a present key.
    mem_req : Out(stream of :func:`mem_request_layout`)
        Plane rows the core needs; each (tensor, plane, row) is requested at most once per head.
    mem_resp : In(stream of :func:`mem_response_layout`)
        One beat per request, in request order, after any latency.
    probs : Out(stream of :func:`probs_layout`)
        Final probabilities (for token importance), a block's keys ``0 .. n_keys - 1`` in order,
        one beat per key for the block's rows at once; blocks in the order they are computed.
    out : Out(stream of :func:`out_layout`)
        Each row's P·V output (for the next layer) and its L1 magnitude (for head importance),
        once; rows in the order their blocks are computed (recomputed rows after the others).
        ``probs`` and ``out`` are independent streams (a row's ``out`` may come before the last
        ``probs`` beats of its block when ``probs`` is back-pressured).
    busy : Out(1)
        High from the accepted command until the last ``out`` beat and the last ``probs`` beat are
        taken (every block's softmax ends before its outputs, so no ``probs`` beat follows).
    busy_cycles, bytes_fetched, rows_recomputed, pe_busy_cycles, pe_macs : Out(32) each
        Counters of the current (or last) head, cleared by a command: cycles while busy, bytes of
        memory responses (:func:`spattn.formats.plane_row_bytes` a plane row), rows computed a
        second time at full precision, grid steps, and their multiply-accumulates on real rows
        and head dimensions (:func:`spattn.sim.golden.core_schedule.core_schedule`).

    Latency and throughput
    ----------------------
    A block costs the grid ``W * n_keys`` cycles of Q·Kᵀ and ``W * kept`` of P·V (``W =
    ceil(head_dim / pe_cols)``, ``kept`` the keys some final row of the block keeps), and the grid
    is kept busy while the softmax, selection and merge of a block take less than the next block's
    Q·Kᵀ. ``spattn bench attention`` measures whole heads (README).
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        self.geo = Geometry.of(cfg)
        super().__init__({
            "cmd": In(stream.Signature(attention_command_layout(cfg))),
            "mask_req": Out(stream.Signature(mask_request_layout(cfg))),
            "mask": In(stream.Signature(mask_layout(cfg))),
            "mem_req": Out(stream.Signature(mem_request_layout(cfg))),
            "mem_resp": In(stream.Signature(mem_response_layout(cfg))),
            "probs": Out(stream.Signature(probs_layout(cfg))),
            "out": Out(stream.Signature(out_layout(cfg))),
            "busy": Out(1),
            "busy_cycles": Out(32), "bytes_fetched": Out(32), "rows_recomputed": Out(32),
            "pe_busy_cycles": Out(32), "pe_macs": Out(32),
        })

    def elaborate(self, platform):
        geo = self.geo
        m = Module()
        m.submodules.schedule = sched = Scheduler(geo)
        m.submodules.fetch = fetch = FetchUnit(geo)
        m.submodules.masks = masks = MaskUnit(geo)
        m.submodules.query_scan = qscan = QueryScan(geo)
        m.submodules.key_scan = kscan = KeyScan(geo)
        m.submodules.qk_feed = qk = QKFeed(geo)
        m.submodules.grid = grid = MacGrid(geo)
        m.submodules.scores = scores = ScoreUnit(geo)
        m.submodules.softmax = sm = SoftmaxUnit(geo)
        m.submodules.select = vs = ValueSelector(geo)
        m.submodules.merge = merge = KeptMerge(geo)
        m.submodules.pv_feed = pv = PVFeed(geo)
        m.submodules.output = out = OutputUnit(geo)
        head = sched.head

        # external streams
        connect(m, wiring.flipped(self.cmd), sched.cmd)
        connect(m, masks.mask_req, wiring.flipped(self.mask_req))
        connect(m, wiring.flipped(self.mask), masks.mask)
        connect(m, fetch.mem_req, wiring.flipped(self.mem_req))
        connect(m, wiring.flipped(self.mem_resp), fetch.mem_resp)
        connect(m, sm.probs, wiring.flipped(self.probs))
        connect(m, out.out, wiring.flipped(self.out))
        m.d.comb += [self.busy.eq(sched.busy | sm.probs.valid), self.busy_cycles.eq(sched.busy_cycles),
                     self.bytes_fetched.eq(fetch.bytes_fetched),
                     self.rows_recomputed.eq(sched.rows_recomputed),
                     self.pe_busy_cycles.eq(grid.busy_cycles), self.pe_macs.eq(grid.macs)]

        # head start
        m.d.comb += [fetch.start.eq(sched.start), fetch.n.eq(sched.cmd.payload.n),
                     grid.clear.eq(sched.start)]

        # masks and work items
        m.d.comb += [masks.go.eq(sched.mask_go), masks.block.eq(sched.mask_block),
                     masks.set.eq(sched.mask_set), masks.masked.eq(head.masked),
                     sched.mask_done.eq(masks.done),
                     qscan.go.eq(sched.qscan_go), qscan.block.eq(sched.qscan_block),
                     sched.qscan_idle.eq(qscan.idle),
                     kscan.go.eq(sched.kscan_go), kscan.block.eq(sched.kscan_block),
                     kscan.set.eq(sched.kscan_set), kscan.masked.eq(head.masked), kscan.causal.eq(head.causal),
                     sched.kscan_idle.eq(kscan.idle)]
        connect(m, kscan.union_read, masks.union_read)
        connect(m, qscan.items, fetch.q_in)
        connect(m, kscan.items, fetch.k_in)
        connect(m, merge.v_items, fetch.v_in)

        # Q·Kᵀ
        connect(m, fetch.q_out, qk.q_items)
        connect(m, fetch.k_out, qk.k_items)
        connect(m, qk.q_read, fetch.q_read)
        connect(m, qk.k_read, fetch.k_read)
        connect(m, qk.step, grid.qk)
        m.d.comb += [qk.block.eq(sched.qk_block), qk.dynatran.eq(head.dynatran),
                     sched.qk_loaded.eq(qk.loaded), qk.walk.eq(sched.qk_walk),
                     sched.qk_walked.eq(qk.walked)]

        # scores, softmax, selection, merge
        for unit in (scores, out):
            m.d.comb += [unit.result_valid.eq(grid.result_valid), unit.result_qk.eq(grid.result_qk),
                         unit.result.eq(grid.result), unit.result_tag.eq(grid.result_tag)]
        connect(m, scores.present_read, masks.present_read)
        connect(m, sm.score_read, scores.score_read)
        m.d.comb += [scores.block.eq(sched.score_block), scores.set.eq(sched.score_set),
                     scores.causal.eq(head.causal), scores.masked.eq(head.masked),
                     sched.score_done.eq(scores.done),
                     sm.go.eq(sched.sm_go), sm.block.eq(sched.sm_block), sm.set.eq(sched.sm_set),
                     sm.row_max.eq(scores.row_max), sm.progressive.eq(head.progressive),
                     sm.threshold.eq(head.threshold), sm.pass2.eq(sched.pass2),
                     sched.sm_idle.eq(sm.idle), sched.sm_decided.eq(sm.decided),
                     sched.sm_final.eq(sm.final), sched.sm_done.eq(sm.done),
                     vs.go.eq(sm.pass2_start), vs.block.eq(sched.sm_block), vs.set.eq(sched.sm_set),
                     vs.value_keep.eq(head.value_keep), vs.present_count.eq(scores.present_count),
                     vs.sample.eq(sm.sample), vs.sample_valid.eq(sm.sample_valid),
                     sched.vs_done.eq(vs.done), sched.vs_idle.eq(vs.idle),
                     merge.go.eq(sched.merge_go), merge.block.eq(sched.merge_block),
                     merge.pruned.eq(vs.pruned), merge.kth.eq(vs.kth), merge.ties.eq(vs.ties),
                     sched.merge_idle.eq(merge.idle), sched.merge_done.eq(merge.done)]
        connect(m, sm.redo, sched.redo)
        connect(m, vs.prob_read, sm.select_read)
        connect(m, merge.prob_read, sm.merge_read)

        # P·V and output
        connect(m, fetch.v_out, pv.v_items)
        connect(m, pv.walk_read, merge.walk_read)
        connect(m, pv.v_read, fetch.v_read)
        connect(m, pv.step, grid.pv)
        m.d.comb += [pv.block.eq(sched.pv_block), pv.dynatran.eq(head.dynatran),
                     pv.walk.eq(sched.pv_walk), pv.entries.eq(merge.entries),
                     pv.finished.eq(merge.finished), sched.pv_walked.eq(pv.walked),
                     out.block.eq(sched.out_block), out.skip.eq(pv.skipped), sched.out_done.eq(out.done)]
        return m
