"""The accelerator: the attention core and the pruning controller over AXI4 memory, AXI4-Lite registers."""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out, connect

from spattn.config import AccelConfig
from spattn.formats import VALUE_KEEP_FRAC, AttentionFormats, bits_for
from spattn.memmap import BUS_BYTES, LIST_ENTRY_BYTES, OUT_VALUE_BYTES, MemoryMap

from .attention import AttentionCore
from .attention.common import PLANE_LSB, TENSOR_K, TENSOR_Q, TENSOR_V
from .axi import AXI_DATA_BITS, AXI4Signature
from .axi_manager import AxiManager
from .pruning import PruningController
from .register_file import RegisterFile
from .registers import accelerator_registers

__all__ = ["Accelerator", "LIST_BURST_WORDS", "MEM_BASE_ALIGN_BITS"]

#: Alive lists are written in bursts of at most this many bus words.
LIST_BURST_WORDS = 16
#: MEM_BASE must be a multiple of 2**MEM_BASE_ALIGN_BITS, so that the memory map's rows, aligned
#: within it, stay word-aligned and never cross a 4 KiB boundary (AXI forbids it in a burst).
MEM_BASE_ALIGN_BITS = 12
#: Read bursts the memory port keeps in flight.
MAX_READS = 8



class Accelerator(wiring.Component):
    """SpAtten's attention layer loop: every alive head through the :class:`AttentionCore`, token
    and head importance in the :class:`PruningController`, cascade pruning at the end of a layer.

    The host runs the rest of each layer and drives the accelerator through the registers of
    :func:`spattn.hw.registers.accelerator_registers` (``spattn verilog`` writes them as a C header
    and a Markdown table). A layer: the host writes the alive heads' and tokens' Q, K, V planes (and
    the static masks) into memory at the places :class:`spattn.memmap.MemoryMap` gives, sets TOKENS
    and the layer's settings, and writes CTRL.START (with CTRL.FIRST on a sequence's first layer).
    The accelerator checks the settings (a bad one sets an error bit of STATUS and runs nothing),
    runs each alive head in ascending order (its output rows to memory, its probabilities into
    token importance, its output magnitudes into head importance), prunes, writes the new alive
    lists to memory and sets STATUS.DONE, with the layer's counters in the registers.

    Members
    -------
    m_axi : Out(:class:`~.axi.AXI4Signature`)
        Memory: plane rows and mask rows read as bursts (up to ``MAX_READS`` in flight, in order),
        output rows and alive lists written as bursts.
    s_axil : In(:class:`~.axi.AXI4LiteSignature`)
        The registers.
    irq : Out(1)
        STATUS.DONE: the layer has finished.

    Settings errors (STATUS, sticky until CTRL.CLEAR): ERR_BUSY for a START while a layer runs (the
    layer goes on); ERR_TOKENS for TOKENS of 0, above ``max_tokens``, or (without FIRST) not
    equal to the previous layer's survivors; ERR_KEEP for a token or head keep of 0 or above 1.0;
    ERR_SETTING for a value keep of 0 or above 1.0, a threshold above ``2**prob.bits``, a LAYER
    of ``layers`` or more or a MEM_BASE that is not 4 KiB aligned; ERR_MEMORY for an AXI response
    other than OKAY (the layer goes on; its results are not to be trusted).

    Throughput: heads run one after another; a static mask row is fetched and gathered to the
    alive tokens (one key per cycle) each time the core asks for it.
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        self.memmap = MemoryMap(cfg)
        self.regmap = accelerator_registers(cfg)
        self._regs = RegisterFile(self.regmap)
        super().__init__({
            "m_axi": Out(AXI4Signature()),
            "s_axil": In(self._regs.bus.signature.flip()),
            "irq": Out(1),
        })

    def elaborate(self, platform):
        cfg, mm = self.cfg, self.memmap
        m = Module()
        T, H, d = cfg.max_tokens, cfg.heads, cfg.head_dim
        fmt = AttentionFormats.of(cfg)
        count = unsigned(cfg.count_bits)
        full_ratio = 1 << VALUE_KEEP_FRAC
        beats = {p: mm.plane_row[p].beats for p in mm.PLANES}
        max_beats = max(*beats.values(), mm.mask_row.beats, mm.out_row.beats, LIST_BURST_WORDS)

        m.submodules.regs = regs = self._regs
        m.submodules.axi = axi = AxiManager(max_beats=max_beats, max_reads=MAX_READS)
        m.submodules.core = core = AttentionCore(cfg)
        m.submodules.pruning = ctl = PruningController(cfg)
        connect(m, wiring.flipped(self.s_axil), regs.bus)
        connect(m, axi.axi, wiring.flipped(self.m_axi))

        # ---- registers -------------------------------------------------------------------------
        def bit(register, field, value):
            """The bit of a one-bit field of the register map in ``value``."""
            return value[self.regmap[register].field(field).lsb]

        start, first, clear = (bit("CTRL", name, regs.ctrl) for name in ("START", "FIRST", "CLEAR"))
        running = Signal()
        done = Signal()
        status = Signal.like(regs.status)    # DONE and the error bits are sticky
        cycles, rows_recomputed, pe_busy = Signal(32), Signal(32), Signal(32)
        layer_tokens, layer_heads = Signal(count), Signal(unsigned(bits_for(H)))
        errors = {name: bit("STATUS", name, status)
                  for name in ("ERR_BUSY", "ERR_TOKENS", "ERR_KEEP", "ERR_SETTING", "ERR_MEMORY")}
        m.d.comb += [bit("STATUS", "BUSY", status).eq(running), bit("STATUS", "DONE", status).eq(done)]
        m.d.comb += [regs.status.eq(status), self.irq.eq(done),
                     regs.alive_tokens.eq(ctl.tokens_alive), regs.alive_heads.eq(ctl.heads_alive),
                     regs.layer_tokens.eq(layer_tokens), regs.layer_heads.eq(layer_heads),
                     regs.cycles.eq(cycles), regs.bytes_read.eq(axi.bytes_read),
                     regs.bytes_written.eq(axi.bytes_written), regs.rows_recomputed.eq(rows_recomputed),
                     regs.pe_busy_cycles.eq(pe_busy)]

        bad_tokens = Signal()
        bad_keep = Signal()
        bad_setting = Signal()
        m.d.comb += [
            bad_tokens.eq((regs.tokens == 0) | (regs.tokens > T) | (~first & (regs.tokens != ctl.tokens_alive))),
            bad_keep.eq((regs.token_keep == 0) | (regs.token_keep > full_ratio) |
                        (regs.head_keep == 0) | (regs.head_keep > full_ratio)),
            bad_setting.eq((regs.value_keep == 0) | (regs.value_keep > full_ratio) |
                           (regs.threshold > (1 << fmt.prob.bits)) | (regs.layer >= cfg.layers) |
                           (regs.mem_base[:MEM_BASE_ALIGN_BITS] != 0)),
        ]
        sticky = {name: Signal(name=name.lower()) for name in errors}
        m.d.comb += [errors[name].eq(flag) for name, flag in sticky.items()]
        with m.If(clear):
            m.d.sync += [done.eq(0)] + [flag.eq(0) for flag in sticky.values()]
        # the manager's error stays high until the next START clears it: flag its rising edge, so
        # that CLEAR clears ERR_MEMORY
        memory_error_seen = Signal()
        m.d.sync += memory_error_seen.eq(axi.error)
        with m.If(axi.error & ~memory_error_seen):
            m.d.sync += sticky["ERR_MEMORY"].eq(1)
        with m.If(running):
            m.d.sync += cycles.eq(cycles + 1)

        # the layer's settings, latched at START
        tokens = Signal(count)
        flags = Signal.like(regs.flags)
        layer = Signal.like(regs.layer)
        mem_base = Signal(32)
        keeps = Signal.like(ctl.prune.payload)
        head_slot = Signal(range(H + 1))      # index into the alive-head list
        head = Signal(range(H))               # the model's head number
        m.d.comb += ctl.head_read_addr.eq(head_slot)

        # per-head base addresses (mem_base + region + head's block), computed when a head starts
        plane_base = {(t, p): Signal(32, name=f"base_{t}_{p}") for t in mm.TENSORS for p in mm.PLANES}
        mask_base, out_base = Signal(32), Signal(32)

        def region(name):
            return mm.regions[name][0]

        # ---- core: command, counters ---------------------------------------------------------------
        cmd = core.cmd.payload
        m.d.comb += [cmd.n.eq(tokens), cmd.causal.eq(bit("FLAGS", "CAUSAL", flags)),
                     cmd.masked.eq(bit("FLAGS", "MASKED", flags)),
                     cmd.progressive.eq(bit("FLAGS", "PROGRESSIVE", flags))]
        settings = Signal(data.StructLayout({"threshold": unsigned(fmt.prob.bits + 1),
                                             "value_keep": unsigned(VALUE_KEEP_FRAC + 1),
                                             "dynatran": unsigned(cfg.act_bits)}))
        m.d.comb += [cmd.threshold.eq(settings.threshold), cmd.value_keep.eq(settings.value_keep),
                     cmd.dynatran.eq(settings.dynatran)]
        connect(m, core.probs, ctl.probs)

        # ---- read path: core rows and mask rows share the memory port, in order ------------------
        tag_layout = data.StructLayout({"mask": 1, "plane": 1})
        m.submodules.read_tags = tags = SyncFIFOBuffered(width=tag_layout.size, depth=MAX_READS + 2)
        tag = data.View(tag_layout, tags.r_data)
        core_req = core.mem_req.payload
        core_req_addr = Signal(32)
        for (t, p), base in plane_base.items():
            tensor = {"q": TENSOR_Q, "k": TENSOR_K, "v": TENSOR_V}[t]
            with m.If((core_req.tensor == tensor) & (core_req.plane == (p == "lsb"))):
                m.d.comb += core_req_addr.eq(base + (core_req.row << (mm.plane_row[p].stride.bit_length() - 1)))
        mask_req_valid, mask_req_addr = Signal(), Signal(32)
        # a staged request, so the address adder is not in series with the manager's input
        staged_valid, staged_addr, staged_beats = Signal(), Signal(32), Signal(range(max_beats + 1))
        staged_tag = Signal(tag_layout)
        take_staged = Signal()
        m.d.comb += [axi.read_req.valid.eq(staged_valid & tags.w_rdy),
                     axi.read_req.payload.addr.eq(staged_addr), axi.read_req.payload.beats.eq(staged_beats),
                     take_staged.eq(axi.read_req.valid & axi.read_req.ready),
                     tags.w_en.eq(take_staged), tags.w_data.eq(staged_tag)]
        with m.If(take_staged):
            m.d.sync += staged_valid.eq(0)
        stage_free = ~staged_valid | take_staged
        with m.If(stage_free):
            with m.If(mask_req_valid):
                m.d.sync += [staged_valid.eq(1), staged_addr.eq(mask_req_addr),
                             staged_beats.eq(mm.mask_row.beats), staged_tag.mask.eq(1), staged_tag.plane.eq(0)]
            with m.Elif(core.mem_req.valid):
                m.d.comb += core.mem_req.ready.eq(1)
                lsb = core_req.plane == PLANE_LSB
                m.d.sync += [staged_valid.eq(1), staged_addr.eq(core_req_addr),
                             staged_beats.eq(Mux(lsb, beats["lsb"], beats["msb"])),
                             staged_tag.mask.eq(0), staged_tag.plane.eq(lsb)]
        mask_req_taken = Signal()
        m.d.comb += mask_req_taken.eq(stage_free & mask_req_valid)

        # response words into a row register (core rows) or the mask row register
        row_words = max(beats.values())
        row = Signal(row_words * AXI_DATA_BITS)
        row_valid, row_plane = Signal(), Signal()
        word = Signal(range(max(row_words, mm.mask_row.beats) + 1))
        mask_words = mm.mask_row.beats
        mask_row = Signal(mask_words * AXI_DATA_BITS)
        mask_row_valid = Signal()
        rdata = axi.read_data
        to_core = rdata.valid & tags.r_rdy & ~tag.mask
        to_mask = rdata.valid & tags.r_rdy & tag.mask
        m.d.comb += rdata.ready.eq(tags.r_rdy & Mux(tag.mask, ~mask_row_valid, ~row_valid | core.mem_resp.ready))
        with m.If(rdata.valid & rdata.ready):
            m.d.sync += word.eq(Mux(rdata.payload.last, 0, word + 1))
            m.d.comb += tags.r_en.eq(rdata.payload.last)
            for w in range(row_words):
                with m.If(to_core & (word == w)):
                    m.d.sync += row[w * AXI_DATA_BITS:(w + 1) * AXI_DATA_BITS].eq(rdata.payload.data)
            for w in range(mask_words):
                with m.If(to_mask & (word == w)):
                    m.d.sync += mask_row[w * AXI_DATA_BITS:(w + 1) * AXI_DATA_BITS].eq(rdata.payload.data)
            with m.If(rdata.payload.last):
                with m.If(tag.mask):
                    m.d.sync += mask_row_valid.eq(1)
                with m.Else():
                    m.d.sync += [row_valid.eq(1), row_plane.eq(tag.plane)]
        with m.If(core.mem_resp.valid & core.mem_resp.ready & ~(to_core & rdata.ready & rdata.payload.last)):
            m.d.sync += row_valid.eq(0)
        m.d.comb += core.mem_resp.valid.eq(row_valid)
        for c in range(d):
            msb = row[c * cfg.act_msb_bits:(c + 1) * cfg.act_msb_bits]
            lsb = row[c * cfg.act_lsb_bits:(c + 1) * cfg.act_lsb_bits]
            m.d.comb += core.mem_resp.payload.data[c].eq(Mux(row_plane, lsb, msb))

        # ---- static masks: position of the query, mask row fetch, gather to the alive keys -------
        alive_addr = Signal(cfg.index_bits)
        m.d.comb += [ctl.alive_read.addr.eq(alive_addr), ctl.alive_read.en.eq(1)]
        gathered = Signal(T)
        gather_key = Signal(count)       # key whose position is being read
        gather_valid, gather_slot = Signal(), Signal(count)
        mask_stride_shift = mm.mask_row.stride.bit_length() - 1
        mask_bits = Signal(mask_words * AXI_DATA_BITS)
        m.d.comb += mask_bits.eq(mask_row)
        key_present = Signal()
        m.d.comb += key_present.eq(mask_bits.bit_select(ctl.alive_read.data, 1))
        m.d.sync += gather_valid.eq(0)
        with m.If(gather_valid):
            for j in range(T):
                with m.If(gather_slot == j):
                    m.d.sync += gathered[j].eq(key_present)
        m.d.comb += core.mask.payload.keys.eq(gathered)
        with m.FSM(name="masks"):
            with m.State("IDLE"):
                m.d.comb += alive_addr.eq(core.mask_req.payload.row)
                with m.If(core.mask_req.valid):
                    m.d.comb += core.mask_req.ready.eq(1)
                    m.next = "POSITION"
            with m.State("POSITION"):
                m.d.comb += [mask_req_valid.eq(1),
                             mask_req_addr.eq(mask_base + (ctl.alive_read.data << mask_stride_shift))]
                m.d.comb += ctl.alive_read.en.eq(0)     # hold the position until the request goes
                with m.If(mask_req_taken):
                    m.d.sync += [gathered.eq(0), gather_key.eq(0)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(mask_row_valid):
                    m.next = "GATHER"
            with m.State("GATHER"):
                m.d.comb += alive_addr.eq(gather_key)
                m.d.sync += [gather_key.eq(gather_key + 1), gather_valid.eq(1), gather_slot.eq(gather_key)]
                with m.If(gather_key + 1 == tokens):
                    m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += core.mask.valid.eq(~gather_valid)
                with m.If(core.mask.valid & core.mask.ready):
                    m.d.sync += mask_row_valid.eq(0)
                    m.next = "IDLE"

        # ---- write path: output rows, then the alive lists -----------------------------------------
        out_words = mm.out_row.beats
        out_shift = Signal(out_words * AXI_DATA_BITS)
        out_left = Signal(range(max(out_words, LIST_BURST_WORDS) + 1))
        out_stride_shift = mm.out_row.stride.bit_length() - 1
        writing_lists = Signal()
        out = core.out.payload
        m.d.comb += [ctl.magnitude.payload.head.eq(head), ctl.magnitude.payload.magnitude.eq(out.magnitude)]
        extended = [Signal(signed(8 * OUT_VALUE_BYTES), name=f"out_value{c}") for c in range(d)]
        for c in range(d):
            m.d.comb += extended[c].eq(out.data[c])
        with m.If(~writing_lists):
            m.d.comb += [axi.write_req.valid.eq(core.out.valid & (out_left == 0)),
                         axi.write_req.payload.addr.eq(out_base + (out.row << out_stride_shift)),
                         axi.write_req.payload.beats.eq(out_words),
                         core.out.ready.eq(axi.write_req.ready & (out_left == 0)),
                         ctl.magnitude.valid.eq(core.out.valid & core.out.ready),
                         axi.write_data.valid.eq(out_left != 0),
                         axi.write_data.payload.data.eq(out_shift[:AXI_DATA_BITS])]
            with m.If(core.out.valid & core.out.ready):
                m.d.sync += [out_shift.eq(Cat(*extended)), out_left.eq(out_words)]
            with m.Elif(axi.write_data.valid & axi.write_data.ready):
                m.d.sync += [out_shift.eq(out_shift >> AXI_DATA_BITS), out_left.eq(out_left - 1)]

        # alive lists: entries read one per cycle, two per bus word, bursts of LIST_BURST_WORDS
        list_heads = Signal()            # writing the head list (else the token list)
        list_entries = Signal(count)     # entries in the list being written
        entry = Signal(range(cfg.max_tokens + 2))   # entry whose value is read
        entry_part = Signal(range(BUS_BYTES // LIST_ENTRY_BYTES))
        list_word = Signal(AXI_DATA_BITS)
        burst_left = Signal(range(LIST_BURST_WORDS + 1))
        words_left = Signal(count)
        list_addr = Signal(32)
        entry_value = Mux(list_heads, ctl.head_read_data, ctl.alive_read.data)
        per_word = BUS_BYTES // LIST_ENTRY_BYTES

        # ---- the layer ----------------------------------------------------------------------------
        with m.FSM(name="layer"):
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += done.eq(0)
                    with m.If(bad_tokens | bad_keep | bad_setting):
                        # a CLEAR in the same write clears the old bits first
                        m.d.sync += [sticky[name].eq((sticky[name] & ~clear) | bad) for name, bad in
                                     (("ERR_TOKENS", bad_tokens), ("ERR_KEEP", bad_keep),
                                      ("ERR_SETTING", bad_setting))]
                    with m.Else():
                        m.d.comb += axi.clear.eq(1)
                        m.d.sync += [running.eq(1), tokens.eq(regs.tokens), flags.eq(regs.flags),
                                     layer.eq(regs.layer), mem_base.eq(regs.mem_base),
                                     settings.threshold.eq(regs.threshold),
                                     settings.value_keep.eq(regs.value_keep),
                                     settings.dynatran.eq(regs.dynatran),
                                     keeps.token_keep.eq(regs.token_keep), keeps.head_keep.eq(regs.head_keep),
                                     cycles.eq(0), rows_recomputed.eq(0), pe_busy.eq(0), head_slot.eq(0),
                                     layer_tokens.eq(regs.tokens)]
                        m.d.comb += [ctl.begin.eq(first), ctl.tokens.eq(regs.tokens)]
                        m.next = "BEGIN"
            with m.State("BEGIN"):
                with m.If(~ctl.busy):
                    m.d.sync += layer_heads.eq(ctl.heads_alive)
                    m.next = "HEAD_BASE"
            with m.State("HEAD_BASE"):
                m.d.sync += head.eq(ctl.head_read_data)
                m.next = "HEAD_ADDRESS"
            with m.State("HEAD_ADDRESS"):
                for (t, p), base in plane_base.items():
                    m.d.sync += base.eq(mem_base + region(f"{t}_{p}") + head * (T * mm.plane_row[p].stride))
                m.d.sync += [mask_base.eq(mem_base + region("masks") +
                                          (layer * H + head) * (T * mm.mask_row.stride)),
                             out_base.eq(mem_base + region("out") + head * (T * mm.out_row.stride))]
                m.next = "HEAD_START"
            with m.State("HEAD_START"):
                m.d.comb += core.cmd.valid.eq(1)
                with m.If(core.cmd.ready):
                    m.next = "HEAD_RUN"
            with m.State("HEAD_RUN"):
                with m.If(~core.busy & (out_left == 0)):
                    m.d.sync += [rows_recomputed.eq(rows_recomputed + core.rows_recomputed),
                                 pe_busy.eq(pe_busy + core.pe_busy_cycles), head_slot.eq(head_slot + 1)]
                    with m.If(head_slot + 1 == ctl.heads_alive):
                        m.next = "PRUNE"
                    with m.Else():
                        m.next = "HEAD_BASE"
            with m.State("PRUNE"):
                m.d.comb += [ctl.prune.valid.eq(1), ctl.prune.payload.eq(keeps)]
                with m.If(ctl.prune.ready):
                    m.next = "PRUNING"
            with m.State("PRUNING"):
                with m.If(~ctl.busy):
                    m.d.sync += [list_heads.eq(0), list_entries.eq(ctl.tokens_alive), entry.eq(0),
                                 entry_part.eq(0),
                                 list_addr.eq(mem_base + region("alive_tokens")),
                                 words_left.eq((ctl.tokens_alive + per_word - 1) // per_word)]
                    m.next = "LIST_BURST"
            with m.State("LIST_BURST"):
                m.d.comb += writing_lists.eq(1)
                burst = Mux(words_left > LIST_BURST_WORDS, LIST_BURST_WORDS, words_left)
                m.d.comb += [axi.write_req.valid.eq(1), axi.write_req.payload.addr.eq(list_addr),
                             axi.write_req.payload.beats.eq(burst)]
                with m.If(axi.write_req.ready):
                    m.d.sync += [burst_left.eq(burst), list_addr.eq(list_addr + burst * BUS_BYTES),
                                 words_left.eq(words_left - burst)]
                    m.next = "LIST_ADDRESS"
            with m.State("LIST_ADDRESS"):
                m.d.comb += [writing_lists.eq(1), alive_addr.eq(entry), ctl.head_read_addr.eq(entry)]
                m.next = "LIST_VALUE"
            with m.State("LIST_VALUE"):
                # the entry's value (a synchronous read for tokens, LUT RAM for heads); 0 past the end
                m.d.comb += [writing_lists.eq(1), alive_addr.eq(entry), ctl.head_read_addr.eq(entry)]
                value = Mux(entry < list_entries, entry_value, 0)
                for part in range(per_word):
                    with m.If(entry_part == part):
                        m.d.sync += list_word.word_select(part, 8 * LIST_ENTRY_BYTES).eq(value)
                m.d.sync += [entry.eq(entry + 1), entry_part.eq(entry_part + 1)]
                with m.If(entry_part == per_word - 1):
                    m.d.sync += entry_part.eq(0)
                    m.next = "LIST_SEND"
                with m.Else():
                    m.next = "LIST_ADDRESS"
            with m.State("LIST_SEND"):
                m.d.comb += [writing_lists.eq(1), axi.write_data.valid.eq(1),
                             axi.write_data.payload.data.eq(list_word)]
                with m.If(axi.write_data.ready):
                    m.d.sync += burst_left.eq(burst_left - 1)
                    with m.If(burst_left != 1):
                        m.next = "LIST_ADDRESS"
                    with m.Elif(words_left != 0):
                        m.next = "LIST_BURST"
                    with m.Elif(~list_heads):
                        m.d.sync += [list_heads.eq(1), list_entries.eq(ctl.heads_alive), entry.eq(0),
                                     list_addr.eq(mem_base + region("alive_heads")),
                                     words_left.eq((ctl.heads_alive + per_word - 1) // per_word)]
                        m.next = "LIST_BURST"
                    with m.Else():
                        m.next = "FINISH"
            with m.State("FINISH"):
                with m.If(axi.writes_done & axi.reads_done):
                    m.d.sync += [running.eq(0), done.eq(1)]
                    m.next = "IDLE"
        with m.If(start & running):
            m.d.sync += sticky["ERR_BUSY"].eq(1)
        return m
