"""Top-k engine: radix selection over per-lane bucket lists held in block RAM."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spattn.config import AccelConfig
from spattn.formats import bits_for

from .lanes import compact, exclusive_prefix_counts, pipelined_reduce, popcount, wire
from .topk_pairs import PAIR_RANKS_LATENCY, PairRanks

__all__ = ["TopKEngine", "topk_command_layout", "topk_indices_layout", "TOPK_RADIX_BITS"]

# Bits of the score a selection level resolves: 16 buckets per level.
TOPK_RADIX_BITS = 4
# Both banks of every lane belong in block RAM, whatever their size.
_BLOCK_RAM = {"ram_style": "block"}
# Output FIFO depth: the emission pipeline issues a row only while every row in flight fits, so
# the FIFO must hold more than the pipeline for the pass to run at a row per cycle (16 costs no
# more LUT RAM than 8).
_OUT_DEPTH = 16
# Cycles between the last input of a level and its bucket counts, and of the decision after it.
_LOAD_LATENCY = 9
_ROUND_LATENCY = 10
_DECIDE_CYCLES = 5
_EMIT_LATENCY = 8
# Cycles from a short run's hand-over to the emit pass until its last beat leaves the FIFO, after
# its rows are issued (one a cycle).
_PAIR_EMIT_LATENCY = 4


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
    Scores are compared as unsigned keys (sign bit flipped), so order is kept. Score ``i`` lives
    in lane ``i % P`` at row ``i // P`` and never changes lane, so no network moves scores between
    lanes until the output.

    * Load: each lane writes its keys in order to its block-RAM bank (R cycles at P scores per
      cycle) and files each key's row in one of 16 bucket lists: by the 4-bit digit that holds the
      highest bit in which the first row's keys differ (digits start at multiples of 4; the top
      one ends at the key's top bit); keys outside that window go to the first or last bucket.
      The lists are a second block-RAM bank per lane, one region per bucket, with the next free
      slot of each list in LUT RAM. Bucket counts summed over lanes are kept as
      suffix sums (keys in this bucket or above), so the load itself is the first selection level.
    * Decide (5 cycles): the bucket holding the k-th largest key is the highest one whose suffix
      sum reaches the rank still wanted; the keys above it are all kept. If every key of the
      bucket is kept, or it spans one value, the k-th key is known. Otherwise the next level reads
      that bucket's lists (each lane its own; as many rows as the longest list), fetches the keys
      from the input bank by row, and files them by the digit that holds the highest bit in which
      the bucket's bounds differ. Every level after the first resolves at least that digit, so
      there are at most ``ceil(score_bits / 4)`` of them whatever the input (:meth:`levels`).
    * Emit: the input bank is read in order; a lane is kept when its key is above the k-th, or
      equal to it and among the first ones still needed; kept lanes are packed to the front of the
      beat, which goes into an output FIFO (so back-pressure never reaches the pipeline: a row is
      issued only while the FIFO has room for every row in flight). Rows that keep nothing make
      no beat, and the pass ends with the beat holding the k-th kept index.

    * Short runs (``n`` at most :meth:`pair_tokens`, the config's ``topk_pair_tokens``): the keys go
      into registers, a whole input beat per cycle, and :class:`~spattn.hw.topk_pairs.PairRanks`
      compares every pair and keeps the keys that fewer than ``k`` others beat (3 cycles); the
      bitmap of kept keys enters the emit pass at its packing stage, a row per cycle. No bank, list
      or selection level is used, so such a run takes a few cycles plus its rows.

    Every block-RAM output and every comparator or adder tree is followed by a register, and the
    decision's outcome is registered before the control acts on it, so that control is not the
    clock limit. Cycles from command to last beat, without stalls, are at most
    :meth:`worst_case_cycles`; ``spattn bench topk`` measures them on random scores.
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
    def pair_tokens(cfg: AccelConfig):
        """Runs of at most this many scores are ranked by :class:`PairRanks` (0: none)."""
        return min(cfg.topk_pair_tokens, cfg.max_tokens)

    @staticmethod
    def levels(score_bits):
        """Selection levels after the load, at most: each resolves ``TOPK_RADIX_BITS`` bits."""
        return -(-score_bits // TOPK_RADIX_BITS)

    @staticmethod
    def worst_case_cycles(cfg: AccelConfig, n, score_bits=None):
        """Bound on cycles from command acceptance to the last index beat with no stalls."""
        rows = -(-n // cfg.topk_comparators)
        if 0 < n <= TopKEngine.pair_tokens(cfg):
            beats = -(-n // cfg.topk_stream_lanes)
            return 1 + beats + PAIR_RANKS_LATENCY + 1 + rows + _PAIR_EMIT_LATENCY
        levels = TopKEngine.levels(score_bits or cfg.score_bits)
        return (1 + rows + _LOAD_LATENCY + _DECIDE_CYCLES
                + levels * (rows + _ROUND_LATENCY + _DECIDE_CYCLES) + rows + _EMIT_LATENCY)

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        p = cfg.topk_comparators
        chunks = cfg.topk_stream_lanes // p
        width = self.score_bits
        radix = min(TOPK_RADIX_BITS, width)
        buckets = 1 << radix
        row_bits = cfg.topk_row_bits
        key_shape = unsigned(width)
        key_max = (1 << width) - 1
        row_shape = unsigned(row_bits)
        fill_shape = unsigned(row_bits + 1)          # 0 ..= topk_rows entries of one list
        count_shape = unsigned(cfg.count_bits)
        bucket_shape = unsigned(radix)

        def key_of(score):
            """Unsigned key with the order of the signed score: the sign bit flipped."""
            return Cat(score.as_unsigned()[:width - 1], ~score.as_unsigned()[width - 1])

        def lane_valid(row, rows, last_lanes, lane):
            return (row != rows - 1) | (lane < last_lanes)

        # Per lane: the input in order (row -> key; two sets, so that a run loads while the one
        # before it emits), and the bucket lists (two sets, so that one level reads a set while the
        # next one is filed into the other; 16 regions of R slots each).
        order_w, order_r, lists_w, lists_r = [], [], [], []
        for lane in range(p):
            order = memory.Memory(shape=key_shape, depth=2 << row_bits, init=[], attrs=_BLOCK_RAM)
            lists = memory.Memory(shape=row_shape, depth=2 * buckets << row_bits, init=[], attrs=_BLOCK_RAM)
            m.submodules[f"order{lane}"] = order
            m.submodules[f"lists{lane}"] = lists
            order_w.append(order.write_port())
            order_r.append(order.read_port())
            lists_w.append(lists.write_port())
            lists_r.append(lists.read_port())

        # Run parameters.
        k_total = Signal(count_shape)
        load_set = Signal()                          # the input bank's set this run loads into
        in_rows = Signal(fill_shape)                 # rows loaded
        in_last = Signal(range(p + 1))               # valid lanes of the last row
        load_left = Signal(count_shape)
        chunk = Signal(range(max(chunks, 2)))

        # The current candidate set: every key in [set_lo, set_hi], filed in the lists of set
        # ``src_set``, bucket ``src_bucket``, ``src_fill[lane]`` entries per lane; the k-th largest
        # key of the run is the set's ``rank``-th largest.
        rank = Signal(count_shape)
        set_hi = Signal(key_shape)
        src_set = Signal()
        src_bucket = Signal(bucket_shape)
        src_fill = [Signal(fill_shape, name=f"src_fill{lane}") for lane in range(p)]
        # The window the current level files by: keys whose bits at and above shift + radix equal
        # win_base's go to bucket key[shift + radix - 1 : shift]; keys below or above the window
        # go to the first or last bucket. Windows start at multiples of the radix (the highest one
        # ends at the key's top bit), so each lane takes its digit through a small multiplexer, not
        # a barrel shifter (16-bit keys: 16 LUT4s a lane instead of 89).
        window_shifts = sorted({_aligned_shift(bit, radix, width) for bit in range(width)})
        win_select = Signal(len(window_shifts))     # one-hot: which of window_shifts
        win_mask = Signal(key_shape)
        win_base = Signal(key_shape)
        win_width_mask = Signal(key_shape)           # (1 << shift) - 1: within one bucket

        def shifted_by_window(select, value, extra=0):
            """``value << (shift + extra)``, cut to the key's width, for the window that the one-hot
            ``select`` picks."""
            picked = Const(0, key_shape)
            for option, shift in enumerate(window_shifts):
                picked = picked | Mux(select[option], (Value.cast(value) << (shift + extra))[:width], 0)
            return picked

        # ---- Level input: stage x holds (valid, row, key) per lane from the load or a round. ----
        x_valid = [Signal(name=f"x_valid{lane}") for lane in range(p)]
        x_row = [Signal(row_shape, name=f"x_row{lane}") for lane in range(p)]
        x_key = [Signal(key_shape, name=f"x_key{lane}") for lane in range(p)]

        # Load path: chunk of the input beat -> s0 (written to the input bank) -> s1 -> x.
        load_fire = Signal()
        first_row = Signal()                         # the next loaded row is row 0
        s0_valid = [Signal(name=f"s0_valid{lane}") for lane in range(p)]
        s0_key = [Signal(key_shape, name=f"s0_key{lane}") for lane in range(p)]
        s0_row = Signal(row_shape)
        s0_first = Signal()
        s1_valid = [Signal(name=f"s1_valid{lane}") for lane in range(p)]
        s1_key = [Signal(key_shape, name=f"s1_key{lane}") for lane in range(p)]
        s1_row = Signal(row_shape)
        s1_first = Signal()
        load_left_lanes = [wire(m, Const(lane, count_shape) < load_left, f"load_valid{lane}")
                           for lane in range(p)]
        for lane in range(p):
            choice = self.scores.payload[lane]
            for c in range(1, chunks):
                choice = Mux(chunk == c, self.scores.payload[c * p + lane], choice)
            m.d.sync += [s0_valid[lane].eq(load_fire & load_left_lanes[lane]),
                         s0_key[lane].eq(key_of(choice)),
                         s1_valid[lane].eq(s0_valid[lane]), s1_key[lane].eq(s0_key[lane])]
            m.d.comb += [order_w[lane].addr.eq(Cat(s0_row, load_set)), order_w[lane].data.eq(s0_key[lane]),
                         order_w[lane].en.eq(s0_valid[lane])]
        m.d.sync += [s0_row.eq(in_rows), s0_first.eq(load_fire & first_row),
                     s1_row.eq(s0_row), s1_first.eq(s0_first)]

        # The first row sets the load's window: s0 finds the bits in which its keys differ and
        # smears them downwards; s1 turns that into the window, in time for row 0 to reach x.
        diff_or = 0
        diff_and = key_max
        for lane in range(p):
            diff_or = diff_or | Mux(s0_valid[lane], s0_key[lane], 0)
            diff_and = diff_and & Mux(s0_valid[lane], s0_key[lane], key_max)
        first_smear = Signal(key_shape)
        first_key = Signal(key_shape)
        m.d.sync += [first_smear.eq(_smear(m, wire(m, diff_or ^ diff_and, "first_diff", key_shape), "first")),
                     first_key.eq(s0_key[0])]

        # The window for keys whose range has bounds differing in the bits ``smear`` marks: the
        # first row's at the load, the chosen bucket's at later levels.
        range_smear = Signal(key_shape)
        set_lo = Signal(key_shape)
        window_smear = wire(m, Mux(s1_first, first_smear, range_smear), "window_smear")
        window_low = wire(m, Mux(s1_first, first_key, set_lo), "window_low")
        # The smear is a run of ones up to the highest differing bit h; the window is the aligned
        # digit that holds h (the lowest when no bit differs). The bits above it must match, the
        # bits below it are one bucket's width.
        top_bit = [wire(m, window_smear[bit] & ~(window_smear[bit + 1] if bit + 1 < width else 0),
                        f"window_top{bit}") for bit in range(width)]
        higher = [Cat(*(top_bit[bit] for bit in range(width)
                        if _aligned_shift(bit, radix, width) == shift)).any()
                  for shift in window_shifts[1:]]
        select = wire(m, Cat(~Cat(*higher).any(), *higher), "window_select", len(window_shifts))
        high_bits = wire(m, shifted_by_window(select, key_max >> radix, radix), "window_high", key_shape)
        low_bits = wire(m, ~shifted_by_window(select, key_max) & key_max, "window_low_bits", key_shape)
        new_window = [win_select.eq(select), win_mask.eq(high_bits), win_base.eq(window_low & high_bits),
                      win_width_mask.eq(low_bits)]

        # Round path: list slot -> (lists bank) row -> register -> (input bank) key -> x. Block-RAM
        # outputs are slow (5.8 ns on the ECP5), so each goes into a register first.
        rd_slot = Signal(fill_shape)
        rd_rows = Signal(fill_shape)
        round_issue = Signal()
        a_valid = [Signal(name=f"a_valid{lane}") for lane in range(p)]
        b_valid = [Signal(name=f"b_valid{lane}") for lane in range(p)]
        b_row = [Signal(row_shape, name=f"b_row{lane}") for lane in range(p)]
        c_valid = [Signal(name=f"c_valid{lane}") for lane in range(p)]
        c_row = [Signal(row_shape, name=f"c_row{lane}") for lane in range(p)]
        emit_issue = Signal()
        emit_row = Signal(fill_shape)
        emit_set = Signal()
        for lane in range(p):
            m.d.comb += [
                lists_r[lane].addr.eq(Cat(rd_slot[:row_bits], src_bucket, src_set)),
                order_r[lane].addr.eq(Mux(emit_issue, Cat(emit_row[:row_bits], emit_set),
                                          Cat(b_row[lane], load_set))),
            ]
            m.d.sync += [
                a_valid[lane].eq(round_issue & (rd_slot < src_fill[lane])),
                b_valid[lane].eq(a_valid[lane]), b_row[lane].eq(lists_r[lane].data),
                c_valid[lane].eq(b_valid[lane]), c_row[lane].eq(b_row[lane]),
                x_valid[lane].eq(s1_valid[lane] | c_valid[lane]),
                x_row[lane].eq(Mux(s1_valid[lane], s1_row, c_row[lane])),
                x_key[lane].eq(Mux(s1_valid[lane], s1_key[lane], order_r[lane].data)),
            ]

        # ---- Filing: x -> y (bucket) -> z (slot) -> list write; y -> part (popcount) -> sums. ----
        y_valid = [Signal(name=f"y_valid{lane}") for lane in range(p)]
        y_row = [Signal(row_shape, name=f"y_row{lane}") for lane in range(p)]
        y_bucket = [Signal(bucket_shape, name=f"y_bucket{lane}") for lane in range(p)]
        for lane in range(p):
            # A key outside the window differs from win_base above it, so it is below the window
            # exactly when it is below win_base: one comparator and one equality per lane.
            inside = wire(m, ((x_key[lane] ^ win_base) & win_mask) == 0, f"x_inside{lane}")
            below = wire(m, x_key[lane] < win_base, f"x_below{lane}")
            digit = 0
            for option, shift in enumerate(window_shifts):
                digit = digit | Mux(win_select[option], x_key[lane][shift:shift + radix], 0)
            digit = wire(m, digit, f"x_digit{lane}", bucket_shape)
            m.d.sync += [
                y_valid[lane].eq(x_valid[lane]), y_row[lane].eq(x_row[lane]),
                # An empty lane files in bucket 0, so that the counts of the buckets above it need
                # not look at its valid bit.
                y_bucket[lane].eq(Mux(x_valid[lane], Mux(inside, digit, Mux(below, 0, buckets - 1)), 0)),
            ]
        # Next free slot of every bucket list of a lane: LUT RAM, with a valid bit per bucket so
        # that a level starts with every list empty.
        clear_fill = Signal()                        # a registered pulse: fan-out to every list
        m.d.sync += clear_fill.eq(0)
        chosen = Signal(bucket_shape)
        dst_set = ~src_set
        chosen_fill = []                             # per lane: entries in the chosen bucket
        # Stage z holds each filed key's list slot: the list write and the fill update happen
        # from registers. A key of the same bucket right behind it takes z's slot + 1 (forwarded).
        z_valid = [Signal(name=f"z_valid{lane}") for lane in range(p)]
        for lane in range(p):
            fills = memory.Memory(shape=fill_shape, depth=buckets, init=[])
            m.submodules[f"fills{lane}"] = fills
            fill_w, fill_r = fills.write_port(), fills.read_port(domain="comb")
            used = Signal(buckets, name=f"fill_used{lane}")
            z_bucket = Signal(bucket_shape, name=f"z_bucket{lane}")
            z_row = Signal(row_shape, name=f"z_row{lane}")
            z_slot = Signal(fill_shape, name=f"z_slot{lane}")
            z_after = wire(m, z_slot + 1, f"z_after{lane}", fill_shape)
            # One read port serves filing and, once a level's keys are all filed, the decision.
            fill_addr = wire(m, Mux(y_valid[lane], y_bucket[lane], chosen), f"fill_addr{lane}", bucket_shape)
            m.d.comb += fill_r.addr.eq(fill_addr)
            stored = wire(m, Mux(used.bit_select(fill_addr, 1), fill_r.data, 0), f"fill_stored{lane}",
                          fill_shape)
            behind = z_valid[lane] & (z_bucket == y_bucket[lane])
            m.d.sync += [z_valid[lane].eq(y_valid[lane]), z_bucket.eq(y_bucket[lane]), z_row.eq(y_row[lane]),
                         z_slot.eq(Mux(behind, z_after, stored))]
            chosen_fill.append(stored)
            m.d.comb += [fill_w.addr.eq(z_bucket), fill_w.data.eq(z_after), fill_w.en.eq(z_valid[lane]),
                         lists_w[lane].addr.eq(Cat(z_slot[:row_bits], z_bucket, dst_set)),
                         lists_w[lane].data.eq(z_row), lists_w[lane].en.eq(z_valid[lane])]
            with m.If(clear_fill):
                m.d.sync += used.eq(0)
            with m.Elif(z_valid[lane]):
                m.d.sync += used.eq(used | (1 << z_bucket))
        # Bucket counts as suffix sums (this bucket or above): per bucket, a popcount over each half
        # of the lanes (registered), then their sum.
        halves = [range(0, (p + 1) // 2), range((p + 1) // 2, p)]
        half = [[Signal(range(len(lanes) + 1), name=f"half{b}_{i}") for i, lanes in enumerate(halves)]
                for b in range(buckets)]
        part = [Signal(range(p + 1), name=f"part{b}") for b in range(buckets)]
        suffix = [Signal(count_shape, name=f"suffix{b}") for b in range(buckets)]
        for b in range(buckets):
            for i, lanes in enumerate(halves):
                at_or_above = [y_bucket[lane] >= b if b else y_valid[lane] for lane in lanes]
                m.d.sync += half[b][i].eq(popcount(m, at_or_above, f"half{b}_{i}") if at_or_above else 0)
            m.d.sync += part[b].eq(half[b][0] + half[b][1])
            with m.If(clear_fill):
                m.d.sync += suffix[b].eq(0)
            with m.Else():
                m.d.sync += suffix[b].eq(suffix[b] + part[b])
        pipe_stages = [*s0_valid, *s1_valid, *a_valid, *b_valid, *c_valid, *x_valid, *y_valid, *z_valid]
        # Whether a level's keys are still on their way to the sums, a cycle late (so registered):
        # the settle states start counting from the cycle the last input is taken.
        filing = Signal()
        m.d.sync += filing.eq(Cat(*pipe_stages, load_fire, round_issue).any()
                              | Cat(*(value != 0 for b in range(buckets) for value in [*half[b], part[b]])).any())

        # ---- Decision over the bucket sums, five registered steps. ----
        sum_at = Signal(count_shape)
        sum_above = Signal(count_shape)
        bucket_lo = Signal(key_shape)
        bucket_hi = Signal(key_shape)
        members = Signal(count_shape)
        known = Signal()                             # the k-th key is the set's lowest
        tie_count = Signal(count_shape)
        tie_room = Signal(range(p + 1))
        next_fill = [Signal(fill_shape, name=f"next_fill{lane}") for lane in range(p)]
        next_rows, rows_latency = pipelined_reduce(m, next_fill, lambda a, b: a > b, "next_rows")
        assert rows_latency <= 2, "the decision has two cycles for the longest list"

        # Outcome of selection, handed to the emit pass, which runs on its own while the next run
        # loads and selects (only the next run's later levels wait for it: they share its port).
        emitting = Signal()
        emit_k = Signal(count_shape)
        emit_rows = Signal(fill_shape)
        emit_last = Signal(range(p + 1))
        kth = Signal(key_shape)
        eq_left = Signal(count_shape)                # keys equal to kth still to keep, earliest first
        eq_room = Signal(range(p + 1))               # the same, at most P: what one row can use

        # ---- Emission: E1 (bank) -> key register -> E2 (compare) -> E3 (tie ranks) -> E4 (keep) ->
        # E5 (pack) -> output FIFO. ----
        layout = topk_indices_layout(cfg)
        lane_shape = unsigned(bits_for(p))
        m.submodules.out_fifo = out_fifo = fifo.SyncFIFOBuffered(width=layout.size, depth=_OUT_DEPTH)
        beat = data.View(layout, Signal(layout.size))
        m.d.comb += [out_fifo.w_data.eq(beat.as_value()),
                     # Zero while not valid: the FIFO's block of LUT RAM starts unknown in simulators.
                     self.indices.payload.eq(Mux(out_fifo.r_rdy, out_fifo.r_data, 0)),
                     self.indices.valid.eq(out_fifo.r_rdy),
                     out_fifo.r_en.eq(self.indices.ready)]
        # A row is issued only while the FIFO has room for a beat from every row in flight.
        emit_stages = 6
        room = wire(m, out_fifo.level < _OUT_DEPTH - emit_stages, "emit_room")
        # A short run's pass (``emit_pairs``) takes its rows from the kept-key bitmap instead, and
        # leaves the input bank's read port to the next run's levels.
        emit_pairs = Signal()
        m.d.comb += emit_issue.eq(emitting & ~emit_pairs)
        issuing = wire(m, emitting & ~emit_pairs & (emit_row != emit_rows) & room, "emit_issuing")
        pair_issuing = wire(m, emitting & emit_pairs & (emit_row != emit_rows) & room, "pair_issuing")
        e_valid = [Signal(name=f"e{stage + 1}_valid") for stage in range(emit_stages)]
        e_row = [Signal(fill_shape, name=f"e{stage + 1}_row") for stage in range(4)]
        m.d.sync += [e_valid[0].eq(issuing), e_row[0].eq(emit_row)]
        m.d.sync += [later.eq(earlier) for earlier, later in zip(e_valid, e_valid[1:])]
        m.d.sync += [later.eq(earlier) for earlier, later in zip(e_row, e_row[1:])]
        e1_key = [Signal(key_shape, name=f"e1_key{lane}") for lane in range(p)]
        m.d.sync += [reg.eq(port.data) for reg, port in zip(e1_key, order_r)]
        e2_gt = [Signal(name=f"e2_gt{lane}") for lane in range(p)]
        e2_eq = [Signal(name=f"e2_eq{lane}") for lane in range(p)]
        for lane in range(p):
            key = e1_key[lane]
            present = e_valid[1] & lane_valid(e_row[1], emit_rows, emit_last, lane)
            m.d.sync += [e2_gt[lane].eq(present & (key > kth)), e2_eq[lane].eq(present & (key == kth))]
        e3_gt = [Signal(name=f"e3_gt{lane}") for lane in range(p)]
        e3_eq = [Signal(name=f"e3_eq{lane}") for lane in range(p)]
        e3_eq_rank = [Signal(lane_shape, name=f"e3_eq_rank{lane}") for lane in range(p)]
        e3_eq_count = Signal(lane_shape)
        eq_ranks = exclusive_prefix_counts(m, e2_eq, "emit_eq_rank")
        m.d.sync += e3_eq_count.eq(popcount(m, e2_eq, "emit_eq_count"))
        for lane in range(p):
            m.d.sync += [e3_gt[lane].eq(e2_gt[lane]), e3_eq[lane].eq(e2_eq[lane]),
                         e3_eq_rank[lane].eq(eq_ranks[lane])]
        e4_base = Signal(unsigned(cfg.index_bits + bits_for(p)))
        e4_keep = [Signal(name=f"e4_keep{lane}") for lane in range(p)]
        m.d.sync += e4_base.eq(e_row[3] * p)
        # eq_left counts down as rows pass E3, and eq_room follows it capped at P, so each lane
        # compares its small rank with a small number.
        eq_left_next = wire(m, Mux(e_valid[3], Mux(e3_eq_count > eq_left, 0, eq_left - e3_eq_count), eq_left),
                            "eq_left_next", count_shape)
        m.d.sync += [eq_left.eq(eq_left_next), eq_room.eq(Mux(eq_left_next > p, p, eq_left_next))]
        for lane in range(p):
            m.d.sync += e4_keep[lane].eq(e3_gt[lane] | (e3_eq[lane] & (e3_eq_rank[lane] < eq_room)))
        # A short run's rows enter at E4, straight from the bitmap of its kept keys.
        pair_tokens = self.pair_tokens(cfg)
        pair_rows = -(-pair_tokens // p)
        emit_bitmap = Signal(max(pair_rows * p, 1))
        if pair_tokens:
            with m.If(pair_issuing):
                m.d.sync += [e_valid[4].eq(1), e4_base.eq(emit_row * p), emit_row.eq(emit_row + 1)]
                for lane in range(p):
                    bit = emit_bitmap[lane]
                    for row in range(1, pair_rows):
                        bit = Mux(emit_row == row, emit_bitmap[row * p + lane], bit)
                    m.d.sync += e4_keep[lane].eq(bit)
        e5_keep = [Signal(name=f"e5_keep{lane}") for lane in range(p)]
        e5_rank = [Signal(lane_shape, name=f"e5_rank{lane}") for lane in range(p)]
        e5_base = Signal.like(e4_base)
        e5_count = Signal(lane_shape)
        keep_ranks = exclusive_prefix_counts(m, e4_keep, "emit_keep_rank")
        m.d.sync += [e5_count.eq(popcount(m, e4_keep, "emit_keep_count")), e5_base.eq(e4_base)]
        for lane in range(p):
            m.d.sync += [e5_keep[lane].eq(e4_keep[lane]), e5_rank[lane].eq(keep_ranks[lane])]
        emitted = Signal(count_shape)
        # The packing moves lane numbers, not indices (fewer bits through the network), and the
        # row's first index is added after it; with P a power of two that index has the lane bits
        # clear, so the sum is an OR.
        lane_numbers = [Const(lane, lane_shape) for lane in range(p)]
        for slot in range(p):
            picked = wire(m, compact(e5_keep, lane_numbers, e5_rank, slot), f"emit_lane{slot}", lane_shape)
            index = (e5_base | picked) if p & (p - 1) == 0 else (e5_base + picked)
            m.d.comb += beat.index[slot].eq(index[:cfg.index_bits])
        m.d.comb += [beat.count.eq(e5_count), beat.last.eq(emitted + e5_count >= emit_k)]
        with m.If(issuing):
            m.d.sync += emit_row.eq(emit_row + 1)
        with m.If(e_valid[-1] & (e5_count != 0)):
            m.d.comb += out_fifo.w_en.eq(1)
            m.d.sync += emitted.eq(emitted + e5_count)
            with m.If(beat.last):
                # Rows still in flight keep nothing: drop them with the run.
                m.d.sync += [valid.eq(0) for valid in e_valid]
                m.d.sync += [emitting.eq(0), emit_pairs.eq(0)]

        # Short runs: their keys in registers, a whole input beat per cycle, ranked by PairRanks.
        lanes_in = cfg.topk_stream_lanes
        pair_beat = Signal(range(max(-(-pair_tokens // lanes_in), 2)))
        pair_wait = Signal(range(PAIR_RANKS_LATENCY + 1))
        pair_present = Signal(max(pair_tokens, 1))
        if pair_tokens:
            m.submodules.pair_ranks = ranker = PairRanks(pair_tokens, width, cfg.count_bits)
            pair_key = [Signal(key_shape, name=f"pair_key{i}") for i in range(pair_tokens)]
            m.d.comb += [ranker.k.eq(k_total), ranker.present.eq(pair_present),
                         *(ranker.keys[i].eq(key) for i, key in enumerate(pair_key))]
            key_in = [wire(m, key_of(self.scores.payload[lane]), f"pair_key_in{lane}", key_shape)
                      for lane in range(lanes_in)]

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    n, k = self.cmd.payload.n, self.cmd.payload.k
                    kept = Mux(k > n, n, k)
                    m.d.sync += [k_total.eq(kept), load_left.eq(n), chunk.eq(0)]
                    with m.If((n == 0) | (kept == 0)):
                        m.next = "EMPTY"
                    with m.Elif((n <= pair_tokens) if pair_tokens else 0):
                        if pair_tokens:
                            m.d.sync += [pair_beat.eq(0),
                                         pair_present.eq(Cat(*(n > i for i in range(pair_tokens))))]
                            m.next = "PAIR_LOAD"
                    with m.Else():
                        m.d.sync += [
                            clear_fill.eq(1),
                            rank.eq(kept), in_rows.eq(0), first_row.eq(1),
                            load_set.eq(~load_set),
                            src_set.eq(1),                      # so the load files into set 0
                            win_select.eq(1 << (len(window_shifts) - 1)), win_mask.eq(0), win_base.eq(0),
                            win_width_mask.eq((1 << (width - radix)) - 1),
                        ]
                        m.next = "LOAD"

            if pair_tokens:
                with m.State("PAIR_LOAD"):
                    final_beat = load_left <= lanes_in
                    m.d.comb += self.scores.ready.eq(1)
                    with m.If(self.scores.valid):
                        for i, key in enumerate(pair_key):
                            with m.If(pair_beat == i // lanes_in):
                                m.d.sync += key.eq(key_in[i % lanes_in])
                        m.d.sync += [pair_beat.eq(pair_beat + 1),
                                     load_left.eq(Mux(final_beat, 0, load_left - lanes_in))]
                        with m.If(final_beat):
                            m.d.sync += pair_wait.eq(PAIR_RANKS_LATENCY)
                            m.next = "PAIR_RANK"

                with m.State("PAIR_RANK"):
                    # Rows past n keep nothing, and the pass ends with the beat that completes k.
                    with m.If(pair_wait != 0):
                        m.d.sync += pair_wait.eq(pair_wait - 1)
                    with m.Elif(~emitting):
                        m.d.sync += [
                            emit_bitmap.eq(ranker.keep), emitting.eq(1), emit_pairs.eq(1),
                            emit_row.eq(0), emit_rows.eq(pair_rows), emitted.eq(0), emit_k.eq(k_total),
                        ]
                        m.next = "IDLE"

            with m.State("LOAD"):
                final_chunk = load_left <= p
                m.d.comb += self.scores.ready.eq(final_chunk | (chunk == chunks - 1))
                with m.If(s1_first):
                    m.d.sync += new_window
                with m.If(self.scores.valid):
                    m.d.comb += load_fire.eq(1)
                    m.d.sync += [
                        first_row.eq(0),
                        in_rows.eq(in_rows + 1),
                        load_left.eq(Mux(final_chunk, 0, load_left - p)),
                        chunk.eq(Mux(self.scores.ready, 0, chunk + 1)),
                    ]
                    with m.If(final_chunk):
                        m.d.sync += in_last.eq(load_left)
                        m.next = "LOAD_SETTLE"

            with m.State("LOAD_SETTLE"):
                # Row 0's window may still be on its way when the load is one row long.
                with m.If(s1_first):
                    m.d.sync += new_window
                with m.If(~filing):
                    m.d.sync += [set_lo.eq(0), set_hi.eq(key_max)]
                    m.next = "CHOOSE"

            with m.State("ROUND"):
                with m.If(rd_slot != rd_rows):
                    m.d.comb += round_issue.eq(1)
                    m.d.sync += rd_slot.eq(rd_slot + 1)
                with m.Else():
                    m.next = "ROUND_SETTLE"

            with m.State("ROUND_SETTLE"):
                with m.If(~filing):
                    m.next = "CHOOSE"

            with m.State("CHOOSE"):
                # The highest bucket whose suffix sum reaches the rank holds the k-th key.
                pick = 0
                for b in range(buckets):
                    pick = Mux(suffix[b] >= rank, b, pick)
                m.d.sync += chosen.eq(pick)
                m.next = "BOUNDS"

            with m.State("BOUNDS"):
                at, above = suffix[0], Const(0, count_shape)
                for b in range(1, buckets):
                    at = Mux(chosen == b, suffix[b], at)
                    above = Mux(chosen == b - 1, suffix[b], above)
                low = win_base | shifted_by_window(win_select, chosen.as_unsigned())
                m.d.sync += [
                    sum_at.eq(at), sum_above.eq(above),
                    bucket_lo.eq(Mux(chosen == 0, 0, low)),
                    bucket_hi.eq(Mux(chosen == buckets - 1, key_max,
                                     low | win_width_mask)),
                ]
                m.d.sync += [reg.eq(fill) for reg, fill in zip(next_fill, chosen_fill)]
                m.next = "NARROW"

            with m.State("NARROW"):
                new_lo = Mux(bucket_lo > set_lo, bucket_lo, set_lo)
                new_hi = Mux(bucket_hi < set_hi, bucket_hi, set_hi)
                m.d.sync += [
                    rank.eq(rank - sum_above), members.eq(sum_at - sum_above),
                    set_lo.eq(new_lo), set_hi.eq(new_hi),
                ]
                m.next = "SPREAD"

            with m.State("SPREAD"):
                # The k-th key is known when every key of the set is kept (then so is every key
                # equal to its lowest) or when the set holds one value (then the rank-th equal ones).
                all_kept = members == rank
                ties = Mux(all_kept, members, rank)
                m.d.sync += [
                    range_smear.eq(_smear(m, wire(m, set_lo ^ set_hi, "range_diff", key_shape), "range")),
                    known.eq(all_kept | (set_lo == set_hi)),
                    tie_count.eq(ties), tie_room.eq(Mux(ties > p, p, ties)),
                ]
                m.next = "NEXT"

            with m.State("NEXT"):
                with m.If(known):
                    # After the pass of the run before: there is one emit pipeline.
                    with m.If(~emitting):
                        m.d.sync += [
                            kth.eq(set_lo), eq_left.eq(tie_count), eq_room.eq(tie_room),
                            emitting.eq(1), emit_set.eq(load_set), emit_row.eq(0), emitted.eq(0),
                            emit_k.eq(k_total), emit_rows.eq(in_rows), emit_last.eq(in_last),
                        ]
                        m.next = "IDLE"
                with m.Elif(~emit_issue):
                    # A pass that reads the input bank owns its read port; a short run's pass does not.
                    m.d.sync += new_window
                    m.d.sync += clear_fill.eq(1)
                    m.d.sync += [src_set.eq(dst_set), src_bucket.eq(chosen), rd_slot.eq(0),
                                 rd_rows.eq(next_rows)]
                    m.d.sync += [src.eq(nxt) for src, nxt in zip(src_fill, next_fill)]
                    m.next = "ROUND"

            with m.State("EMPTY"):
                # Nothing to keep: drain the run's scores, then send the lone end beat.
                with m.If(load_left != 0):
                    m.d.comb += self.scores.ready.eq((load_left <= p) | (chunk == chunks - 1))
                    with m.If(self.scores.valid):
                        m.d.sync += [load_left.eq(Mux(load_left <= p, 0, load_left - p)),
                                     chunk.eq(Mux(self.scores.ready, 0, chunk + 1))]
                with m.Elif(~emitting):
                    # After every beat of the run before.
                    m.d.comb += [beat.count.eq(0), beat.last.eq(1), out_fifo.w_en.eq(out_fifo.w_rdy)]
                    with m.If(out_fifo.w_rdy):
                        m.next = "IDLE"

        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE") | emitting | out_fifo.r_rdy)
        return m


def _aligned_shift(bit, radix, width):
    """Where the window holding key bit ``bit`` starts: a multiple of ``radix``, or ``width - radix``
    for the window that ends at the key's top bit."""
    return min(bit - bit % radix, width - radix)


def _smear(m, value, name):
    """``value`` with every bit below its highest set bit set too (a prefix OR from the top)."""
    width = len(value)
    smeared, distance = value, 1
    while distance < width:
        smeared = wire(m, smeared | (smeared >> distance), f"{name}_smear{distance}", unsigned(width))
        distance *= 2
    return smeared
