"""Tiled PE array: an R x C multiply-accumulate array with DynaTran pruning and zero-tile skipping."""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spattn.config import AccelConfig, ConfigError, pe_buffer_depths
from spattn.formats import PE_ACC_OVERFLOW, Overflow, bits_for

from .lanes import wire

__all__ = ["PEArray", "DATAFLOWS", "PE_ARRAY_VARIANTS", "matmul_command_layout", "a_beat_layout",
           "b_beat_layout",
           "result_layout", "COUNTER_BITS"]

#: Dataflows the array can be generated with (see :class:`PEArray`).
DATAFLOWS = ("output_stationary", "weight_stationary")

#: Width of every runtime counter.
COUNTER_BITS = 32

#: The generation-time choices of each PE-array block that :mod:`spattn.gen.verilog` can build, by
#: block name (the benches read them back through the manifest's block name).
PE_ARRAY_VARIANTS = {
    "pe_array": {"dataflow": "output_stationary", "k_tile": 1, "overflow": PE_ACC_OVERFLOW},
    "pe_array_sat": {"dataflow": "output_stationary", "k_tile": 3, "overflow": Overflow.SATURATE},
    "pe_array_ws": {"dataflow": "weight_stationary", "k_tile": 1, "overflow": PE_ACC_OVERFLOW},
    "pe_array_ws_sat": {"dataflow": "weight_stationary", "k_tile": 2, "overflow": Overflow.SATURATE},
}


def matmul_command_layout(cfg: AccelConfig):
    """One run: ``(m x k) @ (k x n)``, activations with magnitude below ``threshold`` pruned."""
    dim = unsigned(cfg.count_bits)
    return data.StructLayout({"m": dim, "k": dim, "n": dim, "threshold": unsigned(cfg.act_bits)})


def a_beat_layout(cfg: AccelConfig, operand_bits=None):
    """One column of an A row panel: ``A[p * R + r][j]`` in lane ``r``."""
    return data.ArrayLayout(signed(operand_bits or cfg.act_bits), cfg.pe_rows)


def b_beat_layout(cfg: AccelConfig, operand_bits=None):
    """One row of a B column panel: ``B[j][q * C + c]`` in lane ``c``."""
    return data.ArrayLayout(signed(operand_bits or cfg.act_bits), cfg.pe_cols)


def result_layout(cfg: AccelConfig):
    """One row of a result tile: ``C[p * R + r][q * C + c]`` in lane ``c``; ``last`` ends the run."""
    return data.StructLayout({"data": data.ArrayLayout(signed(cfg.acc_bits), cfg.pe_cols), "last": 1})


def _clipped(m, total, start, size, name, shape):
    """How many of the ``size`` positions from ``start`` lie below ``total`` (a tile's real extent)."""
    left = wire(m, (total - start)[:shape.width], f"{name}_left", shape)
    return wire(m, Mux(left >= size, size, left), f"{name}_valid", range(size + 1))


def _tile_macs(m, rows_valid, cols_valid, rows, cols):
    """Multiply-accumulates one tile pass performs on real rows and columns."""
    total = Const(0, unsigned(bits_for(rows * cols)))
    for r in range(rows):
        total = total + Mux(rows_valid > r, cols_valid, 0)
    return wire(m, total, "tile_macs", unsigned(bits_for(rows * cols)))


class PEArray(wiring.Component):
    """``fit(dynatran(A, threshold) @ B)`` on an R x C array of multiply-accumulate units.

    R = ``pe_rows``, C = ``pe_cols``; operands are signed ``operand_bits`` (default ``act_bits``),
    results signed ``acc_bits``
    with the overflow rule ``overflow`` (default :data:`spattn.formats.PE_ACC_OVERFLOW`) applied to
    the exact dot product. The golden model is :func:`spattn.sim.golden.matmul.matmul_int`, the
    counters' golden values :func:`spattn.sim.golden.matmul.tile_stats`.

    Parameters
    ----------
    cfg : AccelConfig
    dataflow : str
        One of :data:`DATAFLOWS`, fixed at generation time: ``"output_stationary"`` (OS) or
        ``"weight_stationary"`` (WS). It decides how A is streamed, the result order and the reuse.
    k_tile : int
        Length of an activation tile along the direction A is walked: the zero-skipping granularity
        is R rows x ``k_tile`` columns of A (OS) or ``k_tile`` rows x R columns of A (WS).
    overflow : Overflow
        WRAP (accumulators of ``acc_bits``) or SATURATE (accumulators with guard bits for
        ``max_tokens`` products, clamped on the way out).
    operand_bits : int or None
        Width of the signed operands, ``act_bits`` when None; the attention core widens them so
        that probabilities can be the A operand of P·V.

    Members
    -------
    cmd : In(stream of :func:`matmul_command_layout`)
        One beat starts a run. ``m``, ``k``, ``n`` must be in ``1..max_tokens`` and the operands
        must fit the buffers (:func:`spattn.config.check_matmul_run`; other values are refused by
        the golden model and host driver, the array's behaviour on them is not defined).
    a : In(stream of :func:`a_beat_layout`)
        OS: A in row panels of R rows, ``ceil(m / R) * k`` beats: panel by panel, and within a panel
        column ``j = 0 .. k-1`` with ``A[pR + r][j]`` in lane r. WS: A in column panels of R
        columns, ``ceil(k / R) * m`` beats: panel by panel, and within a panel row ``i = 0 .. m-1``
        with ``A[i][pR + r]`` in lane r. Lanes past ``m`` (OS) or ``k`` (WS) are ignored.
    b : In(stream of :func:`b_beat_layout`)
        B in column panels of C columns: ``k * ceil(n / C)`` beats, panel by panel, row
        ``j = 0 .. k-1`` within a panel. Lanes of columns past ``n`` are ignored (taken as 0).
        The A and B streams are taken concurrently, each at one beat per cycle.
    result : Out(stream of :func:`result_layout`)
        One beat per result row segment of C columns; lanes of columns past ``n`` are 0, ``last``
        is set on the run's final beat. OS: tile by tile, row panel ``p`` outer and column panel
        ``q`` inner, each tile as its rows ``pR + r < m``. WS: column panel ``q`` by column panel,
        each as all m rows in order.
    busy : Out(1)
        High from the accepted command until the run's last result beat is taken.
    busy_cycles, load_cycles, skipped_tiles, macs : Out(32) each
        Counters of the current (or last) run, cleared when a command is accepted: cycles of the
        compute phase (from the end of loading until the last result beat is taken), cycles of the
        load phase, activation-tile passes skipped (zero tiles x column panels) and
        multiply-accumulates performed on real rows and columns (:class:`TileStats`).

    Operation
    ---------
    * Load (``max(beats of A, beats of B)`` cycles when the inputs keep up, and at least ``m``
      for WS): A and B go into on-chip buffers of R and C banks. Each A value with
      ``|a| < threshold`` is zeroed on the way in (DynaTran), and every activation tile that is
      then all zero is left out of a per-panel list of live tiles. The list is what the scheduler
      walks, so a zero tile costs no multiply cycle at all.
    * OS compute: for each output tile (row panel p, column panel q) the scheduler walks the live
      tiles of panel p; every cycle it reads column j of the A panel (R values, one per array row)
      and row j of the B panel (C values, one per array column), and PE (r, c) adds
      ``A[pR+r][j] * B[j][qC+c]`` to its accumulator. Reuse: the R x C partial sums stay in the
      PEs for the whole tile (written out once); an A value read from its buffer is used by C PEs,
      a B value by R PEs; A panel p is re-read once per column panel, B once per row panel. A
      finished tile moves into an output register bank in one cycle and drains one row per result
      beat while the next tile accumulates.
    * WS compute: for each column panel q and k-chunk p (R rows of B), the R x C weights
      ``B[pR+r][qC+c]`` are held in the PEs while the live tiles of A's column panel p stream
      past, one A row segment per cycle. Each PE has two weight registers: while one chunk
      computes, the next chunk's weights are loaded into the other (R cycles, one B row each), so
      loading is hidden behind any chunk of at least R live rows (an all-zero chunk of A is one
      empty list entry, passed over). In each cycle PE (r, c) multiplies ``A[i][pR+r]`` by its
      weight; each column's R products are summed and added to the partial sum of row i, column
      segment q, in an on-chip partial-sum buffer. Reuse: each weight is read once per run and
      used for all m rows; an A value is used by C PEs and re-read once per column panel; partial
      sums make a read-modify-write trip per k-chunk. The buffer has two halves: the finished
      column panel is sent (and cleared) from one while the next accumulates in the other.
    * Latency: OS, the first result beat follows the end of loading after the first tile's live
      columns plus 4 cycles; WS, after the first column panel (R cycles of first weights, then
      the live rows of every k-chunk) plus 6 cycles.
    * Throughput: one live activation position per cycle, i.e. R x C multiply-accumulates per
      cycle. OS: a tile with fewer live columns than its rows plus 2 waits for the previous tile
      to drain, so the result stream bounds a sparse run at R cycles per output tile, and an
      output tile with no live column still takes one cycle. WS: a k-chunk takes
      ``max(live rows, R)`` cycles (weight loading), plus one when a row is issued in two
      consecutive cycles (its partial sum is still on its way back), and a column panel's m result
      beats bound the rate at m cycles per column panel.
    """

    def __init__(self, cfg: AccelConfig, dataflow="output_stationary", k_tile=1,
                 overflow=PE_ACC_OVERFLOW, operand_bits=None):
        try:
            if dataflow not in DATAFLOWS:
                raise ConfigError(f"dataflow must be one of {list(DATAFLOWS)}, not {dataflow!r}")
            if not isinstance(k_tile, int) or isinstance(k_tile, bool) or not 1 <= k_tile <= cfg.max_tokens:
                raise ConfigError(f"k_tile must be in 1..max_tokens = 1..{cfg.max_tokens}, not {k_tile!r}")
            if not isinstance(overflow, Overflow):
                raise ConfigError(f"overflow must be an Overflow, not {overflow!r}")
            if operand_bits is not None and not (isinstance(operand_bits, int) and
                                                 operand_bits >= cfg.act_bits):
                raise ConfigError(f"operand_bits must be an integer of at least act_bits = "
                                  f"{cfg.act_bits}, not {operand_bits!r}")
        except ConfigError:
            self._MustUse__silence = True   # never elaborated: no "created but never used"
            raise
        self.cfg, self.dataflow, self.k_tile, self.overflow = cfg, dataflow, k_tile, overflow
        self.operand_bits = operand_bits or cfg.act_bits
        self.a_depth, self.b_depth = pe_buffer_depths(cfg)
        counter = unsigned(COUNTER_BITS)
        super().__init__({
            "cmd": In(stream.Signature(matmul_command_layout(cfg))),
            "a": In(stream.Signature(a_beat_layout(cfg, self.operand_bits))),
            "b": In(stream.Signature(b_beat_layout(cfg, self.operand_bits))),
            "result": Out(stream.Signature(result_layout(cfg))),
            "busy": Out(1),
            "busy_cycles": Out(counter),
            "load_cycles": Out(counter),
            "skipped_tiles": Out(counter),
            "macs": Out(counter),
        })

    @property
    def acc_width(self):
        """Width of the accumulators: ``acc_bits``, or the exact width of a ``max_tokens``-term sum."""
        cfg = self.cfg
        if self.overflow is Overflow.WRAP:
            return cfg.acc_bits
        return max(cfg.acc_bits, 2 * self.operand_bits + bits_for(cfg.max_tokens))

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        rows, cols, tk = cfg.pe_rows, cfg.pe_cols, self.k_tile
        act_shape = signed(self.operand_bits)
        dim_shape = unsigned(cfg.count_bits)
        pos_shape = unsigned(bits_for(cfg.max_tokens + max(rows, cols)))   # m0, n0, k0 + kk
        a_addr_shape = unsigned(bits_for(self.a_depth + cfg.max_tokens))
        b_addr_shape = unsigned(bits_for(self.b_depth + cfg.max_tokens))
        acc_shape = signed(self.acc_width)
        counter = unsigned(COUNTER_BITS)

        # Run parameters.
        m_dim, k_dim, n_dim = Signal(dim_shape), Signal(dim_shape), Signal(dim_shape)
        threshold = Signal(unsigned(cfg.act_bits))

        # Operand buffers: A in R banks (row r of every panel), B in C banks (column c of every panel).
        a_banks, b_banks = [], []
        for r in range(rows):
            bank = memory.Memory(shape=act_shape, depth=self.a_depth, init=[])
            m.submodules[f"a_bank{r}"] = bank
            a_banks.append((bank.write_port(), bank.read_port()))
        for c in range(cols):
            bank = memory.Memory(shape=act_shape, depth=self.b_depth, init=[])
            m.submodules[f"b_bank{c}"] = bank
            b_banks.append((bank.write_port(), bank.read_port()))

        # The live-tile list: one entry per activation tile with a non-zero value, panel after
        # panel; an all-zero panel gets one ``empty`` entry. ``last`` marks a panel's final entry,
        # whose ``zeros`` is the panel's count of zero tiles.
        entry_layout = data.StructLayout({
            "k0": dim_shape, "last": 1, "empty": 1, "zeros": dim_shape,
        })
        tiles = memory.Memory(shape=entry_layout, depth=self.a_depth, init=[])
        m.submodules.tiles = tiles
        tiles_w = tiles.write_port()
        tiles_r = tiles.read_port()

        # Counters.
        busy_cycles, load_cycles = Signal(counter), Signal(counter)
        skipped, macs = Signal(counter), Signal(counter)
        m.d.comb += [self.busy_cycles.eq(busy_cycles), self.load_cycles.eq(load_cycles),
                     self.skipped_tiles.eq(skipped), self.macs.eq(macs)]

        # ---- Load: A side -------------------------------------------------------------------
        # A arrives in panels of R lanes: output-stationary panels are R rows of A walked along k,
        # weight-stationary panels are R columns of A (a k-chunk) walked along m.
        os_flow = self.dataflow == "output_stationary"
        panel_len = k_dim if os_flow else m_dim
        lane_limit = m_dim if os_flow else k_dim
        a_k = Signal(dim_shape)             # position along the panel
        a_m0 = Signal(pos_shape)            # first lane's row (OS) or column (WS) of A
        a_waddr = Signal(a_addr_shape)
        a_done = Signal()
        t_kk = Signal(range(tk + 1))
        t_k0 = Signal(dim_shape)
        t_live = Signal()                   # a non-zero value seen in the current tile
        p_zeros = Signal(dim_shape)         # zero tiles so far in the current panel
        p_entries = Signal()                # the current panel has a list entry
        t_wptr = Signal(a_addr_shape)       # next free list entry
        prev_entry = Signal(entry_layout)   # the list entry written last

        a_values = []
        for r in range(rows):
            x = self.a.payload[r]
            magnitude = wire(m, Mux(x < 0, -x, x)[:self.operand_bits], f"a_mag{r}",
                             unsigned(self.operand_bits))
            pruned = (magnitude < threshold) | (a_m0 + r >= lane_limit)
            a_values.append(wire(m, Mux(pruned, 0, x), f"a_pruned{r}", act_shape))
        beat_live = wire(m, _any_nonzero(a_values), "a_beat_live")
        tile_live = wire(m, t_live | beat_live, "a_tile_live")
        panel_end = wire(m, a_k == panel_len - 1, "a_panel_end")
        tile_end = wire(m, (t_kk == tk - 1) | panel_end, "a_tile_end")
        zeros_now = wire(m, p_zeros + ~tile_live, "a_zeros_now", dim_shape)
        a_take = wire(m, self.a.valid & self.a.ready, "a_take")

        for r, (port, _) in enumerate(a_banks):
            m.d.comb += [port.addr.eq(a_waddr), port.data.eq(a_values[r]), port.en.eq(a_take)]

        with m.If(a_take):
            m.d.sync += a_waddr.eq(a_waddr + 1)
            with m.If(tile_end):
                m.d.sync += [t_kk.eq(0), t_live.eq(0), t_k0.eq(a_k + 1), p_zeros.eq(zeros_now)]
                with m.If(tile_live):
                    new = {"k0": t_k0, "last": panel_end, "empty": 0, "zeros": zeros_now}
                    m.d.comb += [tiles_w.en.eq(1), tiles_w.addr.eq(t_wptr)]
                    for field, value in new.items():
                        m.d.comb += tiles_w.data[field].eq(value)
                        m.d.sync += prev_entry[field].eq(value)
                    m.d.sync += [t_wptr.eq(t_wptr + 1), p_entries.eq(1)]
                with m.Elif(panel_end & p_entries):
                    # The panel ends in zero tiles: its final live entry becomes the last one.
                    m.d.comb += [tiles_w.en.eq(1), tiles_w.addr.eq(t_wptr - 1),
                                 tiles_w.data.k0.eq(prev_entry.k0), tiles_w.data.last.eq(1),
                                 tiles_w.data.empty.eq(0), tiles_w.data.zeros.eq(zeros_now)]
                with m.Elif(panel_end):
                    m.d.comb += [tiles_w.en.eq(1), tiles_w.addr.eq(t_wptr),
                                 tiles_w.data.k0.eq(0), tiles_w.data.last.eq(1),
                                 tiles_w.data.empty.eq(1), tiles_w.data.zeros.eq(zeros_now)]
                    m.d.sync += t_wptr.eq(t_wptr + 1)
            with m.Else():
                m.d.sync += [t_kk.eq(t_kk + 1), t_live.eq(tile_live)]
            with m.If(panel_end):
                m.d.sync += [a_k.eq(0), t_k0.eq(0), p_zeros.eq(0), p_entries.eq(0),
                             a_m0.eq(a_m0 + rows)]
                with m.If(a_m0 + rows >= lane_limit):
                    m.d.sync += a_done.eq(1)
            with m.Else():
                m.d.sync += a_k.eq(a_k + 1)

        # ---- Load: B side -------------------------------------------------------------------
        b_k = Signal(dim_shape)
        b_n0 = Signal(pos_shape)
        b_waddr = Signal(b_addr_shape)
        b_done = Signal()
        b_take = wire(m, self.b.valid & self.b.ready, "b_take")
        for c, (port, _) in enumerate(b_banks):
            m.d.comb += [port.addr.eq(b_waddr), port.en.eq(b_take),
                         port.data.eq(Mux(b_n0 + c >= n_dim, 0, self.b.payload[c]))]
        with m.If(b_take):
            m.d.sync += b_waddr.eq(b_waddr + 1)
            with m.If(b_k == k_dim - 1):
                m.d.sync += [b_k.eq(0), b_n0.eq(b_n0 + cols)]
                with m.If(b_n0 + cols >= n_dim):
                    m.d.sync += b_done.eq(1)
            with m.Else():
                m.d.sync += b_k.eq(b_k + 1)

        ctx = dict(m=m, cfg=cfg, rows=rows, cols=cols, tk=tk, dim_shape=dim_shape, pos_shape=pos_shape,
                   a_addr_shape=a_addr_shape, b_addr_shape=b_addr_shape, acc_shape=acc_shape,
                   m_dim=m_dim, k_dim=k_dim, n_dim=n_dim, threshold=threshold,
                   a_banks=a_banks, b_banks=b_banks, tiles_r=tiles_r,
                   busy_cycles=busy_cycles, load_cycles=load_cycles, skipped=skipped, macs=macs,
                   a_done=a_done, b_done=b_done,
                   load_reset=[a_k.eq(0), a_m0.eq(0), a_waddr.eq(0), a_done.eq(0),
                               t_kk.eq(0), t_k0.eq(0), t_live.eq(0), p_zeros.eq(0), p_entries.eq(0),
                               t_wptr.eq(0), b_k.eq(0), b_n0.eq(0), b_waddr.eq(0), b_done.eq(0)])
        if os_flow:
            self._output_stationary(**ctx)
        else:
            self._weight_stationary(**ctx)
        return m

    def _idle_and_load(self, m, cmd_extra, load_ready, start, in_load=None):
        """The IDLE and LOAD states shared by both dataflows (inside the caller's FSM).

        ``cmd_extra``: more statements when a command is taken; ``load_ready``: a further condition
        for leaving LOAD; ``start()``: builds the move to compute; ``in_load()``: more LOAD logic.
        """
        ctx = self._ctx
        with m.State("IDLE"):
            m.d.comb += self.cmd.ready.eq(1)
            with m.If(self.cmd.valid):
                p = self.cmd.payload
                m.d.sync += [
                    ctx["m_dim"].eq(p.m), ctx["k_dim"].eq(p.k), ctx["n_dim"].eq(p.n),
                    ctx["threshold"].eq(p.threshold), *ctx["load_reset"],
                    ctx["busy_cycles"].eq(0), ctx["load_cycles"].eq(0), ctx["skipped"].eq(0),
                    ctx["macs"].eq(0), *cmd_extra,
                ]
                m.next = "LOAD"
        with m.State("LOAD"):
            a_done, b_done = ctx["a_done"], ctx["b_done"]
            m.d.comb += [self.busy.eq(1), self.a.ready.eq(~a_done), self.b.ready.eq(~b_done)]
            m.d.sync += ctx["load_cycles"].eq(ctx["load_cycles"] + 1)
            if in_load is not None:
                in_load()
            with m.If(a_done & b_done & load_ready):
                start()

    def _output_stationary(self, *, m, cfg, rows, cols, tk, dim_shape, pos_shape, a_addr_shape,
                           b_addr_shape, acc_shape, m_dim, k_dim, n_dim, threshold, a_banks, b_banks,
                           tiles_r, busy_cycles, load_cycles, skipped, macs, a_done, b_done, load_reset):
        self._ctx = locals()
        # ---- Compute: the tile scheduler (issue stage) ---------------------------------------
        ptr = Signal(a_addr_shape)          # list entry being issued
        ptr_next = Signal(a_addr_shape)
        panel_start = Signal(a_addr_shape)
        kk = Signal(range(tk + 1))
        m0, n0 = Signal(pos_shape), Signal(pos_shape)
        a_base, b_base = Signal(a_addr_shape), Signal(b_addr_shape)
        m.d.comb += [ptr_next.eq(ptr), tiles_r.addr.eq(ptr_next), tiles_r.en.eq(1)]
        m.d.sync += ptr.eq(ptr_next)
        entry = tiles_r.data

        k_cur = wire(m, entry.k0 + kk, "k_cur", pos_shape)
        entry_end = wire(m, entry.empty | (kk == tk - 1) | (k_cur == k_dim - 1), "entry_end")
        tile_last = wire(m, entry_end & entry.last, "tile_last")
        last_n = wire(m, n0 + cols >= n_dim, "last_n")
        last_m = wire(m, m0 + rows >= m_dim, "last_m")
        rows_valid = _clipped(m, m_dim, m0, rows, "rows", pos_shape)
        cols_valid = _clipped(m, n_dim, n0, cols, "cols", pos_shape)
        tile_macs = _tile_macs(m, rows_valid, cols_valid, rows, cols)

        # Pipeline: issue -> s1 (operand read) -> s2 (products) -> accumulators / output bank.
        slot_layout = data.StructLayout({"valid": 1, "first": 1, "last": 1, "zero": 1, "final": 1,
                                         "rows": range(rows + 1)})
        s1, s2 = Signal(slot_layout), Signal(slot_layout)
        issue = Signal(slot_layout)
        m.d.sync += [s1.eq(issue), s2.eq(s1)]
        a_raddr = Signal(a_addr_shape)
        b_raddr = Signal(b_addr_shape)
        for _, port in a_banks:
            m.d.comb += port.addr.eq(a_raddr)
        for _, port in b_banks:
            m.d.comb += port.addr.eq(b_raddr)
        m.d.comb += [a_raddr.eq(a_base + k_cur), b_raddr.eq(b_base + k_cur)]

        out_full = Signal()
        out_count = Signal(range(rows + 1))
        out_final = Signal()
        out_free = wire(m, ~out_full & ~(s1.valid & s1.last) & ~(s2.valid & s2.last), "out_free")
        macs_add = Signal(unsigned(bits_for(rows * cols)))
        m.d.sync += [macs_add.eq(0), macs.eq(macs + macs_add)]

        with m.FSM():
            def start():
                m.d.comb += ptr_next.eq(0)
                m.d.sync += [panel_start.eq(0), kk.eq(0), m0.eq(0), n0.eq(0), a_base.eq(0), b_base.eq(0)]
                m.next = "COMPUTE"
            self._idle_and_load(m, [], 1, start)

            with m.State("COMPUTE"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += busy_cycles.eq(busy_cycles + 1)
                with m.If(~tile_last | out_free):
                    m.d.comb += [
                        issue.valid.eq(1),
                        issue.first.eq((ptr == panel_start) & (kk == 0)),
                        issue.last.eq(tile_last),
                        issue.zero.eq(entry.empty),
                        issue.final.eq(tile_last & last_n & last_m),
                        issue.rows.eq(rows_valid),
                    ]
                    m.d.sync += macs_add.eq(Mux(entry.empty, 0, tile_macs))
                    with m.If(entry_end):
                        m.d.sync += kk.eq(0)
                        with m.If(~entry.last):
                            m.d.comb += ptr_next.eq(ptr + 1)
                    with m.Else():
                        m.d.sync += kk.eq(kk + 1)
                    with m.If(tile_last):
                        m.d.sync += skipped.eq(skipped + entry.zeros)
                        with m.If(~last_n):
                            m.d.comb += ptr_next.eq(panel_start)
                            m.d.sync += [n0.eq(n0 + cols), b_base.eq(b_base + k_dim)]
                        with m.Elif(~last_m):
                            m.d.comb += ptr_next.eq(ptr + 1)
                            m.d.sync += [n0.eq(0), b_base.eq(0), m0.eq(m0 + rows),
                                         a_base.eq(a_base + k_dim), panel_start.eq(ptr + 1)]
                        with m.Else():
                            m.next = "DRAIN"

            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += busy_cycles.eq(busy_cycles + 1)
                with m.If(self.result.valid & self.result.ready & out_final & (out_count == 1)):
                    m.next = "IDLE"

        # ---- The array: products in s2, accumulation into the PEs and the output bank ---------
        out_bank = [[Signal(acc_shape, name=f"out_{r}_{c}") for c in range(cols)] for r in range(rows)]
        for r in range(rows):
            a_val = a_banks[r][1].data
            for c in range(cols):
                product = Signal(signed(2 * self.operand_bits), name=f"prod_{r}_{c}")
                m.d.sync += product.eq(a_val * b_banks[c][1].data)
                acc = Signal(acc_shape, name=f"acc_{r}_{c}")
                total = wire(m, Mux(s2.first | s2.zero, 0, acc) + Mux(s2.zero, 0, product),
                             f"sum_{r}_{c}", acc_shape)
                with m.If(s2.valid):
                    m.d.sync += acc.eq(total)
                    with m.If(s2.last):
                        m.d.sync += out_bank[r][c].eq(total)

        # ---- Result stream: the output bank drains one row per beat --------------------------
        for c in range(cols):
            m.d.comb += self.result.payload.data[c].eq(self._fit(out_bank[0][c]))
        m.d.comb += [self.result.valid.eq(out_full),
                     self.result.payload.last.eq(out_final & (out_count == 1))]
        with m.If(s2.valid & s2.last):
            m.d.sync += [out_full.eq(1), out_count.eq(s2.rows), out_final.eq(s2.final)]
        with m.Elif(self.result.valid & self.result.ready):
            for r in range(rows - 1):
                for c in range(cols):
                    m.d.sync += out_bank[r][c].eq(out_bank[r + 1][c])
            m.d.sync += out_count.eq(out_count - 1)
            with m.If(out_count == 1):
                m.d.sync += [out_full.eq(0), out_final.eq(0)]


    def _fit(self, value):
        """An accumulator value in the result format: its low bits (WRAP) or clamped (SATURATE)."""
        fmt = self.cfg.acc_format
        if self.overflow is Overflow.SATURATE and self.acc_width > self.cfg.acc_bits:
            return Mux(value > fmt.max, fmt.max, Mux(value < fmt.min, fmt.min, value))
        return value

    def _weight_stationary(self, *, m, cfg, rows, cols, tk, dim_shape, pos_shape, a_addr_shape,
                           b_addr_shape, acc_shape, m_dim, k_dim, n_dim, threshold, a_banks, b_banks,
                           tiles_r, busy_cycles, load_cycles, skipped, macs, a_done, b_done, load_reset):
        self._ctx = locals()
        act_shape = signed(self.operand_bits)

        # ---- Partial-sum buffers: two halves (ping-pong over column panels), one row per A row -
        psum_layout = data.ArrayLayout(acc_shape, cols)
        psum_w, psum_r = [], []
        for h in range(2):
            mem = memory.Memory(shape=psum_layout, depth=cfg.max_tokens, init=[])
            m.submodules[f"psum{h}"] = mem
            psum_w.append(mem.write_port())
            psum_r.append(mem.read_port())
            m.d.comb += psum_r[h].en.eq(0)

        # ---- Scheduler state --------------------------------------------------------------
        ptr = Signal(a_addr_shape)
        ptr_next = Signal(a_addr_shape)
        mm = Signal(range(tk + 1))          # position within the live tile
        p0 = Signal(pos_shape)              # first column of A (row of B) of the current k-chunk
        n0 = Signal(pos_shape)
        a_base, b_base = Signal(a_addr_shape), Signal(b_addr_shape)
        half = Signal()                     # partial-sum half of the current column panel
        wbank = Signal()                    # weight bank of the current k-chunk
        clear_row = Signal(pos_shape)       # rows of both halves cleared during LOAD
        m.d.comb += [ptr_next.eq(ptr), tiles_r.addr.eq(ptr_next), tiles_r.en.eq(1)]
        m.d.sync += ptr.eq(ptr_next)
        entry = tiles_r.data

        m_cur = wire(m, entry.k0 + mm, "m_cur", pos_shape)
        entry_end = wire(m, (mm == tk - 1) | (m_cur == m_dim - 1), "entry_end")
        last_k = wire(m, p0 + rows >= k_dim, "last_k")
        last_n = wire(m, n0 + cols >= n_dim, "last_n")
        k_valid = _clipped(m, k_dim, p0, rows, "k", pos_shape)
        cols_valid = _clipped(m, n_dim, n0, cols, "cols", pos_shape)
        tile_macs = _tile_macs(m, k_valid, cols_valid, rows, cols)
        macs_add = Signal(unsigned(bits_for(rows * cols)))
        m.d.sync += [macs_add.eq(0), macs.eq(macs + macs_add)]

        # Pipeline: issue -> s1 (A read) -> s2 (products) -> s3 (column sums, partial-sum read)
        # -> partial-sum write. ``mark`` travels alongside and flags the end of a column panel.
        slot_layout = data.StructLayout({"valid": 1, "m": dim_shape, "half": 1, "wbank": 1})
        mark_layout = data.StructLayout({"valid": 1, "half": 1, "final": 1})
        issue, s1, s2, s3 = (Signal(slot_layout, name=n) for n in ("issue", "s1", "s2", "s3"))
        mark, e1, e2, e3 = (Signal(mark_layout, name=n) for n in ("mark", "e1", "e2", "e3"))
        m.d.sync += [s1.eq(issue), s2.eq(s1), s3.eq(s2), e1.eq(mark), e2.eq(e1), e3.eq(e2)]
        a_raddr = Signal(a_addr_shape)
        m.d.comb += a_raddr.eq(a_base + m_cur)
        for _, port in a_banks:
            m.d.comb += port.addr.eq(a_raddr)
        # Weights: two banks. The loader walks the k-chunks of every column panel in order, one
        # ahead of the scheduler: it fills the free bank with the chunk's R rows of B (one row per
        # cycle, rows past k as zeros) and marks it ready; the scheduler releases a bank when its
        # chunk is done. Loading the next chunk's weights thus overlaps the current chunk's rows.
        weights = [[[Signal(act_shape, name=f"w{b}_{r}_{c}") for c in range(cols)] for r in range(rows)]
                   for b in range(2)]
        wready = Signal(2)
        ld_active, ld_bank = Signal(), Signal()
        ld_r = Signal(range(rows + 1))
        ld_p0, ld_n0 = Signal(pos_shape), Signal(pos_shape)
        ld_b_base = Signal(b_addr_shape)
        cap_valid, cap_bank, cap_zero, cap_last = Signal(), Signal(), Signal(), Signal()
        b_raddr = Signal(b_addr_shape)
        m.d.comb += b_raddr.eq(ld_b_base + ld_p0 + ld_r)
        for _, port in b_banks:
            m.d.comb += port.addr.eq(b_raddr)
        loading = wire(m, ld_active & ~wready.bit_select(ld_bank, 1), "loading")
        m.d.sync += [cap_valid.eq(loading), cap_bank.eq(ld_bank), cap_zero.eq(ld_p0 + ld_r >= k_dim),
                     cap_last.eq(ld_r == rows - 1)]
        with m.If(loading):
            with m.If(ld_r == rows - 1):
                m.d.sync += [ld_r.eq(0), ld_bank.eq(~ld_bank)]
                with m.If(ld_p0 + rows < k_dim):
                    m.d.sync += ld_p0.eq(ld_p0 + rows)
                with m.Else():
                    m.d.sync += [ld_p0.eq(0), ld_n0.eq(ld_n0 + cols), ld_b_base.eq(ld_b_base + k_dim)]
                    with m.If(ld_n0 + cols >= n_dim):
                        m.d.sync += ld_active.eq(0)
            with m.Else():
                m.d.sync += ld_r.eq(ld_r + 1)
        for b in range(2):
            with m.If(cap_valid & (cap_bank == b)):
                for c in range(cols):
                    m.d.sync += weights[b][rows - 1][c].eq(Mux(cap_zero, 0, b_banks[c][1].data))
                    for r in range(rows - 1):
                        m.d.sync += weights[b][r][c].eq(weights[b][r + 1][c])
        with m.If(cap_valid & cap_last):
            m.d.sync += wready.bit_select(cap_bank, 1).eq(1)
        bank_ready = wire(m, wready.bit_select(wbank, 1), "bank_ready")

        # Emission state (declared here: the scheduler checks which half is free).
        pend = Signal(2)
        pend_final = Signal(2)
        emitting = Signal()
        emit_half = Signal()
        in_flight = [wire(m, (e1.valid & (e1.half == h)) | (e2.valid & (e2.half == h))
                          | (e3.valid & (e3.half == h)), f"mark_in_flight{h}") for h in range(2)]
        half_free = wire(m, Mux(half, ~pend[1] & ~(emitting & emit_half) & ~in_flight[1],
                                ~pend[0] & ~(emitting & ~emit_half) & ~in_flight[0]), "half_free")
        final_taken = wire(m, self.result.valid & self.result.ready & self.result.payload.last, "final_taken")

        def next_panel():
            """The current k-chunk is done: release its weights; the next chunk, or the end of the
            column panel."""
            m.d.comb += ptr_next.eq(ptr + 1)
            m.d.sync += [wready.bit_select(wbank, 1).eq(0), wbank.eq(~wbank), mm.eq(0)]
            with m.If(~last_k):
                m.d.sync += [p0.eq(p0 + rows), a_base.eq(a_base + m_dim)]
            with m.Else():
                m.d.comb += [mark.valid.eq(1), mark.half.eq(half), mark.final.eq(last_n)]
                with m.If(~last_n):
                    m.d.comb += ptr_next.eq(0)
                    m.d.sync += [n0.eq(n0 + cols), b_base.eq(b_base + k_dim), p0.eq(0), a_base.eq(0),
                                 half.eq(~half)]
                    m.next = "COLUMNS"
                with m.Else():
                    m.next = "DRAIN"

        with m.FSM():
            def start():
                m.d.comb += ptr_next.eq(0)
                m.d.sync += [mm.eq(0), p0.eq(0), n0.eq(0), a_base.eq(0), b_base.eq(0), half.eq(0),
                             wbank.eq(0), wready.eq(0), ld_active.eq(1), ld_bank.eq(0), ld_r.eq(0),
                             ld_p0.eq(0), ld_n0.eq(0), ld_b_base.eq(0)]
                m.next = "COLUMNS"

            def clear():
                # Both partial-sum halves are cleared while the operands load (at least m cycles).
                with m.If(clear_row < m_dim):
                    for h in range(2):
                        m.d.comb += [psum_w[h].en.eq(1), psum_w[h].addr.eq(clear_row), psum_w[h].data.eq(0)]
                    m.d.sync += clear_row.eq(clear_row + 1)
            self._idle_and_load(m, [clear_row.eq(0)], clear_row >= m_dim, start, clear)

            with m.State("COLUMNS"):
                # A column panel starts once its partial-sum half has been emitted and cleared.
                m.d.comb += self.busy.eq(1)
                m.d.sync += busy_cycles.eq(busy_cycles + 1)
                with m.If(half_free):
                    m.next = "ISSUE"

            with m.State("ISSUE"):
                # One live A row segment per cycle once the chunk's weights are in; an all-zero
                # k-chunk (one empty list entry) is passed over in one cycle. A row whose partial
                # sum is still on its way back (issued the cycle before) waits a cycle.
                m.d.comb += self.busy.eq(1)
                m.d.sync += busy_cycles.eq(busy_cycles + 1)
                hazard = s1.valid & (s1.half == half) & (s1.m == m_cur)
                with m.If(bank_ready & entry.empty):
                    m.d.sync += skipped.eq(skipped + entry.zeros)
                    next_panel()
                with m.Elif(bank_ready & ~hazard):
                    m.d.sync += macs_add.eq(tile_macs)
                    m.d.comb += [issue.valid.eq(1), issue.m.eq(m_cur), issue.half.eq(half),
                                 issue.wbank.eq(wbank)]
                    with m.If(entry_end):
                        m.d.sync += mm.eq(0)
                        with m.If(~entry.last):
                            m.d.comb += ptr_next.eq(ptr + 1)
                        with m.Else():
                            m.d.sync += skipped.eq(skipped + entry.zeros)
                            next_panel()
                    with m.Else():
                        m.d.sync += mm.eq(mm + 1)

            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += busy_cycles.eq(busy_cycles + 1)
                with m.If(final_taken):
                    m.next = "IDLE"

        # ---- The array: products x[r] * w[r][c], column sums, partial-sum accumulation --------
        product_shape = signed(2 * self.operand_bits)
        colsum_shape = signed(2 * self.operand_bits + bits_for(rows))
        colsums = []
        for c in range(cols):
            terms = []
            for r in range(rows):
                product = Signal(product_shape, name=f"prod_{r}_{c}")
                weight = Mux(s1.wbank, weights[1][r][c], weights[0][r][c])
                m.d.sync += product.eq(a_banks[r][1].data * weight)
                terms.append(product)
            level = 0
            while len(terms) > 1:   # a balanced adder tree down each column
                level += 1
                paired = [wire(m, terms[i] + terms[i + 1], f"col{c}_l{level}_{i // 2}", colsum_shape)
                          for i in range(0, len(terms) - 1, 2)]
                terms = paired + terms[len(paired) * 2:]
            colsum = Signal(colsum_shape, name=f"colsum_{c}")
            m.d.sync += colsum.eq(terms[0])
            colsums.append(colsum)

        for h in range(2):
            with m.If(s2.valid & (s2.half == h)):
                m.d.comb += [psum_r[h].addr.eq(s2.m), psum_r[h].en.eq(1)]
            with m.If(s3.valid & (s3.half == h)):
                m.d.comb += [psum_w[h].en.eq(1), psum_w[h].addr.eq(s3.m)]
                for c in range(cols):
                    m.d.comb += psum_w[h].data[c].eq(psum_r[h].data[c] + colsums[c])

        # ---- Emission: rows 0 .. m-1 of a finished half, read, sent and cleared ---------------
        e_row = Signal(pos_shape)           # next row to read
        o_valid = Signal()
        o_row = Signal(pos_shape)
        o_final = Signal()
        with m.If(e3.valid):
            m.d.sync += [pend.bit_select(e3.half, 1).eq(1), pend_final.bit_select(e3.half, 1).eq(e3.final)]
        with m.If(~emitting & pend.any()):
            start_half = Mux(pend[0], 0, 1)
            m.d.sync += [emitting.eq(1), emit_half.eq(start_half), e_row.eq(0),
                         o_final.eq(pend_final.bit_select(start_half, 1)),
                         pend.bit_select(start_half, 1).eq(0)]
        take = wire(m, ~o_valid | self.result.ready, "emit_advance")
        with m.If(emitting & take):
            with m.If(e_row < m_dim):
                for h in range(2):
                    with m.If(emit_half == h):
                        m.d.comb += [psum_r[h].addr.eq(e_row), psum_r[h].en.eq(1),
                                     psum_w[h].en.eq(1), psum_w[h].addr.eq(e_row), psum_w[h].data.eq(0)]
                m.d.sync += [e_row.eq(e_row + 1), o_valid.eq(1), o_row.eq(e_row)]
            with m.Else():
                m.d.sync += [o_valid.eq(0), emitting.eq(0)]
        row_data = [wire(m, Mux(emit_half, psum_r[1].data[c], psum_r[0].data[c]), f"emit_data{c}",
                         acc_shape) for c in range(cols)]
        for c in range(cols):
            m.d.comb += self.result.payload.data[c].eq(self._fit(row_data[c]))
        m.d.comb += [self.result.valid.eq(o_valid),
                     self.result.payload.last.eq(o_final & (o_row == m_dim - 1))]


def _any_nonzero(values):
    """1 when any of ``values`` is non-zero."""
    result = Const(0, 1)
    for value in values:
        result = result | value.any()
    return result
