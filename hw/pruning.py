"""SpAtten's cascade pruning controller: importance accumulators, keep counts, alive lists."""

import dataclasses

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spattn.config import AccelConfig
from spattn.formats import VALUE_KEEP_FRAC, AttentionFormats, bits_for

from .attention.common import ReadPort, probs_layout
from .lanes import add_tree
from .topk import TopKEngine

__all__ = ["PruningController", "prune_command_layout", "magnitude_layout", "PRUNING_TOPK_LANES"]

#: Comparator lanes of the controller's top-k engine. It ranks at most ``max_tokens`` importances
#: once per layer, fed one per cycle, so more lanes would only add LUTs (its compaction networks
#: grow as lanes squared) to a step that takes a few hundred cycles of a layer's hundred thousand.
PRUNING_TOPK_LANES = 4


def prune_command_layout(cfg: AccelConfig):
    """End of a layer: keep ratios (``VALUE_KEEP_FRAC`` fraction bits, in ``1 .. 2**VALUE_KEEP_FRAC``)."""
    ratio = unsigned(VALUE_KEEP_FRAC + 1)
    return data.StructLayout({"token_keep": ratio, "head_keep": ratio})


def magnitude_layout(cfg: AccelConfig):
    """One output row's L1 magnitude, for head ``head`` (the model's head number)."""
    return data.StructLayout({
        "head": unsigned(bits_for(cfg.heads - 1)),
        "magnitude": unsigned(bits_for(cfg.head_dim << (cfg.act_bits - 1))),
    })


class PruningController(wiring.Component):
    """Token and head importance across layers, and the cascade selection of the survivors,
    bit-exact with :func:`spattn.sim.golden.pruning.survivors` (integer arithmetic) as
    :func:`spattn.sim.golden.sparse.run_sentence` applies it.

    State: the token importance of every sentence position (``token_importance_bits``, block RAM),
    the head importance of every head (``head_importance_bits``, LUT RAM), the alive-token list
    (sentence positions, ascending; block RAM, two banks: the live one and the one being built) and
    the alive-head list (head numbers, ascending; LUT RAM, two banks).

    Members
    -------
    begin : In(1), tokens : In(count)
        A pulse starts a sequence of ``tokens`` tokens (``1 .. max_tokens``): importances become 0,
        every token and head is alive. Takes ``max_tokens`` cycles (``busy``).
    probs : In(stream of the attention core's ``probs_layout``)
        A head's final probabilities; key ``key`` is the ``key``-th alive token; the lanes whose
        ``final`` bit is set are added to its importance. Always ready; 3 cycles to memory.
    magnitude : In(stream of :func:`magnitude_layout`)
        An output row's magnitude, added to its head's importance. Always ready.
    prune : In(stream of :func:`prune_command_layout`)
        Accepted when idle, after the layer's last ``probs`` and ``magnitude`` beats. Keeps
        ``kept_count(token_keep, tokens_alive)`` tokens and ``kept_count(head_keep, heads_alive)``
        heads (:func:`spattn.formats.kept_count`) of highest importance; [CLS] (the first alive
        token, always sentence position 0) is scored above every importance so it always stays;
        ties go to the lower index. Both selections run on one :class:`~.topk.TopKEngine` of
        ``importance_bits``-wide scores with ``PRUNING_TOPK_LANES`` lanes, fed one score per cycle.
    busy : Out(1)
        High while a ``begin`` or a ``prune`` is in progress.
    tokens_alive : Out(count), heads_alive : Out(bits_for(heads))
        Sizes of the live lists.
    alive_read : In(ReadPort(max_tokens, index))
        The live token list: position of the ``addr``-th alive token, a cycle later.
    head_read_addr : In(range(heads)), head_read_data : Out(range(heads))
        The live head list, combinational (LUT RAM).

    Latency: a prune takes about ``2 * tokens_alive`` cycles plus the top-k engine's runs.
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        head_shape = unsigned(bits_for(cfg.heads - 1))
        super().__init__({
            "begin": In(1), "tokens": In(unsigned(cfg.count_bits)),
            "probs": In(stream.Signature(probs_layout(cfg))),
            "magnitude": In(stream.Signature(magnitude_layout(cfg))),
            "prune": In(stream.Signature(prune_command_layout(cfg))),
            "busy": Out(1),
            "tokens_alive": Out(unsigned(cfg.count_bits)),
            "heads_alive": Out(unsigned(bits_for(cfg.heads))),
            "alive_read": In(ReadPort(cfg.max_tokens, unsigned(cfg.index_bits))),
            "head_read_addr": In(head_shape), "head_read_data": Out(head_shape),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        T, H, R = cfg.max_tokens, cfg.heads, cfg.pe_rows
        index, count = unsigned(cfg.index_bits), unsigned(cfg.count_bits)
        head_shape = unsigned(bits_for(H - 1))
        fmt = AttentionFormats.of(cfg)
        lanes = min(PRUNING_TOPK_LANES, cfg.topk_comparators)
        engine_cfg = dataclasses.replace(cfg, topk_comparators=lanes, topk_stream_lanes=lanes)
        m.submodules.topk = topk = TopKEngine(engine_cfg, score_bits=cfg.importance_bits)
        P = lanes

        tokens_alive = Signal(count)
        heads_alive = Signal(unsigned(bits_for(H)))
        bank = Signal()      # the live bank of both lists; the other one is built by a prune
        m.d.comb += [self.tokens_alive.eq(tokens_alive), self.heads_alive.eq(heads_alive)]

        def token_slot(which_bank, slot):
            return Mux(which_bank, T + slot, slot)

        def head_slot(which_bank, slot):
            return Mux(which_bank, H + slot, slot)

        # ---- memories ------------------------------------------------------------------------
        m.submodules.token_list = token_list = memory.Memory(shape=index, depth=2 * T, init=[])
        m.submodules.token_importance = token_importance = memory.Memory(
            shape=unsigned(cfg.token_importance_bits), depth=T, init=[])
        m.submodules.head_list = head_list = memory.Memory(shape=head_shape, depth=2 * H, init=[])
        m.submodules.head_importance = head_importance = memory.Memory(
            shape=unsigned(cfg.head_importance_bits), depth=H, init=[])
        list_write = token_list.write_port()
        list_read = token_list.read_port()        # accumulation (idle), feed and map (prune)
        list_external = token_list.read_port()
        imp_write = token_importance.write_port()
        imp_read = token_importance.read_port(transparent_for=(imp_write,))
        hlist_write = head_list.write_port()
        hlist_read = head_list.read_port(domain="comb")
        hlist_external = head_list.read_port(domain="comb")
        himp_write = head_importance.write_port()
        himp_acc = head_importance.read_port(domain="comb")
        himp_feed = head_importance.read_port(domain="comb")

        m.d.comb += [list_external.addr.eq(token_slot(bank, self.alive_read.addr)),
                     list_external.en.eq(self.alive_read.en),
                     self.alive_read.data.eq(list_external.data),
                     hlist_external.addr.eq(head_slot(bank, self.head_read_addr)),
                     self.head_read_data.eq(hlist_external.data)]

        # ---- control state ---------------------------------------------------------------------
        clear_next = Signal(count)
        keep = Signal(prune_command_layout(cfg))
        ranking_heads = Signal()       # the run in progress ranks heads (else tokens)
        run_n, run_k = Signal(count), Signal(count)
        feed_next = Signal(count)      # next candidate whose list entry is read
        feed_reading = Signal()
        written = Signal(count)        # entries of the new list so far
        new_tokens = Signal(count)
        index_lane = Signal(range(max(2, P)))
        stall = Signal()
        accumulating = Signal()

        # ---- token importance: final lanes summed, position looked up, read-modify-write ---------
        beat = self.probs.payload
        final_lanes = [Mux(beat.final[r], beat.data[r], 0) for r in range(R)]
        lane_sum = add_tree(m, final_lanes, "prob_sum", unsigned(fmt.prob.bits + bits_for(R)))
        acc0_valid, acc0_sum = Signal(), Signal.like(lane_sum)
        acc1_valid, acc1_sum, acc1_pos = Signal(), Signal.like(lane_sum), Signal(index)
        m.d.comb += [self.probs.ready.eq(1), self.magnitude.ready.eq(1)]
        # stage 0 registers the key's list read; stage 1 has its position and reads its importance
        # (transparent for the write, so back-to-back beats of one key see each other's sums);
        # stage 2 writes the sum
        m.d.sync += [acc0_valid.eq(self.probs.valid), acc0_sum.eq(lane_sum),
                     acc1_valid.eq(acc0_valid), acc1_sum.eq(acc0_sum), acc1_pos.eq(list_read.data)]
        m.d.comb += accumulating.eq(acc0_valid | acc1_valid)
        # the importance read address is always the position the list read gives
        m.d.comb += [imp_read.addr.eq(list_read.data), imp_read.en.eq(~stall), list_read.en.eq(~stall)]

        # ---- feed: candidate's list entry (stage 1), its importance (stage 2), packed in beats ----
        feed1_valid, feed1_first, feed1_last = Signal(), Signal(), Signal()
        feed2_valid, feed2_first, feed2_last = Signal(), Signal(), Signal()
        feed1_head_score = Signal(unsigned(cfg.head_importance_bits))
        feed2_head_score = Signal(unsigned(cfg.head_importance_bits))
        m.d.comb += [hlist_read.addr.eq(head_slot(bank, feed_next)), himp_feed.addr.eq(hlist_read.data)]
        with m.If(~stall):
            m.d.sync += [feed1_valid.eq(feed_reading), feed1_first.eq(feed_next == 0),
                         feed1_last.eq(feed_next + 1 == run_n), feed1_head_score.eq(himp_feed.data),
                         feed2_valid.eq(feed1_valid), feed2_first.eq(feed1_first),
                         feed2_last.eq(feed1_last), feed2_head_score.eq(feed1_head_score)]
            with m.If(feed_reading):
                m.d.sync += feed_next.eq(feed_next + 1)
                with m.If(feed_next + 1 == run_n):
                    m.d.sync += feed_reading.eq(0)
        # [CLS], the first entry of every alive list, outranks every importance
        cls_score = (1 << (cfg.importance_bits - 1)) - 1
        feed_score = Signal(signed(cfg.importance_bits))
        m.d.comb += feed_score.eq(Mux(ranking_heads, feed2_head_score,
                                      Mux(feed2_first, cls_score, imp_read.data)))
        beat_scores = Signal(topk.scores.payload.shape())
        beat_fill = Signal(range(lanes + 1))
        beat_full = Signal()
        sending = Signal()
        m.d.comb += [topk.scores.valid.eq(beat_full), topk.scores.payload.eq(beat_scores),
                     sending.eq(beat_full & topk.scores.ready), stall.eq(beat_full & ~topk.scores.ready)]
        lane = Signal(range(lanes))    # where the next score goes: a beat being sent is refilled
        m.d.comb += lane.eq(Mux(beat_full, 0, beat_fill))
        with m.If(sending):
            m.d.sync += [beat_full.eq(0), beat_fill.eq(0)]
        with m.If(feed2_valid & ~stall):
            for j in range(lanes):
                with m.If(lane == j):
                    m.d.sync += beat_scores[j].eq(feed_score)
            m.d.sync += [beat_fill.eq(lane + 1), beat_full.eq(feed2_last | (lane == lanes - 1))]

        # ---- map: each kept index (a slot of the live list) becomes an entry of the new list -----
        kept = topk.indices.payload
        kept_index = Signal(index)
        m.d.comb += kept_index.eq(kept.index[index_lane])
        map_valid = Signal()           # a token entry read last cycle, written now
        map_slot = Signal(count)
        m.d.sync += [map_valid.eq(0), map_slot.eq(written)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.busy.eq(accumulating), list_read.addr.eq(token_slot(bank, beat.key))]
                with m.If(self.begin):
                    m.d.sync += [clear_next.eq(0), tokens_alive.eq(self.tokens), heads_alive.eq(H),
                                 bank.eq(0)]
                    m.next = "CLEAR"
                with m.Elif(self.prune.valid & ~accumulating):
                    m.d.comb += self.prune.ready.eq(1)
                    m.d.sync += [keep.eq(self.prune.payload), ranking_heads.eq(0), run_n.eq(tokens_alive)]
                    m.next = "COUNT"
            with m.State("CLEAR"):
                m.d.comb += [self.busy.eq(1),
                             imp_write.addr.eq(clear_next), imp_write.data.eq(0), imp_write.en.eq(1),
                             list_write.addr.eq(clear_next), list_write.data.eq(clear_next),
                             list_write.en.eq(1),
                             hlist_write.addr.eq(clear_next), hlist_write.data.eq(clear_next),
                             hlist_write.en.eq(clear_next < H),
                             himp_write.addr.eq(clear_next), himp_write.data.eq(0),
                             himp_write.en.eq(clear_next < H)]
                m.d.sync += clear_next.eq(clear_next + 1)
                with m.If(clear_next == T - 1):
                    m.next = "IDLE"
            with m.State("COUNT"):
                # kept_count: min(n, max(1, ceil(keep * n / 2**VALUE_KEEP_FRAC)))
                ratio = Mux(ranking_heads, keep.head_keep, keep.token_keep)
                wanted = Signal(unsigned(cfg.count_bits + 1))
                m.d.comb += [self.busy.eq(1),
                             wanted.eq((ratio * run_n + (1 << VALUE_KEEP_FRAC) - 1) >> VALUE_KEEP_FRAC)]
                m.d.sync += [run_k.eq(Mux(wanted > run_n, run_n, Mux(wanted == 0, 1, wanted))),
                             feed_next.eq(0), written.eq(0), index_lane.eq(0)]
                m.next = "COMMAND"
            with m.State("COMMAND"):
                m.d.comb += [self.busy.eq(1), topk.cmd.valid.eq(1),
                             topk.cmd.payload.n.eq(run_n), topk.cmd.payload.k.eq(run_k)]
                with m.If(topk.cmd.ready):
                    m.d.sync += feed_reading.eq(1)
                    m.next = "FEED"
            with m.State("FEED"):
                m.d.comb += [self.busy.eq(1), list_read.addr.eq(token_slot(bank, feed_next))]
                with m.If(sending & ~feed_reading & ~feed1_valid & ~feed2_valid):
                    m.next = "MAP"
            with m.State("MAP"):
                # one kept index per cycle: token entries come from a synchronous read (written a
                # cycle later), head entries from LUT RAM (written at once)
                m.d.comb += [self.busy.eq(1), list_read.addr.eq(token_slot(bank, kept_index)),
                             hlist_read.addr.eq(head_slot(bank, kept_index))]
                has_index, lane_done = Signal(), Signal()
                m.d.comb += [has_index.eq(index_lane < kept.count), lane_done.eq(index_lane + 1 >= kept.count)]
                with m.If(topk.indices.valid):
                    m.d.sync += map_valid.eq(has_index & ~ranking_heads)
                    m.d.comb += [hlist_write.addr.eq(head_slot(~bank, written)),
                                 hlist_write.data.eq(hlist_read.data),
                                 hlist_write.en.eq(has_index & ranking_heads)]
                    with m.If(has_index):
                        m.d.sync += written.eq(written + 1)
                    m.d.sync += index_lane.eq(Mux(lane_done, 0, index_lane + 1))
                    with m.If(lane_done):
                        m.d.comb += topk.indices.ready.eq(1)
                        with m.If(kept.last):
                            m.next = "NEXT_RUN"
            with m.State("NEXT_RUN"):
                m.d.comb += self.busy.eq(1)
                with m.If(ranking_heads):
                    m.d.sync += [bank.eq(~bank), tokens_alive.eq(new_tokens), heads_alive.eq(written)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [new_tokens.eq(written), ranking_heads.eq(1), run_n.eq(heads_alive)]
                    m.next = "COUNT"

        # the token entry MAP read a cycle earlier
        with m.If(map_valid):
            m.d.comb += [list_write.addr.eq(token_slot(~bank, map_slot)), list_write.data.eq(list_read.data),
                         list_write.en.eq(1)]
        # accumulation (probs and magnitudes come only between a CLEAR and a prune)
        with m.If(acc1_valid):
            m.d.comb += [imp_write.addr.eq(acc1_pos), imp_write.data.eq(imp_read.data + acc1_sum),
                         imp_write.en.eq(1)]
        m.d.comb += himp_acc.addr.eq(self.magnitude.payload.head)
        with m.If(self.magnitude.valid):
            m.d.comb += [himp_write.addr.eq(self.magnitude.payload.head),
                         himp_write.data.eq(himp_acc.data + self.magnitude.payload.magnitude),
                         himp_write.en.eq(1)]
        return m
