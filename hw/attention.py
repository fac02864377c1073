"""Attention core: one head's fused attention with progressive quantization and value pruning."""

import dataclasses
import math

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from spattn.config import AccelConfig
from spattn.formats import VALUE_KEEP_FRAC, AttentionFormats, bits_for, plane_row_bytes

from .lanes import add_tree, masked_reduce, popcount, wire
from .pe_array import COUNTER_BITS, PEArray
from .softmax import ExpLanes, SerialDivider, reciprocal_bits
from .topk import TopKEngine

__all__ = ["AttentionCore", "TENSOR_Q", "TENSOR_K", "TENSOR_V", "PLANE_MSB", "PLANE_LSB",
           "attention_command_layout", "mem_request_layout", "mem_response_layout", "mask_layout",
           "probs_layout", "out_layout", "plane_lane_bits", "key_count", "prob_chunks"]

#: ``tensor`` field of a memory request.
TENSOR_Q, TENSOR_K, TENSOR_V = 0, 1, 2
#: ``plane`` field of a memory request.
PLANE_MSB, PLANE_LSB = 0, 1


def attention_command_layout(cfg: AccelConfig):
    """One head: ``n`` tokens; masks; progressive quantization; value pruning (see :class:`AttentionCore`)."""
    fmt = AttentionFormats.of(cfg)
    return data.StructLayout({
        "n": unsigned(cfg.count_bits),
        "causal": 1,
        "masked": 1,
        "progressive": 1,
        "threshold": unsigned(fmt.prob.bits + 1),
        "value_keep": unsigned(VALUE_KEEP_FRAC + 1),
    })


def plane_lane_bits(cfg: AccelConfig):
    """Width of one value's lane in a memory response: the wider of the two planes."""
    return max(cfg.act_msb_bits, cfg.act_lsb_bits)


def mem_request_layout(cfg: AccelConfig):
    """Fetch one row (token ``row``) of one plane of Q, K or V of the head."""
    return data.StructLayout({"tensor": unsigned(2), "plane": 1, "row": unsigned(cfg.index_bits)})


def mem_response_layout(cfg: AccelConfig):
    """The ``head_dim`` values of the requested plane row, one per lane, in the lane's low bits
    (the MSB plane as two's complement ``act_msb_bits``, the LSB plane unsigned ``act_lsb_bits``)."""
    return data.StructLayout({"data": data.ArrayLayout(unsigned(plane_lane_bits(cfg)), cfg.head_dim)})


def mask_layout(cfg: AccelConfig):
    """One query row of a static mask: bit ``j`` set = key ``j`` present."""
    return data.StructLayout({"keys": unsigned(cfg.max_tokens)})


def chunk_count(cfg: AccelConfig):
    """Chunks of ``pe_cols`` keys in a row of ``max_tokens`` keys."""
    return -(-cfg.max_tokens // cfg.pe_cols)


def probs_layout(cfg: AccelConfig):
    """``pe_cols`` probabilities of one query row: keys ``chunk * pe_cols + c`` in lane ``c``."""
    fmt = AttentionFormats.of(cfg)
    return data.StructLayout({
        "row": unsigned(cfg.index_bits),
        "chunk": unsigned(bits_for(chunk_count(cfg) - 1)),
        "data": data.ArrayLayout(fmt.prob.shape, cfg.pe_cols),
        "last": 1,
    })


def out_layout(cfg: AccelConfig):
    """One output row, its L1 magnitude and whether it was computed at full precision."""
    fmt = AttentionFormats.of(cfg)
    return data.StructLayout({
        "row": unsigned(cfg.index_bits),
        "data": data.ArrayLayout(fmt.act.shape, cfg.head_dim),
        "magnitude": unsigned(bits_for(cfg.head_dim << (cfg.act_bits - 1))),
        "full_precision": 1,
    })


def key_count(cfg: AccelConfig, n, causal, row):
    """Keys the core computes scores for in query ``row``'s block of ``pe_rows`` queries: all ``n``,
    or with a causal mask only up to the block's last query."""
    return min(n, (row // cfg.pe_rows + 1) * cfg.pe_rows) if causal else n


def prob_chunks(cfg: AccelConfig, n, causal, row):
    """Beats of the ``probs`` stream for query ``row``."""
    return -(-key_count(cfg, n, causal, row) // cfg.pe_cols)


class AttentionCore(wiring.Component):
    """One head of attention over ``n`` tokens, bit-exact with
    :func:`spattn.sim.golden.attention_core.attention_head`.

    Row by row (in blocks of R = ``pe_rows`` queries), the core fetches what it needs through a
    memory port, computes the scores ``Q·Kᵀ`` on the PE array, keeps them on chip (FLAT-style
    fusion: the score matrix never crosses the memory port), turns them into probabilities with
    the integer softmax of :class:`spattn.formats.AttentionFormats`, recomputes unconfident rows
    at full precision (SpAtten's progressive quantization), keeps only each row's most probable V
    rows (local value pruning) and computes P·V on the same PE array.

    Members
    -------
    cmd : In(stream of :func:`attention_command_layout`)
        One beat starts a head. ``n`` in ``1..max_tokens``. ``causal``: key ``j`` is present for
        query ``i`` only if ``j <= i``. ``masked``: the ``mask`` stream gives each query's keys.
        ``progressive``: scores first from the MSB planes, then rows whose maximum probability is
        below ``threshold`` (prob LSBs; ``2**prob.bits`` recomputes every row) again from both
        planes; without it every row is computed once from both planes. ``value_keep``: the
        fraction (``VALUE_KEEP_FRAC`` fraction bits) of each row's present keys whose V rows it
        uses, by probability rank (:func:`spattn.formats.kept_count`; ties to the lower key).
    mask : In(stream of :func:`mask_layout`)
        With ``masked``: one beat per query row, in row order, taken when the row's block starts.
        Every row must have a present key (a row without one gets undefined outputs).
    mem_req : Out(stream of :func:`mem_request_layout`)
        Plane rows the core needs; each (tensor, plane, row) is requested at most once per head.
    mem_resp : In(stream of :func:`mem_response_layout`)
        One beat per request, in request order, after any latency.
    probs : Out(stream of :func:`probs_layout`)
        Each row's final probabilities (for token importance), rows in order, keys
        ``0 .. key_count(row) - 1`` in :func:`prob_chunks` beats; lanes past that are 0.
    out : Out(stream of :func:`out_layout`)
        Each row's P·V output (for the next layer) and its L1 magnitude (for head importance),
        rows in order. A block's ``probs`` beats all come before its ``out`` beats.
    busy : Out(1)
        High from the accepted command until the last ``out`` beat is taken.
    busy_cycles, bytes_fetched, rows_recomputed, pe_busy_cycles, pe_macs : Out(32) each
        Counters of the current (or last) head, cleared by a command: cycles while busy, bytes of
        memory responses (a plane row is :func:`spattn.formats.plane_row_bytes`), rows computed a
        second time at full precision, cycles the PE array computed, its multiply-accumulates.

    Latency and throughput
    ----------------------
    One head at a time; the blocks of a head run one after the other, and within a block fetch,
    Q·Kᵀ, softmax, recompute, value pruning, P·V and output follow each other. Per block of n keys
    (no stalls): Q·Kᵀ about ``2 * head_dim * ceil(n / C) + ceil(n / C) * (C + 1)`` cycles (the PE
    array loads, then computes), softmax about ``2 * R * (ceil(n / C) + 1)`` plus one division
    (``reciprocal_bits`` cycles), P·V about ``2 * n * ceil(head_dim / C)`` per precision pass, and a
    top-k run per pruned row. ``spattn bench attention`` measures whole heads (README).
    """

    #: Memory requests that may be in flight at once (the depth of the destination queue).
    INFLIGHT = 16

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        self.fmt = AttentionFormats.of(cfg)
        # Probabilities are the A operand of P·V: unsigned prob bits need one more as signed.
        self.operand_bits = max(cfg.act_bits, self.fmt.prob.bits + 1)
        # The value-pruning top-k engine takes one chunk of pe_cols probabilities per beat.
        self.topk_cfg = dataclasses.replace(
            cfg, topk_stream_lanes=cfg.pe_cols,
            topk_comparators=math.gcd(cfg.topk_comparators, cfg.pe_cols))
        counter = unsigned(COUNTER_BITS)
        super().__init__({
            "cmd": In(stream.Signature(attention_command_layout(cfg))),
            "mask": In(stream.Signature(mask_layout(cfg))),
            "mem_req": Out(stream.Signature(mem_request_layout(cfg))),
            "mem_resp": In(stream.Signature(mem_response_layout(cfg))),
            "probs": Out(stream.Signature(probs_layout(cfg))),
            "out": Out(stream.Signature(out_layout(cfg))),
            "busy": Out(1),
            "busy_cycles": Out(counter),
            "bytes_fetched": Out(counter),
            "rows_recomputed": Out(counter),
            "pe_busy_cycles": Out(counter),
            "pe_macs": Out(counter),
        })

    def elaborate(self, platform):
        cfg, fmt = self.cfg, self.fmt
        m = Module()
        T, d, R, C = cfg.max_tokens, cfg.head_dim, cfg.pe_rows, cfg.pe_cols
        M, L = cfg.act_msb_bits, cfg.act_lsb_bits
        NCH = chunk_count(cfg)
        TP = NCH * C                                   # keys padded to whole chunks
        DP = -(-d // C) * C                            # head dimensions padded to whole chunks
        count_shape = unsigned(cfg.count_bits)
        pos_shape = unsigned(bits_for(TP + R + C))
        score_shape = fmt.score.shape
        prob_bits = fmt.prob.bits
        counter = unsigned(COUNTER_BITS)

        m.submodules.pe = pe = PEArray(cfg, operand_bits=self.operand_bits)
        m.submodules.topk = topk = TopKEngine(self.topk_cfg)
        m.submodules.exp = exp = ExpLanes(fmt, C)

        # ---- Run, block and row state ------------------------------------------------------
        cmd = Signal(attention_command_layout(cfg))
        i0 = Signal(pos_shape)                         # first query of the block
        rows = Signal(range(R + 1))                    # queries in the block
        n_keys = Signal(count_shape)                   # keys of the block's scores
        n_chunks = Signal(range(NCH + 1))
        full = Signal()                                # the pass uses both planes
        mask_rows = [Signal(TP, name=f"mask_row{r}") for r in range(R)]
        row_max = [Signal(score_shape, name=f"row_max{r}") for r in range(R)]
        present_count = [Signal(count_shape, name=f"present_count{r}") for r in range(R)]
        redo = [Signal(name=f"redo{r}") for r in range(R)]
        pruned = [Signal(name=f"pruned{r}") for r in range(R)]
        kept = [Signal(TP, name=f"kept{r}") for r in range(R)]
        out_rows = [Signal(data.ArrayLayout(fmt.act.shape, d), name=f"out_row{r}") for r in range(R)]
        row_valid = [wire(m, r < rows, f"row_valid{r}") for r in range(R)]
        qk_mode = Signal()                             # the PE array computes Q·Kᵀ, not P·V
        # Rows a pass computes: Q·Kᵀ from MSB planes, every row; at full precision, the rows being
        # redone; P·V with MSB-only V, the other rows.
        in_pass = [wire(m, row_valid[r] & Mux(full, redo[r], qk_mode | ~redo[r]), f"in_pass{r}")
                   for r in range(R)]
        busy_cycles, bytes_fetched = Signal(counter), Signal(counter)
        rows_recomputed, pe_busy, pe_macs = Signal(counter), Signal(counter), Signal(counter)
        m.d.comb += [self.busy_cycles.eq(busy_cycles), self.bytes_fetched.eq(bytes_fetched),
                     self.rows_recomputed.eq(rows_recomputed), self.pe_busy_cycles.eq(pe_busy),
                     self.pe_macs.eq(pe_macs)]

        def select(values, index, name):
            """``values[index]`` for a list of same-shaped signals and a dynamic index."""
            chosen = values[0]
            for position, value in enumerate(values[1:], start=1):
                chosen = Mux(index == position, value, chosen)
            return wire(m, chosen, name, values[0].shape())

        def chunk_present(row, chunk, name):
            """Present flags of the ``pe_cols`` keys of ``chunk`` for the dynamic block row ``row``."""
            # Slice each row's chunk first: R small muxes instead of one over whole mask rows.
            mask_bits = select([wire(m, mask_row.word_select(chunk, C), f"{name}_mask{r}", C)
                                for r, mask_row in enumerate(mask_rows)], row, f"{name}_mask")
            flags = []
            for c in range(C):
                key = wire(m, chunk * C + c, f"{name}_key{c}", pos_shape)
                flags.append(wire(m, (key < n_keys) & (~cmd.causal | (key <= i0 + row)) &
                                  (~cmd.masked | mask_bits[c]), f"{name}_present{c}"))
            return flags

        def full_value(msb, lsb, use_lsb):
            """The stored value from its planes; the LSB plane reads as zeros unless ``use_lsb``."""
            return Cat(Mux(use_lsb, lsb, 0)[:L], msb).as_signed()

        # ---- Memory port: requests, the in-flight queue, responses into the buffers ----------
        desc_layout = data.StructLayout({"tensor": unsigned(2), "plane": 1,
                                         "row": unsigned(cfg.index_bits), "slot": range(R)})
        m.submodules.inflight = inflight = SyncFIFOBuffered(width=desc_layout.size, depth=self.INFLIGHT)
        req = Signal(desc_layout)
        req_valid = Signal()
        outstanding = Signal(range(self.INFLIGHT + 2))
        m.d.comb += [
            self.mem_req.valid.eq(req_valid & inflight.w_rdy),
            self.mem_req.payload.tensor.eq(req.tensor), self.mem_req.payload.plane.eq(req.plane),
            self.mem_req.payload.row.eq(req.row),
            inflight.w_data.eq(req), inflight.w_en.eq(self.mem_req.valid & self.mem_req.ready),
            self.mem_resp.ready.eq(inflight.r_rdy),
            inflight.r_en.eq(self.mem_resp.valid),
        ]
        req_take = wire(m, inflight.w_en, "req_take")
        resp_take = wire(m, self.mem_resp.valid & self.mem_resp.ready, "resp_take")
        m.d.sync += outstanding.eq(outstanding + req_take - resp_take)
        fetch_idle = wire(m, outstanding == 0, "fetch_idle")

        resp = data.View(desc_layout, inflight.r_data)
        lanes = self.mem_resp.payload.data
        msb_row = Cat(lanes[i][:M] for i in range(d))
        lsb_row = Cat(lanes[i][:L] for i in range(d))
        msb_layout = data.ArrayLayout(signed(M), d)
        lsb_layout = data.ArrayLayout(unsigned(L), d)
        buffers = {}
        for tensor, name in ((TENSOR_K, "k"), (TENSOR_V, "v")):
            for plane, layout, row_bits in ((PLANE_MSB, msb_layout, msb_row),
                                            (PLANE_LSB, lsb_layout, lsb_row)):
                mem = memory.Memory(shape=layout, depth=T, init=[])
                m.submodules[f"{name}_{'lsb' if plane else 'msb'}"] = mem
                write, read = mem.write_port(), mem.read_port()
                m.d.comb += [write.addr.eq(resp.row), write.data.eq(row_bits),
                             write.en.eq(resp_take & (resp.tensor == tensor) & (resp.plane == plane))]
                buffers[name, plane] = read
        q_msb = [Signal(msb_layout, name=f"q_msb{r}") for r in range(R)]
        q_lsb = [Signal(lsb_layout, name=f"q_lsb{r}") for r in range(R)]
        with m.If(resp_take & (resp.tensor == TENSOR_Q)):
            for r in range(R):
                with m.If(resp.slot == r):
                    with m.If(resp.plane == PLANE_MSB):
                        m.d.sync += q_msb[r].eq(msb_row)
                    with m.Else():
                        m.d.sync += q_lsb[r].eq(lsb_row)
        with m.If(resp_take):
            m.d.sync += bytes_fetched.eq(bytes_fetched + Mux(resp.plane == PLANE_LSB,
                                                             plane_row_bytes(d, L), plane_row_bytes(d, M)))

        # Loaded-row bitmaps: a plane row is requested at most once per head.
        loaded = {key: Signal(TP, name=f"loaded_{key[0]}_{'lsb' if key[1] else 'msb'}")
                  for key in buffers}

        # Fetch scans: Q scans walk the block rows; key scans walk the keys a chunk of C at a time
        # (a chunk with nothing to fetch takes one cycle, its wanted keys one cycle each).
        scan = Signal(pos_shape)
        chunk_keys = [wire(m, scan * C + c, f"scan_key{c}", pos_shape) for c in range(C)]
        scan_present, scan_used = [], []
        for r in range(R):
            mask_bits = mask_rows[r].word_select(scan, C)
            kept_bits = kept[r].word_select(scan, C)
            present = [wire(m, row_valid[r] & (key < n_keys) & (~cmd.causal | (key <= i0 + r)) &
                            (~cmd.masked | mask_bits[c]), f"scan_present{r}_{c}")
                       for c, key in enumerate(chunk_keys)]
            scan_present.append(present)
            scan_used.append([wire(m, Mux(pruned[r], row_valid[r] & kept_bits[c], present[c]),
                                   f"scan_used{r}_{c}") for c in range(C)])

        def lanes_wanted(name, per_row, plane):
            """Lanes of the scan's chunk that some row wants (LSB: some row being redone) and that
            are not loaded yet."""
            bitmap = loaded[name, plane].word_select(scan, C)
            return [wire(m, Cat(*(per_row[r][c] & (redo[r] if plane == PLANE_LSB else 1)
                                  for r in range(R))).any() & ~bitmap[c], f"want_{name}{plane}_{c}")
                    for c in range(C)]

        key_wants = {(name, plane): lanes_wanted(name, scan_present if name == "k" else scan_used, plane)
                     for name in ("k", "v") for plane in (PLANE_MSB, PLANE_LSB)}

        def any_of(flags, name):
            return wire(m, Cat(*flags).any(), name)

        # ---- PE array operands and results ---------------------------------------------------
        # Q·Kᵀ: A = the block's Q rows (d beats), B = Kᵀ in panels of C keys (d beats each) taken
        # from a panel register that is refilled from the K buffer one key per cycle.
        # P·V: A = the block's kept probabilities (one beat per key), B = V in panels of C head
        # dimensions (one beat per key each), read from the V buffer.
        a_pos = Signal(pos_shape)
        a_done = Signal()
        b_pos = Signal(pos_shape)                      # beat within the B panel
        b_panel = Signal(pos_shape)
        b_fill = Signal(range(C + 2))                  # Q·Kᵀ: panel register fill step
        b_done = Signal()
        b_primed = Signal()
        a_take = wire(m, pe.a.valid & pe.a.ready, "a_take")
        b_take = wire(m, pe.b.valid & pe.b.ready, "b_take")

        k_panel_msb = [Signal(msb_layout, name=f"k_panel_msb{c}") for c in range(C)]
        k_panel_lsb = [Signal(lsb_layout, name=f"k_panel_lsb{c}") for c in range(C)]

        # Probability banks: one per block row, chunks of C probabilities.
        prob_chunk = data.ArrayLayout(fmt.prob.shape, C)
        prob_reads, prob_writes = [], []
        for r in range(R):
            mem = memory.Memory(shape=prob_chunk, depth=NCH, init=[])
            m.submodules[f"probs{r}"] = mem
            prob_writes.append(mem.write_port())
            prob_reads.append(mem.read_port())
        # The banks read ``prob_next``; their data is the chunk ``prob_addr`` a cycle later, and
        # ``prob_primed`` says that cycle has passed since the walk started.
        prob_addr, prob_next = Signal(range(NCH + 1)), Signal(range(NCH + 1))
        prob_primed = Signal()
        m.d.comb += prob_next.eq(prob_addr)
        m.d.sync += [prob_addr.eq(prob_next), prob_primed.eq(1)]
        for port in prob_reads:
            m.d.comb += port.addr.eq(prob_next)

        # A beat: Q·Kᵀ row r's dimension a_pos; P·V row r's probability of key a_pos (zero when the
        # row is not in the pass or does not keep that key's V row).
        a_lane = Signal(range(C))
        for r in range(R):
            q_value = full_value(q_msb[r][a_pos], q_lsb[r][a_pos], full)
            keeps = in_pass[r] & (~pruned[r] | kept[r].bit_select(a_pos, 1))
            p_value = Mux(keeps, prob_reads[r].data.as_value().word_select(a_lane, prob_bits), 0)
            m.d.comb += pe.a.payload[r].eq(Mux(qk_mode, q_value, p_value))
        v_msb_read, v_lsb_read = buffers["v", PLANE_MSB], buffers["v", PLANE_LSB]
        v_msb_lanes = Cat(v_msb_read.data.as_value(), Const(0, (DP - d) * M)).word_select(b_panel, C * M)
        v_lsb_lanes = Cat(v_lsb_read.data.as_value(), Const(0, (DP - d) * L)).word_select(b_panel, C * L)
        for c in range(C):
            k_value = full_value(k_panel_msb[c][b_pos], k_panel_lsb[c][b_pos], full)
            v_value = full_value(v_msb_lanes.word_select(c, M), v_lsb_lanes.word_select(c, L), full)
            m.d.comb += pe.b.payload[c].eq(Mux(qk_mode, k_value, v_value))

        # ---- Q·Kᵀ results: scale, round, saturate; scores into the score buffer; row maxima ---
        scores = memory.Memory(shape=data.ArrayLayout(score_shape, C), depth=R * NCH, init=[])
        m.submodules.scores = scores
        score_w, score_r = scores.write_port(), scores.read_port()
        res_row = Signal(range(R))
        res_panel = Signal(range(max(NCH, -(-d // C))))
        res_last = Signal()
        res_take = wire(m, pe.result.valid & pe.result.ready, "res_take")
        s1_valid, s1_row, s1_chunk = Signal(), Signal(range(R)), Signal(range(NCH))
        s1_product = [Signal(signed(cfg.acc_bits + 17), name=f"s1_product{c}") for c in range(C)]
        s2_valid, s2_row, s2_chunk = Signal(), Signal(range(R)), Signal(range(NCH))
        s2_scores = [Signal(score_shape, name=f"s2_score{c}") for c in range(C)]
        qk_result = wire(m, res_take & qk_mode, "qk_result")
        m.d.sync += [s1_valid.eq(qk_result), s1_row.eq(res_row), s1_chunk.eq(res_panel),
                     s2_valid.eq(s1_valid), s2_row.eq(s1_row), s2_chunk.eq(s1_chunk)]
        half = 1 << (fmt.scale_shift - 1)
        for c in range(C):
            m.d.sync += s1_product[c].eq(pe.result.payload.data[c] * fmt.scale_mult)
            scaled = wire(m, (s1_product[c] + half) >> fmt.scale_shift, f"scaled{c}",
                          signed(cfg.acc_bits + 17))
            m.d.sync += s2_scores[c].eq(Mux(scaled > fmt.score.max, fmt.score.max,
                                            Mux(scaled < fmt.score.min, fmt.score.min, scaled)))
        s2_in_pass = select(in_pass, s2_row, "s2_in_pass")
        m.d.comb += [score_w.addr.eq(s2_row * NCH + s2_chunk), score_w.en.eq(s2_valid & s2_in_pass)]
        for c in range(C):
            m.d.comb += score_w.data[c].eq(s2_scores[c])
        s2_present = chunk_present(s2_row, s2_chunk, "s2")
        s2_max = masked_reduce(m, s2_present, s2_scores, lambda a, b: a >= b, fmt.score.min, "s2_max")
        s2_count = popcount(m, s2_present, "s2_count")
        with m.If(s2_valid & s2_in_pass):
            for r in range(R):
                with m.If(s2_row == r):
                    m.d.sync += [row_max[r].eq(Mux(s2_max > row_max[r], s2_max, row_max[r])),
                                 present_count[r].eq(present_count[r] + s2_count)]
        qk_drained = wire(m, ~s1_valid & ~s2_valid, "qk_drained")

        # P·V results: round, saturate, into the output rows of the pass.
        out_half = 1 << (fmt.prob.frac - 1)
        with m.If(res_take & ~qk_mode):
            for r in range(R):
                with m.If((res_row == r) & in_pass[r]):
                    for c in range(C):
                        for dim in range(c, d, C):
                            with m.If(res_panel == dim // C):
                                rounded = (pe.result.payload.data[c] + out_half) >> fmt.prob.frac
                                m.d.sync += out_rows[r][dim].eq(
                                    Mux(rounded > fmt.act.max, fmt.act.max,
                                        Mux(rounded < fmt.act.min, fmt.act.min, rounded)))
        with m.If(res_take):
            with m.If(res_row == rows - 1):
                m.d.sync += [res_row.eq(0), res_panel.eq(res_panel + 1)]
            with m.Else():
                m.d.sync += res_row.eq(res_row + 1)
            with m.If(pe.result.payload.last):
                m.d.sync += res_last.eq(1)
        m.d.comb += pe.result.ready.eq(1)

        # ---- Softmax: every row's exponent sum, then every row's probabilities ----------------
        # Rows go back to back through one pipeline: issue -> score read (1) -> exponent lanes
        # (2, 3) -> sum or probability (4) -> probability bank (5). Each block row has its own
        # divider, started as the row's last chunk is summed, so divisions overlap the later rows.
        sm_row = Signal(range(R + 1))
        sm_chunk = Signal(range(NCH + 1))
        sm_issue = Signal()
        sm_probs = Signal()                            # second pass: probabilities, not sums
        total = Signal(unsigned(fmt.exp_frac + 1 + bits_for(T)))
        tag_layout = data.StructLayout({"valid": 1, "row": range(R), "chunk": range(NCH), "last": 1})
        t1, t2, t3, t4 = (Signal(tag_layout, name=f"t{stage}") for stage in range(1, 5))
        m.d.sync += [t1.valid.eq(sm_issue), t1.row.eq(sm_row), t1.chunk.eq(sm_chunk),
                     t1.last.eq(sm_chunk == n_chunks - 1), t2.eq(t1), t3.eq(t2), t4.eq(t3),
                     t4.valid.eq(t3.valid & sm_probs)]
        m.d.comb += [score_r.addr.eq(sm_row * NCH + sm_chunk), score_r.en.eq(1)]
        t1_max = select(row_max, t1.row, "t1_max")
        for c in range(C):
            m.d.comb += exp.x[c].eq(t1_max - score_r.data[c])
        t1_present = chunk_present(t1.row, t1.chunk, "t1")
        t2_present, t3_present = Signal(C), Signal(C)
        m.d.sync += [t2_present.eq(Cat(*t1_present)), t3_present.eq(t2_present)]
        exps = [wire(m, Mux(t3_present[c], exp.e[c], 0), f"exp{c}", unsigned(fmt.exp_frac + 1))
                for c in range(C)]
        row_total = wire(m, total + add_tree(m, exps, "chunk_sum", total.shape()), "row_total",
                         total.shape())
        summing = wire(m, t3.valid & ~sm_probs, "summing")
        with m.If(summing):
            m.d.sync += total.eq(Mux(t3.last, 0, row_total))
        recips = []
        for r in range(R):
            divider = SerialDivider(*reciprocal_bits(fmt, T))
            m.submodules[f"divider{r}"] = divider
            m.d.comb += [divider.dividend.eq((1 << (fmt.exp_frac + fmt.prob.frac)) + (row_total >> 1)),
                         divider.divisor.eq(row_total),
                         divider.start.eq(summing & t3.last & (t3.row == r))]
            recips.append((divider.quotient[:fmt.prob.frac + 2], divider.idle))
        recip = select([value for value, _ in recips], t3.row, "recip")
        t4_product = [Signal(unsigned(fmt.exp_frac + fmt.prob.frac + 3), name=f"t4_product{c}")
                      for c in range(C)]
        for c in range(C):
            m.d.sync += t4_product[c].eq(exps[c] * recip)
        exp_half = 1 << (fmt.exp_frac - 1)
        for r, port in enumerate(prob_writes):
            m.d.comb += [port.addr.eq(t4.chunk), port.en.eq(t4.valid & (t4.row == r))]
            for c in range(C):
                p = (t4_product[c] + exp_half) >> fmt.exp_frac
                m.d.comb += port.data[c].eq(Mux(p > fmt.prob.max, fmt.prob.max, p))
        sm_drained = wire(m, ~t1.valid & ~t2.valid & ~t3.valid & ~t4.valid, "sm_drained")
        row_recip = select([value for value, _ in recips], sm_row, "row_recip")
        row_divided = select([idle for _, idle in recips], sm_row, "row_divided")
        # The row maximum's exponent is exactly 2**exp_frac, so the row's largest probability is
        # min(recip, prob.max): the confidence check needs no pass over the probabilities.
        max_prob = wire(m, Mux(row_recip > fmt.prob.max, fmt.prob.max, row_recip), "max_prob",
                        unsigned(prob_bits))

        # ---- Value pruning: the top-k engine ranks a row's probabilities -----------------------
        keep_product = wire(m, cmd.value_keep * select(present_count, sm_row, "sel_count"),
                            "keep_product", unsigned(VALUE_KEEP_FRAC + 1 + cfg.count_bits))
        row_count = select(present_count, sm_row, "row_count")
        wanted = wire(m, (keep_product + (1 << VALUE_KEEP_FRAC) - 1) >> VALUE_KEEP_FRAC, "keep_wanted",
                      count_shape)
        keep = wire(m, Mux(wanted == 0, 1, wanted), "keep")
        m.d.comb += [topk.cmd.payload.n.eq(n_keys), topk.cmd.payload.k.eq(keep)]
        feed_present = chunk_present(sm_row, prob_addr, "feed")
        row_probs = select([port.data.as_value() for port in prob_reads], sm_row, "row_probs")
        for c in range(C):
            prob = row_probs.word_select(c, prob_bits)
            m.d.comb += topk.scores.payload[c].eq(Mux(feed_present[c], prob, fmt.score.min))
        kept_new = Signal(TP)
        index_beat = topk.indices.payload
        decoded = Const(0, TP)
        for lane in range(self.topk_cfg.topk_comparators):
            decoded = decoded | Mux(lane < index_beat.count, Const(1, TP) << index_beat.index[lane], 0)
        m.d.comb += kept_new.eq(decoded)

        # ---- Output streams -------------------------------------------------------------------
        m.d.comb += [self.probs.payload.row.eq(i0 + sm_row), self.probs.payload.chunk.eq(prob_addr),
                     self.probs.payload.last.eq(prob_addr == n_chunks - 1)]
        for c in range(C):
            m.d.comb += self.probs.payload.data[c].eq(row_probs.word_select(c, prob_bits))
        out_row = select([row.as_value() for row in out_rows], sm_row, "out_row")
        out_view = data.View(data.ArrayLayout(fmt.act.shape, d), out_row)
        magnitudes = [wire(m, Mux(out_view[i] < 0, -out_view[i], out_view[i]), f"out_abs{i}",
                           unsigned(cfg.act_bits)) for i in range(d)]
        m.d.comb += [self.out.payload.row.eq(i0 + sm_row), self.out.payload.data.eq(out_row),
                     self.out.payload.magnitude.eq(add_tree(m, magnitudes, "magnitude",
                                                            self.out.payload.magnitude.shape())),
                     self.out.payload.full_precision.eq(select(redo, sm_row, "out_redo"))]

        # ---- Control --------------------------------------------------------------------------
        any_redo = any_of([row_valid[r] & redo[r] for r in range(R)], "any_redo")
        any_plain = any_of([row_valid[r] & ~redo[r] for r in range(R)], "any_plain")
        redo_count = popcount(m, [row_valid[r] & redo[r] for r in range(R)], "redo_count")

        def scan_state(name, tensor, plane, row, limit, wanted, taken, next_state):
            """Walk ``scan`` up to ``limit``, requesting row ``row`` of (tensor, plane) while it is
            ``wanted`` (``taken()``: what a granted request does besides the request)."""
            with m.State(name):
                m.d.comb += [req.tensor.eq(tensor), req.plane.eq(plane), req.row.eq(row),
                             req.slot.eq(scan)]
                with m.If(scan == limit):
                    m.d.sync += scan.eq(0)
                    m.next = next_state
                with m.Elif(~wanted):
                    m.d.sync += scan.eq(scan + 1)
                with m.Else():
                    m.d.comb += req_valid.eq(1)
                    with m.If(req_take):
                        taken()

        def scan_rows(name, plane, want, next_state):
            """Request the Q rows of the block (``want``: for the row ``scan``) into their slots."""
            def next_row():
                m.d.sync += scan.eq(scan + 1)
            scan_state(name, TENSOR_Q, plane, i0 + scan, rows, want, next_row, next_state)

        def scan_keys(name, tensor, plane, next_state):
            """Request the K or V rows of ``plane`` that the block wants and were not fetched yet,
            a chunk of C keys per step, lowest wanted key first."""
            key = "k" if tensor == TENSOR_K else "v"
            wants = key_wants[key, plane]
            lane = Const(0, range(C))
            for c in reversed(range(C)):
                lane = Mux(wants[c], c, lane)
            row = wire(m, scan * C + lane, f"{name.lower()}_row", pos_shape)

            def mark_loaded():
                m.d.sync += loaded[key, plane].bit_select(row, 1).eq(1)
            scan_state(name, tensor, plane, row, n_chunks, any_of(wants, f"{name.lower()}_any"),
                       mark_loaded, next_state)

        def start_matmul(qk, is_full):
            """Set up a PE-array pass: Q·Kᵀ (``qk``) or P·V, at full precision or not."""
            m.d.sync += [qk_mode.eq(qk), full.eq(is_full), a_pos.eq(0), a_done.eq(0),
                         a_lane.eq(0), b_pos.eq(0), b_panel.eq(0), b_fill.eq(0), b_done.eq(0),
                         b_primed.eq(0), res_row.eq(0), res_panel.eq(0), res_last.eq(0),
                         prob_addr.eq(0), prob_primed.eq(0), sm_row.eq(0), sm_chunk.eq(0),
                         sm_probs.eq(0), total.eq(0)]
            if qk:
                for r in range(R):
                    with m.If(row_valid[r] & (Const(not is_full) | redo[r])):
                        m.d.sync += [row_max[r].eq(fmt.score.min), present_count[r].eq(0)]

        def softmax_rows(name, next_state):
            """Softmax of every row in the pass (states ``name``_SUMS and ``name``_PROBS)."""
            def walk_rows(ready, chunk_first=None):
                with m.If(sm_row == rows):
                    pass                               # every row issued: the state waits to drain
                with m.Elif(~sm_in_pass):
                    m.d.sync += sm_row.eq(sm_row + 1)
                with m.Elif(ready):
                    m.d.comb += sm_issue.eq(1)
                    if chunk_first is not None:
                        with m.If(sm_chunk == 0):
                            chunk_first()
                    with m.If(sm_chunk == n_chunks - 1):
                        m.d.sync += [sm_chunk.eq(0), sm_row.eq(sm_row + 1)]
                    with m.Else():
                        m.d.sync += sm_chunk.eq(sm_chunk + 1)

            with m.State(f"{name}_SUMS"):
                with m.If((sm_row == rows) & sm_drained):
                    m.d.sync += [sm_row.eq(0), sm_chunk.eq(0), sm_probs.eq(1)]
                    m.next = f"{name}_PROBS"
                walk_rows(1)
            with m.State(f"{name}_PROBS"):
                with m.If((sm_row == rows) & sm_drained):
                    m.d.sync += sm_probs.eq(0)
                    m.next = next_state

                def decide():
                    with m.If(~full):
                        for r in range(R):
                            with m.If(sm_row == r):
                                m.d.sync += redo[r].eq(~cmd.progressive | (max_prob < cmd.threshold))
                walk_rows(row_divided, decide)

        def matmul_states(name, next_state):
            """Issue the PE-array command, feed A and B, take the results (states ``name``_*)."""
            with m.State(f"{name}_CMD"):
                m.d.comb += [pe.cmd.valid.eq(1), pe.cmd.payload.threshold.eq(0),
                             pe.cmd.payload.m.eq(rows),
                             pe.cmd.payload.k.eq(Mux(qk_mode, d, n_keys)),
                             pe.cmd.payload.n.eq(Mux(qk_mode, n_keys, d))]
                with m.If(pe.cmd.ready):
                    m.next = f"{name}_RUN"
            with m.State(f"{name}_RUN"):
                feed_operands()
                with m.If(res_last & qk_drained & ~pe.busy):
                    m.d.sync += [pe_busy.eq(pe_busy + pe.busy_cycles), pe_macs.eq(pe_macs + pe.macs)]
                    m.next = next_state

        def feed_operands():
            a_last = Mux(qk_mode, d, n_keys) - 1
            # A: Q rows are registers; probabilities come from the banks one cycle after their address.
            m.d.comb += pe.a.valid.eq(~a_done & (qk_mode | prob_primed))
            with m.If(a_take):
                m.d.sync += a_pos.eq(a_pos + 1)
                with m.If(a_lane == C - 1):
                    m.d.sync += a_lane.eq(0)
                with m.Else():
                    m.d.sync += a_lane.eq(a_lane + 1)
                with m.If(a_pos == a_last):
                    m.d.sync += a_done.eq(1)
            with m.If(~qk_mode & a_take & (a_lane == C - 1)):
                m.d.comb += prob_next.eq(prob_addr + 1)
            # B, Q·Kᵀ: fill the panel register with C keys (reads of the K buffer, data a cycle
            # later), then d beats, one head dimension each.
            k_msb_read, k_lsb_read = buffers["k", PLANE_MSB], buffers["k", PLANE_LSB]
            b_panel_last = Mux(qk_mode, n_chunks, -(-d // C)) - 1
            with m.If(qk_mode):
                m.d.comb += [k_msb_read.addr.eq(b_panel * C + b_fill), k_lsb_read.addr.eq(b_panel * C + b_fill)]
                with m.If(~b_done & (b_fill <= C)):
                    m.d.sync += b_fill.eq(b_fill + 1)
                    for c in range(C):
                        with m.If(b_fill == c + 1):
                            m.d.sync += [k_panel_msb[c].eq(k_msb_read.data), k_panel_lsb[c].eq(k_lsb_read.data)]
                m.d.comb += pe.b.valid.eq(~b_done & (b_fill == C + 1))
                with m.If(b_take):
                    with m.If(b_pos == d - 1):
                        m.d.sync += [b_pos.eq(0), b_panel.eq(b_panel + 1), b_fill.eq(0)]
                        with m.If(b_panel == b_panel_last):
                            m.d.sync += b_done.eq(1)
                    with m.Else():
                        m.d.sync += b_pos.eq(b_pos + 1)
            # B, P·V: row b_pos of V's panel b_panel from the V buffer, a cycle after its address.
            with m.Else():
                b_next = Signal(pos_shape)
                m.d.comb += [v_msb_read.addr.eq(b_next), v_lsb_read.addr.eq(b_next), b_next.eq(b_pos),
                             pe.b.valid.eq(~b_done & b_primed)]
                m.d.sync += b_primed.eq(1)
                with m.If(b_take):
                    with m.If(b_pos == n_keys - 1):
                        m.d.comb += b_next.eq(0)
                        m.d.sync += [b_pos.eq(0), b_panel.eq(b_panel + 1)]
                        with m.If(b_panel == b_panel_last):
                            m.d.sync += b_done.eq(1)
                    with m.Else():
                        m.d.comb += b_next.eq(b_pos + 1)
                        m.d.sync += b_pos.eq(b_pos + 1)

        def walk_prob_chunks(take, row_done):
            """Advance the probability walk (chunk by chunk, row by row) on ``take``; ``row_done``
            builds what happens after a row's last chunk."""
            with m.If(take):
                with m.If(prob_addr == n_chunks - 1):
                    m.d.comb += prob_next.eq(0)
                    row_done()
                with m.Else():
                    m.d.comb += prob_next.eq(prob_addr + 1)

        sm_in_pass = select(in_pass, sm_row, "sm_in_pass")
        scan_redo_q = select(redo, scan, "scan_redo_q")
        left = wire(m, cmd.n - i0, "block_left", pos_shape)
        keys = wire(m, Mux(cmd.causal & (i0 + R < cmd.n), i0 + R, cmd.n), "block_keys", count_shape)
        block_chunks = wire(m, sum(keys > q * C for q in range(NCH)), "block_chunks", range(NCH + 1))

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [cmd.eq(self.cmd.payload), i0.eq(0), busy_cycles.eq(0),
                                 bytes_fetched.eq(0), rows_recomputed.eq(0), pe_busy.eq(0),
                                 pe_macs.eq(0), *(bitmap.eq(0) for bitmap in loaded.values())]
                    m.next = "BLOCK"

            with m.State("BLOCK"):
                m.d.sync += [rows.eq(Mux(left >= R, R, left)), n_keys.eq(keys), scan.eq(0),
                             n_chunks.eq(block_chunks),
                             *(flag.eq(0) for flag in redo + pruned)]
                with m.If(cmd.masked):
                    m.next = "MASK"
                with m.Else():
                    m.next = "FETCH_Q_MSB"

            with m.State("MASK"):
                m.d.comb += self.mask.ready.eq(1)
                with m.If(self.mask.valid):
                    for r in range(R):
                        with m.If(scan == r):
                            m.d.sync += mask_rows[r].eq(self.mask.payload.keys)
                    m.d.sync += scan.eq(scan + 1)
                    with m.If(scan == rows - 1):
                        m.d.sync += scan.eq(0)
                        m.next = "FETCH_Q_MSB"

            scan_rows("FETCH_Q_MSB", PLANE_MSB, Const(1, 1), "FETCH_K_MSB")
            scan_keys("FETCH_K_MSB", TENSOR_K, PLANE_MSB, "FETCHED_MSB")
            with m.State("FETCHED_MSB"):
                with m.If(fetch_idle):
                    with m.If(cmd.progressive):
                        start_matmul(qk=True, is_full=False)
                        m.next = "QK_MSB_CMD"
                    with m.Else():
                        m.d.sync += [flag.eq(1) for flag in redo]
                        m.next = "DECIDE"
            matmul_states("QK_MSB", "SOFTMAX_MSB_SUMS")
            softmax_rows("SOFTMAX_MSB", "DECIDE")

            with m.State("DECIDE"):
                with m.If(cmd.progressive):
                    m.d.sync += rows_recomputed.eq(rows_recomputed + redo_count)
                with m.If(any_redo):
                    m.next = "FETCH_Q_LSB"
                with m.Else():
                    m.next = "EMIT_PROBS_START"
            scan_rows("FETCH_Q_LSB", PLANE_LSB, scan_redo_q, "FETCH_K_LSB")
            scan_keys("FETCH_K_LSB", TENSOR_K, PLANE_LSB, "FETCHED_LSB")
            with m.State("FETCHED_LSB"):
                with m.If(fetch_idle):
                    start_matmul(qk=True, is_full=True)
                    m.next = "QK_FULL_CMD"
            matmul_states("QK_FULL", "SOFTMAX_FULL_SUMS")
            softmax_rows("SOFTMAX_FULL", "EMIT_PROBS_START")

            with m.State("EMIT_PROBS_START"):
                m.d.sync += [sm_row.eq(0), prob_addr.eq(0), prob_primed.eq(0)]
                m.next = "EMIT_PROBS"
            with m.State("EMIT_PROBS"):
                m.d.comb += self.probs.valid.eq(prob_primed)
                def next_row():
                    m.d.sync += sm_row.eq(sm_row + 1)
                    with m.If(sm_row == rows - 1):
                        m.d.sync += sm_row.eq(0)
                        m.next = "SELECT"
                walk_prob_chunks(self.probs.valid & self.probs.ready, next_row)

            with m.State("SELECT"):
                with m.If(sm_row == rows):
                    m.d.sync += scan.eq(0)
                    m.next = "FETCH_V_MSB"
                with m.Elif(keep >= row_count):
                    for r in range(R):
                        with m.If(sm_row == r):
                            m.d.sync += pruned[r].eq(0)
                    m.d.sync += sm_row.eq(sm_row + 1)
                with m.Else():
                    for r in range(R):
                        with m.If(sm_row == r):
                            m.d.sync += [pruned[r].eq(1), kept[r].eq(0)]
                    m.next = "TOPK_CMD"
            with m.State("TOPK_CMD"):
                m.d.comb += topk.cmd.valid.eq(1)
                with m.If(topk.cmd.ready):
                    m.d.sync += [prob_addr.eq(0), prob_primed.eq(0)]
                    m.next = "TOPK_FEED"
            with m.State("TOPK_FEED"):
                m.d.comb += topk.scores.valid.eq(prob_primed)
                def fed():
                    m.next = "TOPK_COLLECT"
                walk_prob_chunks(topk.scores.valid & topk.scores.ready, fed)
            with m.State("TOPK_COLLECT"):
                m.d.comb += topk.indices.ready.eq(1)
                with m.If(topk.indices.valid):
                    for r in range(R):
                        with m.If(sm_row == r):
                            m.d.sync += kept[r].eq(kept[r] | kept_new)
                    with m.If(index_beat.last):
                        m.d.sync += sm_row.eq(sm_row + 1)
                        m.next = "SELECT"

            scan_keys("FETCH_V_MSB", TENSOR_V, PLANE_MSB, "FETCH_V_LSB")
            scan_keys("FETCH_V_LSB", TENSOR_V, PLANE_LSB, "FETCHED_V")
            with m.State("FETCHED_V"):
                with m.If(fetch_idle):
                    with m.If(any_plain):
                        start_matmul(qk=False, is_full=False)
                        m.next = "PV_MSB_CMD"
                    with m.Else():
                        start_matmul(qk=False, is_full=True)
                        m.next = "PV_FULL_CMD"
            matmul_states("PV_MSB", "PV_MSB_DONE")
            with m.State("PV_MSB_DONE"):
                with m.If(any_redo):
                    start_matmul(qk=False, is_full=True)
                    m.next = "PV_FULL_CMD"
                with m.Else():
                    m.next = "EMIT_OUT"
            matmul_states("PV_FULL", "EMIT_OUT")

            with m.State("EMIT_OUT"):
                m.d.comb += self.out.valid.eq(1)
                with m.If(self.out.ready):
                    m.d.sync += sm_row.eq(sm_row + 1)
                    with m.If(sm_row == rows - 1):
                        m.d.sync += [sm_row.eq(0), i0.eq(i0 + R)]
                        with m.If(i0 + R >= cmd.n):
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "BLOCK"

        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        with m.If(self.busy):
            m.d.sync += busy_cycles.eq(busy_cycles + 1)
        return m
