"""On-chip self-test harness for the top-k engine: stimulus, back-pressure and a checked checksum.

The harness lets the engine be built for a board without any of its stream ports reaching pins,
and without Yosys being able to optimize any of it away: the scores come from free-running
generators, every emitted index feeds a checksum, and the checksum drives the status outputs.

The same run is modelled in Python (:func:`harness_model`, on the golden top-k model), so the
harness knows at elaboration time which checksum a correct engine must produce: on a board, the
``passed`` LED is a real end-to-end test of the engine.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from spattn.config import AccelConfig, check_topk_run

__all__ = ["CHECKSUM_BITS", "default_ks", "lane_seeds", "xorshift32", "harness_model", "TopKHarness"]

#: Width of the index checksum.
CHECKSUM_BITS = 32

_MASK32 = (1 << 32) - 1


def default_ks(cfg: AccelConfig):
    """The ``k`` of each run: the edge cases 0, 1, 2, n - 1, n and a few in between (n = max_tokens)."""
    n = cfg.max_tokens
    return [min(k, n) for k in (0, 1, n, n // 2, n - 1, 2, n // 3, (3 * n) // 4)]


def lane_seeds(cfg: AccelConfig):
    """Distinct non-zero xorshift32 seeds, one per score lane."""
    seeds = []
    for lane in range(cfg.topk_stream_lanes):
        seed = ((lane + 1) * 0x9E3779B9 + 0x7F4A7C15) & _MASK32
        seeds.append(seed or 1)
    return seeds


def xorshift32(x):
    """Marsaglia's xorshift32 step (13, 17, 5): period 2**32 - 1 over the non-zero states."""
    x ^= (x << 13) & _MASK32
    x ^= x >> 17
    x ^= (x << 5) & _MASK32
    return x


def _rotl32(x, r):
    r %= 32
    return ((x << r) | (x >> (32 - r))) & _MASK32 if r else x


def _index_word(index):
    # (index << 1) | 1: index 0 still changes the checksum.
    return (index << 1) | 1


def _lane_score(state, score_bits):
    value = state & ((1 << score_bits) - 1)
    return value - (1 << score_bits) if value >> (score_bits - 1) else value


def harness_model(cfg: AccelConfig, ks=None):
    """What a correct engine makes :class:`TopKHarness` show: ``(checksum, total_indices)``.

    Run ``r`` sends ``n = max_tokens`` scores and asks for ``ks[r]``; score ``i`` of a run is lane
    ``i % lanes`` of beat ``i // lanes``, the low ``score_bits`` bits (two's complement) of that
    lane's xorshift32 state, which steps once per accepted beat and carries over between runs.
    The ``j``-th index emitted overall, ``x``, is folded in as
    ``checksum ^= rotl32((x << 1) | 1, j % 32)``, so the checksum depends on each index and its
    position but not on how the engine packs indices into beats.
    """
    from spattn.sim.golden.topk import topk_indices

    ks = default_ks(cfg) if ks is None else list(ks)
    n, lanes = cfg.max_tokens, cfg.topk_stream_lanes
    states = lane_seeds(cfg)
    checksum, position = 0, 0
    for k in ks:
        check_topk_run(cfg, n, k)
        scores = []
        for _ in range(-(-n // lanes)):
            scores.extend(_lane_score(state, cfg.score_bits) for state in states)
            states = [xorshift32(state) for state in states]
        for index in topk_indices(scores[:n], k):
            checksum ^= _rotl32(_index_word(index), position)
            position += 1
    return checksum, position


def _xorshift32_hw(x):
    x = x ^ (x << 13)[:32]
    x = x ^ (x >> 17)
    x = x ^ (x << 5)[:32]
    return x


class TopKHarness(wiring.Component):
    """Runs the top-k engine on generated scores and checks every index it emits.

    The harness issues ``len(ks)`` runs, one after the other; run ``r`` is the command
    ``n = max_tokens, k = ks[r]`` followed by ``ceil(n / topk_stream_lanes)`` score beats from one
    xorshift32 generator per lane (see :func:`harness_model`). Score beats are offered with about
    one idle cycle in four, and the index stream is back-pressured about one cycle in four, both
    from a free-running 16-bit LFSR. A run ends when its score beats are sent and its ``last``
    index beat is taken; the next command follows at once. After the last run the harness stops.

    Every index beat is checked as it is taken: ``count`` at most P, indices below ``n`` and
    strictly ascending within the run, no more than ``k`` of them, exactly ``k`` at ``last``,
    and no beat outside a run. The indices are also folded into :attr:`checksum`, which must end
    equal to :func:`harness_model`'s, computed with the golden model at construction.

    Parameters
    ----------
    cfg : AccelConfig
    ks : sequence of int, optional
        The ``k`` of each run (default :func:`default_ks`); each must lie in ``0 ..= max_tokens``.
    engine : wiring.Component, optional
        The engine to drive, with :class:`spattn.hw.topk.TopKEngine`'s signature; by default a new
        ``TopKEngine(cfg)``. A substitute engine is for testing the harness itself.

    Members
    -------
    done : Out(1)
        All runs have ended.
    passed : Out(1)
        ``done``, no check failed and the checksum and index count equal the model's.
    failed : Out(1)
        A check failed (may rise before ``done``), or ``done`` with a wrong checksum or count.
    busy : Out(1)
        The engine's ``busy``.
    checksum : Out(32)
        The running index checksum.

    Latency: ``done`` rises three cycles after the last run's final index beat is taken; each run
    takes the engine's own run time plus the idle cycles and stalls above. Raises
    :class:`spattn.config.ConfigError` for a ``k`` out of range.
    """

    done: Out(1)
    passed: Out(1)
    failed: Out(1)
    busy: Out(1)
    checksum: Out(CHECKSUM_BITS)

    def __init__(self, cfg: AccelConfig, *, ks=None, engine=None):
        self.cfg = cfg
        self.ks = default_ks(cfg) if ks is None else [int(k) for k in ks]
        try:
            if not self.ks:
                raise ValueError("the harness needs at least one run, not an empty ks")
            for k in self.ks:
                check_topk_run(cfg, cfg.max_tokens, k)
        except ValueError:
            self._MustUse__silence = True   # never elaborated: no "created but never used"
            raise
        self.expected_checksum, self.expected_total = harness_model(cfg, self.ks)
        if engine is None:
            from spattn.hw.topk import TopKEngine
            engine = TopKEngine(cfg)
        self.engine = engine
        super().__init__()

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.engine = eng = self.engine

        n = cfg.max_tokens
        p = cfg.topk_comparators
        lanes = cfg.topk_stream_lanes
        beats = -(-n // lanes)
        runs = len(self.ks)

        # Idle and stall pattern: a 16-bit Galois LFSR (x^16 + x^14 + x^13 + x^11 + 1) every cycle.
        pattern = Signal(16, init=0xACE1)
        m.d.sync += pattern.eq(Mux(pattern[0], (pattern >> 1) ^ 0xB400, pattern >> 1))
        idle = pattern[0] & pattern[1]
        stall = pattern[2] & pattern[3]

        run = Signal(range(runs))
        ks = Array(Const(k, cfg.count_bits) for k in self.ks)
        k_now = Signal(cfg.count_bits)
        m.d.comb += k_now.eq(ks[run])

        in_run = Signal()          # a command was taken and its last index beat was not yet
        beats_left = Signal(range(beats + 1))
        error = Signal()
        done = Signal()

        # Commands and scores.
        states = [Signal(32, init=seed, name=f"lane{lane}_state")
                  for lane, seed in enumerate(lane_seeds(cfg))]
        m.d.comb += [
            eng.cmd.payload.n.eq(n),
            eng.cmd.payload.k.eq(k_now),
        ]
        for lane, state in enumerate(states):
            m.d.comb += eng.scores.payload[lane].eq(state[:cfg.score_bits])

        offer = Signal()           # registered permission to offer a score beat
        sending = Signal()         # between the command and the run's last score beat
        m.d.comb += eng.scores.valid.eq(sending & offer)
        with m.If(~eng.scores.valid | eng.scores.ready):
            m.d.sync += offer.eq(~idle)
        with m.If(eng.scores.valid & eng.scores.ready):
            m.d.sync += [state.eq(_xorshift32_hw(state)) for state in states]
            m.d.sync += beats_left.eq(beats_left - 1)
            with m.If(beats_left == 1):
                m.d.sync += sending.eq(0)

        issuing = Signal(init=1)   # offering the command of run `run`
        m.d.comb += eng.cmd.valid.eq(issuing)
        with m.If(eng.cmd.valid & eng.cmd.ready):
            m.d.sync += [issuing.eq(0), sending.eq(1), beats_left.eq(beats), in_run.eq(1)]

        # Indices: drain, check, fold into the checksum.
        out = eng.indices
        m.d.comb += out.ready.eq(~stall)
        # Each taken beat is registered before it is checked, so the checks and the checksum hang
        # off flip-flops rather than the engine's output logic: a build's Fmax measures the engine.
        beat = Signal(out.payload.shape())
        take = Signal()
        m.d.sync += take.eq(out.valid & out.ready)
        with m.If(out.valid & out.ready):
            m.d.sync += beat.eq(out.payload)
        count = beat.count
        index = [beat.index[lane] for lane in range(p)]
        lane_on = [count > lane for lane in range(p)]

        emitted = Signal(cfg.count_bits + 1)   # indices taken in this run
        prev = Signal(cfg.index_bits)          # last index taken in this run, if emitted != 0
        position = Signal(32)                  # indices taken over all runs
        checksum = Signal(CHECKSUM_BITS)

        bad = [count > p, ~in_run, emitted + count > k_now, beat.last & (emitted + count != k_now)]
        for lane in range(p):
            after = Mux(emitted == 0, 1, index[lane] > prev) if lane == 0 else index[lane] > index[lane - 1]
            bad.append(lane_on[lane] & ((index[lane] >= n) | ~after))

        words = []
        for lane in range(p):
            word = Cat(Const(1, 1), index[lane]).as_unsigned()
            word = Cat(word, Const(0, 32 - len(word)))
            words.append(Mux(lane_on[lane], word.rotate_left(lane % 32), 0))
        folded = Const(0, 32)
        for word in words:
            folded = folded ^ word
        rotated = (Cat(folded, folded) << position[:5])[32:64]

        last_index = Signal(cfg.index_bits)
        m.d.comb += last_index.eq(index[0])
        for lane in range(1, p):
            with m.If(lane_on[lane]):
                m.d.comb += last_index.eq(index[lane])

        with m.If(take):
            with m.If(Cat(*bad).any()):
                m.d.sync += error.eq(1)
            m.d.sync += [
                checksum.eq(checksum ^ rotated),
                position.eq(position + count),
                emitted.eq(emitted + count),
            ]
            with m.If(count != 0):
                m.d.sync += prev.eq(last_index)
            with m.If(beat.last):
                m.d.sync += [in_run.eq(0), emitted.eq(0)]

        # The run ends when its scores are sent and its last index beat is taken (in either order).
        ended = Signal()
        with m.If(in_run & take & beat.last):
            m.d.sync += ended.eq(1)
        with m.If(~issuing & ~sending & ended & ~done):
            m.d.sync += ended.eq(0)
            with m.If(run == runs - 1):
                m.d.sync += done.eq(1)
            with m.Else():
                m.d.sync += [run.eq(run + 1), issuing.eq(1)]

        match = (checksum == self.expected_checksum) & (position == self.expected_total)
        m.d.comb += [
            self.done.eq(done),
            self.passed.eq(done & ~error & match),
            self.failed.eq(error | (done & ~match)),
            self.busy.eq(eng.busy),
            self.checksum.eq(checksum),
        ]
        return m
