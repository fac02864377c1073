"""SpAtten-style top-k engine: quick-select by value bisection over P comparator lanes."""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spattn.config import AccelConfig
from spattn.formats import IntFormat, bits_for

from .lanes import compact, exclusive_prefix_counts, masked_reduce, popcount, wire

__all__ = ["TopKEngine", "topk_command_layout", "topk_indices_layout"]


def topk_command_layout(cfg: AccelConfig):
    """One run: rank ``n`` scores and keep the ``k`` largest."""
    return data.StructLayout({"n": unsigned(cfg.count_bits), "k": unsigned(cfg.count_bits)})


def topk_scores_layout(cfg: AccelConfig, score_bits=None):
    """``topk_stream_lanes`` signed scores, ``score_bits`` wide (the config's by default)."""
    return data.ArrayLayout(signed(score_bits or cfg.score_bits), cfg.topk_stream_lanes)


def topk_indices_layout(cfg: AccelConfig):
    """Up to P kept indices packed into lanes ``0 .. count - 1``; ``last`` marks the run's final beat."""
    p = cfg.topk_comparators
    return data.StructLayout({
        "index": data.ArrayLayout(unsigned(cfg.index_bits), p),
        "count": unsigned(bits_for(p)),
        "last": 1,
    })


class _LaneBuffer:
    """P single-lane memory banks that together hold rows of P scores (one row per address).

    Element ``e`` of a buffer lives in bank ``e % P`` at row ``e // P``, so a run of up to P
    consecutive elements starting anywhere touches each bank at most once: one write port per bank
    is enough to append a packed group of survivors at any fill level.
    """

    def __init__(self, m, name, cfg, score_shape):
        self.read, self.write = [], []
        for lane in range(cfg.topk_comparators):
            bank = memory.Memory(shape=score_shape, depth=cfg.topk_rows, init=[])
            m.submodules[f"{name}_bank{lane}"] = bank
            self.read.append(bank.read_port())
            self.write.append(bank.write_port())


class TopKEngine(wiring.Component):
    """Indices of the k largest of n signed scores, in ascending index order.

    Ties at the k-th largest value go to the lower index (:data:`spattn.formats.TOPK_TIE_BREAK`);
    the golden model is :func:`spattn.sim.golden.topk.topk_indices`.

    Members
    -------
    cmd : In(stream of :func:`topk_command_layout`)
        One beat starts a run. ``k`` larger than ``n`` is taken as ``n``; ``n = 0`` takes no scores.
        ``n`` must not exceed ``max_tokens`` (the golden model and host driver refuse it).
    scores : In(stream of ``topk_stream_lanes`` signed ``score_bits`` scores)
        ``score_bits`` is the config's unless the engine is built with another (the pruning
        controller ranks wider importance scores).
        ``ceil(n / topk_stream_lanes)`` beats per run; score ``i`` is lane ``i % lanes`` of beat
        ``i // lanes``; lanes past ``n`` in the last beat are ignored.
    indices : Out(stream of :func:`topk_indices_layout`)
        The kept indices, ascending, packed up to P per beat; ``last`` is set on the beat that
        completes the k indices. ``k = 0`` gives one beat with ``count = 0`` and ``last`` set.
    busy : Out(1)
        High from the accepted command until the last index beat is taken.

    Operation, with P = ``topk_comparators`` lanes and R = ceil(n / P) rows
    -----------------------------------------------------------------------
    * Load: every score is written to an input buffer, P per cycle (a beat of S lanes takes S/P
      cycles): R cycles when the input keeps up. The first selection round rides along: the
      scores are partitioned around the run's first score as they arrive, and the minimum and
      maximum are tracked.
    * Select: a round partitions the candidate set (all scores within a value interval) around a
      pivot, P lanes per cycle; the greater and the smaller candidates are packed (prefix-count
      compaction) into two other buffers while their counts and the missing bound (minimum of the
      greater side, maximum of the smaller side) are tracked. Only the side holding the k-th
      largest value goes on. Later rounds read the candidates back from their buffer and pivot on
      ``floor((min + max) / 2)``; a round of c candidates takes ``ceil(c / P) + 4`` cycles.
      Selection stops as soon as the k-th value is known: it equals the pivot, the set holds one
      value, or k selects the set's minimum or maximum. The value range halves in every round
      after the first, so there are at most ``score_bits`` of them, whatever the input order.
    * Emit: the input buffer is read once more in order and a lane is kept when its score is
      above the k-th value, or equal to it and among the first ones still needed; kept lanes are
      packed to the front of the beat, which leaves through a register slice. At most R + 3
      cycles, plus the consumer's stalls; the pass ends at the beat holding the k-th kept index.

    Cycles from command to last beat, without stalls, are at most
    ``1 + R + 3 + score_bits * (R + 4) + R + 3`` (:meth:`worst_case_cycles`); on random scores
    about ``3.3 R`` (``spattn bench topk`` measures it).
    """

    def __init__(self, cfg: AccelConfig, score_bits=None):
        self.cfg = cfg
        self.score_bits = score_bits or cfg.score_bits
        super().__init__({
            "cmd": In(stream.Signature(topk_command_layout(cfg))),
            "scores": In(stream.Signature(topk_scores_layout(cfg, self.score_bits))),
            "indices": Out(stream.Signature(topk_indices_layout(cfg))),
            "busy": Out(1),
        })

    @staticmethod
    def worst_case_cycles(cfg: AccelConfig, n, score_bits=None):
        """Bound on cycles from command acceptance to the last index beat with no stalls."""
        rows = -(-n // cfg.topk_comparators)
        return 1 + rows + 3 + (score_bits or cfg.score_bits) * (rows + 4) + rows + 3

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        p = cfg.topk_comparators
        chunks = cfg.topk_stream_lanes // p
        fmt = IntFormat(self.score_bits, signed=True)
        score_shape = fmt.shape
        row_shape = unsigned(bits_for(cfg.topk_rows))
        lane_shape = unsigned(bits_for(p))
        count_shape = unsigned(cfg.count_bits)

        def lane_valid(row, rows, last_lanes, lane):
            return (row != rows - 1) | (lane < last_lanes)

        # Buffer 3 keeps the input in order; buffers 0..2 rotate as round source and destinations.
        bufs = [_LaneBuffer(m, f"cand{j}", cfg, score_shape) for j in range(3)] + [
            _LaneBuffer(m, "input", cfg, score_shape)]
        INPUT = 3

        # Run parameters.
        k_total = Signal(count_shape)
        # The input buffer as rows: its row count and the valid lanes of its last row.
        in_rows = Signal(row_shape)
        in_last = Signal(lane_shape)
        load_left = Signal(count_shape)      # scores still to load
        chunk = Signal(range(max(chunks, 2)))

        # The current candidate set: every score within [lo, hi]; k-th largest is its rank-th.
        src = Signal(range(4))
        src_rows = Signal(row_shape)
        src_last = Signal(lane_shape)
        rank = Signal(count_shape)
        lo = Signal(score_shape)
        hi = Signal(score_shape)
        pivot = Signal(score_shape)
        gt_dst = Signal(range(3))
        lt_dst = Signal(range(3))

        # Per-round accumulators, one set per destination side.
        class Side:
            def __init__(self, name):
                self.row = Signal(row_shape, name=f"{name}_fill_row")
                self.lane = Signal(lane_shape, name=f"{name}_fill_lane")
                self.count = Signal(count_shape, name=f"{name}_count")
                self.bound = Signal(score_shape, name=f"{name}_bound")
        gt, lt = Side("gt"), Side("lt")
        eq_count = Signal(count_shape)

        # Outcome of selection, used by the emit pass.
        kth = Signal(score_shape)
        eq_left = Signal(count_shape)        # scores equal to kth still to keep, earliest first
        to_emit = Signal(count_shape)         # kept indices not yet sent

        # Read pipeline: one row address for every bank, data one cycle later.
        rd_row = Signal(row_shape)
        rd_en = Signal()
        s1_valid = Signal()
        s1_row = Signal(row_shape)
        for buf in bufs:
            for port in buf.read:
                m.d.comb += [port.addr.eq(rd_row), port.en.eq(rd_en)]
        src_data = [wire(m, Mux(src == INPUT, bufs[INPUT].read[lane].data,
                                Mux(src == 0, bufs[0].read[lane].data,
                                    Mux(src == 1, bufs[1].read[lane].data, bufs[2].read[lane].data))),
                         f"src_data{lane}") for lane in range(p)]

        # Load datapath: the current chunk of P lanes of the input beat.
        load_lanes = [Signal(score_shape, name=f"load_lane{lane}") for lane in range(p)]
        for lane in range(p):
            choice = self.scores.payload[lane]
            for c in range(1, chunks):
                choice = Mux(chunk == c, self.scores.payload[c * p + lane], choice)
            m.d.comb += load_lanes[lane].eq(choice)
        load_flags = [wire(m, Const(lane, lane_shape) < load_left, f"load_valid{lane}") for lane in range(p)]

        # Partition datapath, in two stages. Stage 1 compares with the pivot: the incoming chunk
        # while loading (the first round rides along with the load, pivoting on the run's first
        # score), else the row a selection round read. Stage 2, a cycle later, packs the flagged
        # lanes into their buffers and tracks counts and bounds; the register between them keeps
        # the handshake and the buffer read out of the packing network's timing path.
        load_phase = Signal()                # in LOAD: the state register, not the handshake
        fire = Signal()                      # stage 1 holds a row or chunk this cycle
        part_data = [wire(m, Mux(load_phase, load_lanes[lane], src_data[lane]), f"part_data{lane}")
                     for lane in range(p)]
        valid = [wire(m, Mux(load_phase, load_flags[lane], lane_valid(s1_row, src_rows, src_last, lane)),
                      f"part_valid{lane}") for lane in range(p)]
        first_pivot = load_phase & (in_rows == 0)
        pivot_now = wire(m, Mux(first_pivot, load_lanes[0], pivot), "pivot_now")
        s2_valid = Signal()
        s2_data = [Signal(score_shape, name=f"s2_data{lane}") for lane in range(p)]
        is_gt = [Signal(name=f"is_gt{lane}") for lane in range(p)]
        is_lt = [Signal(name=f"is_lt{lane}") for lane in range(p)]
        is_loaded = [Signal(name=f"is_loaded{lane}") for lane in range(p)]
        eq_added = Signal(lane_shape)
        m.d.sync += [
            s2_valid.eq(fire),
            eq_added.eq(Mux(fire, popcount(m, [v & (x == pivot_now) for v, x in zip(valid, part_data)],
                                           "eq_flags"), 0)),
        ]
        for lane in range(p):
            m.d.sync += [
                s2_data[lane].eq(part_data[lane]),
                is_gt[lane].eq(fire & valid[lane] & (part_data[lane] > pivot_now)),
                is_lt[lane].eq(fire & valid[lane] & (part_data[lane] < pivot_now)),
                is_loaded[lane].eq(fire & load_phase & valid[lane]),
            ]
        gt_min = masked_reduce(m, is_gt, s2_data, lambda a, b: a < b, fmt.max, "gt_min")
        lt_max = masked_reduce(m, is_lt, s2_data, lambda a, b: a > b, fmt.min, "lt_max")
        # The range of the whole input, tracked in stage 2 while loading.
        load_min = masked_reduce(m, is_loaded, s2_data, lambda a, b: a < b, fmt.max, "load_min")
        load_max = masked_reduce(m, is_loaded, s2_data, lambda a, b: a > b, fmt.min, "load_max")

        def append(side, flags, dst, name):
            """Pack the flagged lanes onto the end of buffer ``dst``; update the side's counters."""
            ranks = exclusive_prefix_counts(m, flags, f"{name}_rank")
            added = popcount(m, flags, f"{name}_added")
            for bank in range(p):
                # Slot of this bank among the appended lanes: (bank - fill_lane) mod P.
                wraps = wire(m, bank < side.lane, f"{name}_wraps{bank}")
                slot = wire(m, Mux(wraps, bank + p - side.lane, bank - side.lane)[:lane_shape.width],
                            f"{name}_slot{bank}")
                value = wire(m, compact(flags, s2_data, ranks, slot), f"{name}_value{bank}",
                             score_shape)
                for j in range(3):
                    port = bufs[j].write[bank]
                    with m.If(dst == j):
                        m.d.comb += [
                            port.en.eq(slot < added),
                            port.addr.eq(side.row + wraps),
                            port.data.eq(value),
                        ]
            fill = side.lane + added
            with m.If(fill >= p):
                m.d.sync += [side.row.eq(side.row + 1), side.lane.eq(fill - p)]
            with m.Else():
                m.d.sync += side.lane.eq(fill)
            m.d.sync += side.count.eq(side.count + added)

        # Emit datapath on the row in stage 1 (input buffer), into the output register slice.
        beat = stream.Signature(topk_indices_layout(cfg)).create(path=("beat",))
        in_data = [buf_port.data for buf_port in bufs[INPUT].read]
        e_valid = [wire(m, s1_valid & lane_valid(s1_row, in_rows, in_last, lane), f"emit_valid{lane}")
                   for lane in range(p)]
        e_eq = [wire(m, v & (x == kth), f"emit_eq{lane}") for lane, (v, x) in enumerate(zip(e_valid, in_data))]
        e_eq_rank = exclusive_prefix_counts(m, e_eq, "emit_eq_rank")
        e_keep = [wire(m, v & ((x > kth) | (eq & (r < eq_left))), f"emit_keep{lane}")
                  for lane, (v, x, eq, r) in enumerate(zip(e_valid, in_data, e_eq, e_eq_rank))]
        e_keep_eq = popcount(m, [keep & eq for keep, eq in zip(e_keep, e_eq)], "emit_keep_eq")
        e_count = popcount(m, e_keep, "emit_count")
        e_ranks = exclusive_prefix_counts(m, e_keep, "emit_rank")
        row_base = wire(m, s1_row * p, "row_base", unsigned(cfg.index_bits + bits_for(p)))
        e_index = [wire(m, (row_base + lane)[:cfg.index_bits], f"emit_index{lane}") for lane in range(p)]
        e_last = wire(m, e_count == to_emit, "emit_last")


        def start_round(source_is):
            """Clear the round's accumulators; the destinations are the buffers other than the source."""
            m.d.sync += [
                gt.row.eq(0), gt.lane.eq(0), gt.count.eq(0), gt.bound.eq(fmt.max),
                lt.row.eq(0), lt.lane.eq(0), lt.count.eq(0), lt.bound.eq(fmt.min),
                eq_count.eq(0),
                gt_dst.eq(Mux(source_is == 0, 1, 0)), lt_dst.eq(Mux(source_is == 2, 1, 2)),
            ]

        def go_on(side, set_rank, low, high, source):
            """Make ``side`` the candidate set: finish when its k-th value is known, else bisect it."""
            with m.If(k_total == 0):
                m.next = "EMPTY"
            with m.Elif((low == high) | (set_rank == side.count)):
                m.d.sync += [kth.eq(low), eq_left.eq(set_rank)]
                m.next = "EMIT"
            with m.Elif(set_rank == 1):
                m.d.sync += [kth.eq(high), eq_left.eq(set_rank)]
                m.next = "EMIT"
            with m.Else():
                m.d.sync += [
                    src_rows.eq(side.row + (side.lane != 0)), src_last.eq(Mux(side.lane == 0, p, side.lane)),
                    rank.eq(set_rank), lo.eq(low), hi.eq(high), src.eq(source),
                    pivot.eq(((low + high) >> 1)[:self.score_bits]),
                ]
                start_round(source)
                m.next = "ROUND"

        # Stage 2 runs every cycle: with no flag set it writes nothing and changes nothing.
        append(gt, is_gt, gt_dst, "gt")
        append(lt, is_lt, lt_dst, "lt")
        # Stage 3 folds the reduced bounds of a row into the running ones: a register after the
        # P-lane trees keeps tree and running comparison in separate cycles.
        s3_valid = Signal()
        s3 = {name: Signal(score_shape, name=f"s3_{name}")
              for name in ("gt_min", "lt_max", "load_min", "load_max")}
        m.d.sync += [
            eq_count.eq(eq_count + eq_added),
            s3_valid.eq(s2_valid),
            s3["gt_min"].eq(gt_min), s3["lt_max"].eq(lt_max),
            s3["load_min"].eq(load_min), s3["load_max"].eq(load_max),
            gt.bound.eq(Mux(s3["gt_min"] < gt.bound, s3["gt_min"], gt.bound)),
            lt.bound.eq(Mux(s3["lt_max"] > lt.bound, s3["lt_max"], lt.bound)),
            lo.eq(Mux(s3["load_min"] < lo, s3["load_min"], lo)),
            hi.eq(Mux(s3["load_max"] > hi, s3["load_max"], hi)),
        ]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    n, k = self.cmd.payload.n, self.cmd.payload.k
                    m.d.sync += [
                        k_total.eq(Mux(k > n, n, k)), rank.eq(Mux(k > n, n, k)),
                        load_left.eq(n), chunk.eq(0), in_rows.eq(0),
                        lo.eq(fmt.max), hi.eq(fmt.min),
                        to_emit.eq(Mux(k > n, n, k)),
                    ]
                    start_round(INPUT)
                    with m.If(n == 0):
                        m.next = "EMPTY"
                    with m.Else():
                        m.d.sync += load_phase.eq(1)
                        m.next = "LOAD"

            with m.State("LOAD"):
                m.d.comb += self.busy.eq(1)
                final_chunk = load_left <= p
                m.d.comb += self.scores.ready.eq(final_chunk | (chunk == chunks - 1))
                with m.If(self.scores.valid):
                    m.d.comb += fire.eq(1)
                    with m.If(first_pivot):
                        m.d.sync += pivot.eq(load_lanes[0])
                    for lane in range(p):
                        port = bufs[INPUT].write[lane]
                        m.d.comb += [port.en.eq(load_flags[lane]), port.addr.eq(in_rows),
                                     port.data.eq(load_lanes[lane])]
                    m.d.sync += [
                        in_rows.eq(in_rows + 1),
                        load_left.eq(Mux(final_chunk, 0, load_left - p)),
                        chunk.eq(Mux(self.scores.ready, 0, chunk + 1)),
                    ]
                    with m.If(final_chunk):
                        m.d.sync += [in_last.eq(load_left), src.eq(INPUT), load_phase.eq(0)]
                        m.next = "DECIDE"

            with m.State("ROUND"):
                m.d.comb += [self.busy.eq(1), fire.eq(s1_valid)]
                with m.If(rd_row != src_rows):
                    m.d.comb += rd_en.eq(1)
                    m.d.sync += [s1_valid.eq(1), s1_row.eq(rd_row), rd_row.eq(rd_row + 1)]
                with m.Else():
                    m.d.sync += s1_valid.eq(0)
                    m.next = "DECIDE"

            with m.State("DECIDE"):
                # Keep the side that holds the k-th value and, in the same cycle, either finish
                # selection on it or start the next round.
                m.d.comb += self.busy.eq(1)
                m.d.sync += [rd_row.eq(0), s1_valid.eq(0)]
                with m.If(s2_valid | s3_valid):
                    pass  # the last row is still in stages 2 and 3: its counts and bounds follow
                with m.Elif(gt.count >= rank):
                    go_on(gt, rank, gt.bound, hi, gt_dst)
                with m.Elif(gt.count + eq_count >= rank):
                    m.d.sync += [kth.eq(pivot), eq_left.eq(rank - gt.count)]
                    m.next = "EMIT"
                with m.Else():
                    go_on(lt, rank - gt.count - eq_count, lo, lt.bound, lt_dst)

            with m.State("EMIT"):
                m.d.comb += self.busy.eq(1)
                for slot in range(p):
                    m.d.comb += beat.payload.index[slot].eq(compact(e_keep, e_index, e_ranks, slot))
                m.d.comb += [
                    beat.payload.count.eq(e_count),
                    beat.payload.last.eq(e_last),
                    beat.valid.eq(s1_valid & ((e_count != 0) | e_last)),
                ]
                # Stage 1 moves on when empty, when its row keeps nothing, or when its beat is taken.
                advance = ~s1_valid | ((e_count == 0) & ~e_last) | beat.ready
                with m.If(advance):
                    m.d.comb += rd_en.eq(1)
                    m.d.sync += [
                        s1_valid.eq(rd_row != in_rows), s1_row.eq(rd_row), rd_row.eq(rd_row + 1),
                        eq_left.eq(eq_left - e_keep_eq),
                        to_emit.eq(to_emit - e_count),
                    ]
                    with m.If(s1_valid & e_last):
                        m.d.sync += s1_valid.eq(0)
                        m.next = "IDLE"

            with m.State("EMPTY"):
                # Nothing to keep: drain the run's scores, then send the lone end beat.
                m.d.comb += self.busy.eq(1)
                with m.If(load_left != 0):
                    m.d.comb += self.scores.ready.eq((load_left <= p) | (chunk == chunks - 1))
                    with m.If(self.scores.valid):
                        m.d.sync += [load_left.eq(Mux(load_left <= p, 0, load_left - p)),
                                     chunk.eq(Mux(self.scores.ready, 0, chunk + 1))]
                with m.Else():
                    m.d.comb += [beat.valid.eq(1), beat.payload.last.eq(1)]
                    with m.If(beat.ready):
                        m.next = "IDLE"

        # Output register slice: the consumer sees registered beats, so the emit network does not
        # run into its logic; the engine may take the next command while the last beat waits.
        out = self.indices
        m.d.comb += beat.ready.eq(~out.valid | out.ready)
        with m.If(beat.ready):
            m.d.sync += [out.valid.eq(beat.valid), out.payload.eq(beat.payload)]
        with m.If(out.valid):
            m.d.comb += self.busy.eq(1)

        return m
