"""Value selector: each row's k-th largest probability by a radix search, for local value pruning."""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from spattn.formats import VALUE_KEEP_FRAC

from .common import Geometry, ReadPort, block_layout
from .softmax_unit import prob_word_layout, sample_layout

__all__ = ["ValueSelector", "DIGIT_BITS", "digit_widths"]

#: Bits of the probability decided per pass of the radix search (``2**DIGIT_BITS`` counters a row).
DIGIT_BITS = 4


def digit_widths(prob_bits):
    """Widths of the digits, most significant first: the first takes what is left over."""
    passes = -(-prob_bits // DIGIT_BITS)
    return [prob_bits - DIGIT_BITS * (passes - 1)] + [DIGIT_BITS] * (passes - 1)


class ValueSelector(wiring.Component):
    """For each final row of a block that keeps fewer V rows than it has present keys (the count
    is :func:`spattn.formats.kept_count` of ``value_keep``), finds its ``k``-th largest present
    probability ``kth`` and how many probabilities equal to it are kept (``ties``, the earliest
    ones: ties go to the lower key). The row keeps exactly the keys with ``p > kth`` and the first
    ``ties`` keys with ``p == kth``, which is the golden model's top-k with its tie-break.

    A most-significant-digit-first radix search, all rows at once: each pass counts, per row, the
    present keys whose higher digits match the row's prefix, in ``2**DIGIT_BITS`` counters per
    row; a scan of the counters from the top fixes the row's next digit. The first pass counts the
    words the softmax unit writes (``sample``), the others read the prob bank again.

    Members
    -------
    go : In(1)
        Arm for block ``block`` (its ``final`` rows set) before the softmax unit's pass 2.
    block : In(:func:`block_layout`), set : In(1)
    value_keep : In(``VALUE_KEEP_FRAC + 1``)
    present_count : In(array 2 of array R of count)
    sample : In(:func:`sample_layout`), sample_valid : In(1)
    prob_read : Out(:class:`ReadPort` of the prob bank)
    pruned : Out(R), kth : Out(array R of prob), ties : Out(array R of count)
        Valid from ``done`` until the next ``go``.
    done : Out(1), idle : Out(1)

    Latency after the sample pass: none when no row is pruned, else ``passes - 1`` passes of
    ``n_keys + 3`` cycles and ``passes`` scans of ``2**DIGIT_BITS`` cycles.
    """

    def __init__(self, geo: Geometry):
        self.geo = geo
        prob = unsigned(geo.fmt.prob.bits)
        super().__init__({
            "go": In(1), "block": In(block_layout(geo.cfg)), "set": In(1),
            "value_keep": In(VALUE_KEEP_FRAC + 1),
            "present_count": In(data.ArrayLayout(data.ArrayLayout(geo.count, geo.R), 2)),
            "sample": In(sample_layout(geo)), "sample_valid": In(1),
            "prob_read": Out(ReadPort(geo.T, prob_word_layout(geo))),
            "pruned": Out(geo.R), "kth": Out(data.ArrayLayout(prob, geo.R)),
            "ties": Out(data.ArrayLayout(geo.count, geo.R)),
            "done": Out(1), "idle": Out(1),
        })

    def elaborate(self, platform):
        geo = self.geo
        m = Module()
        R = geo.R
        bits = geo.fmt.prob.bits
        widths = digit_widths(bits)
        passes = len(widths)
        shifts = [bits - sum(widths[:i + 1]) for i in range(passes)]
        buckets = 1 << DIGIT_BITS
        block = Signal(block_layout(geo.cfg))
        digit = Signal(range(passes))                 # the pass

        def per_pass(values, shape, name):
            """The value of a per-pass constant for the current pass."""
            chosen = Signal(shape, name=name)
            m.d.comb += chosen.eq(values[0])
            for i in range(1, passes):
                with m.If(digit == i):
                    m.d.comb += chosen.eq(values[i])
            return chosen

        def digit_of(value, name):
            """The current pass's digit of ``value``, and whether its higher digits equal those of
            ``reference`` (as a function)."""
            return per_pass([value[shifts[i]:shifts[i] + widths[i]] for i in range(passes)],
                            unsigned(DIGIT_BITS), name)

        def higher_equal(value, reference):
            result = Signal()
            m.d.comb += result.eq(1)
            for i in range(1, passes):
                with m.If(digit == i):
                    m.d.comb += result.eq(value[shifts[i - 1]:] == reference[shifts[i - 1]:])
            return result

        prefix = [Signal(unsigned(bits), name=f"prefix{r}") for r in range(R)]
        remaining = [Signal(geo.count, name=f"remaining{r}") for r in range(R)]
        pruned = Signal(R)
        m.d.comb += self.pruned.eq(pruned)
        for r in range(R):
            m.d.comb += [self.kth[r].eq(prefix[r]), self.ties[r].eq(remaining[r])]

        # ---- counting: one word of R probabilities a cycle; per row 2**DIGIT_BITS counters in a
        # small memory (LUT RAM) read and written back in the same cycle -----------------------------
        # the word to count arrives here (from the softmax unit or the prob bank) and is counted
        # from a register a cycle later
        arriving_valid, count_last = Signal(), Signal()
        arriving_word = Signal(prob_word_layout(geo))
        count_valid = Signal()
        count_word = Signal(prob_word_layout(geo))
        m.d.sync += [count_valid.eq(arriving_valid), count_word.eq(arriving_word)]
        scanning = Signal()
        scan_bucket = Signal(range(buckets))
        accumulated = [Signal(geo.count, name=f"accumulated{r}") for r in range(R)]
        found = Signal(R)
        shift_now = per_pass(shifts, range(bits + 1), "shift_now")
        for r in range(R):
            value = count_word.prob[r]
            hit = count_valid & count_word.present[r] & higher_equal(value, prefix[r])
            value_digit = digit_of(value, f"digit{r}")
            counters = memory.Memory(shape=geo.count, depth=buckets, init=[])
            m.submodules[f"counters{r}"] = counters
            write, read = counters.write_port(), counters.read_port(domain="comb")
            # A counter counts only once written since ``go`` (a bit per counter in registers), so
            # a reset or an abandoned run leaves nothing behind in the memory.
            written = Signal(buckets, name=f"written{r}")
            bucket = Signal(range(buckets), name=f"bucket{r}")
            count = Signal(geo.count, name=f"count{r}")
            m.d.comb += [bucket.eq(Mux(scanning, scan_bucket, value_digit)), read.addr.eq(bucket),
                         count.eq(Mux(written.bit_select(bucket, 1), read.data, 0)),
                         write.addr.eq(bucket), write.en.eq(hit & ~scanning), write.data.eq(count + 1)]
            with m.If(self.go):
                m.d.sync += written.eq(0)
            with m.Elif(scanning):
                # the scan reads each bucket once and empties it
                m.d.sync += written.bit_select(bucket, 1).eq(0)
            with m.Elif(hit):
                m.d.sync += written.bit_select(bucket, 1).eq(1)
            top = count
            # the scan: the first bucket from the top where the running count reaches `remaining`
            reached = accumulated[r] + top >= remaining[r]
            with m.If(scanning & ~found[r] & reached):
                m.d.sync += [found[r].eq(1), remaining[r].eq(remaining[r] - accumulated[r]),
                             prefix[r].eq(prefix[r] | (scan_bucket << shift_now))]
            with m.If(scanning):
                m.d.sync += accumulated[r].eq(accumulated[r] + top)

        # ---- kept counts: one shared multiplier, a row a cycle ----------------------------------
        keep_row = Signal(range(R + 2), init=R)
        keep_product = Signal(unsigned(VALUE_KEEP_FRAC + 1 + geo.count.width))
        product_row = Signal(range(R + 1))
        product_count = Signal(geo.count)
        product_valid = Signal()
        count_now = Signal(geo.count)
        counts = self.present_count[self.set]
        m.d.comb += count_now.eq(counts[0])
        for r in range(1, R):
            with m.If(keep_row == r):
                m.d.comb += count_now.eq(counts[r])
        m.d.sync += [product_valid.eq(keep_row < R), product_row.eq(keep_row),
                     product_count.eq(count_now), keep_product.eq(self.value_keep * count_now)]
        wanted = (keep_product + (1 << VALUE_KEEP_FRAC) - 1) >> VALUE_KEEP_FRAC
        kept = Mux(wanted == 0, 1, Mux(wanted > product_count, product_count, wanted))
        with m.If(product_valid):
            for r in range(R):
                with m.If(product_row == r):
                    m.d.sync += [remaining[r].eq(kept),
                                 pruned[r].eq(block.final[r] & (kept < product_count))]
        with m.If(keep_row < R):
            m.d.sync += keep_row.eq(keep_row + 1)
        keeps_done = (keep_row == R) & ~product_valid

        # ---- passes ------------------------------------------------------------------------------
        key = Signal(geo.count)
        reading = Signal()
        read_valid, read_last = Signal(), Signal()
        m.d.comb += self.prob_read.addr.eq(key)
        m.d.sync += [read_valid.eq(reading), read_last.eq(key + 1 == block.n_keys)]
        with m.If(reading):
            m.d.sync += key.eq(key + 1)
            with m.If(key + 1 == block.n_keys):
                m.d.sync += reading.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.idle.eq(1)
                with m.If(self.go):
                    m.d.sync += [block.eq(self.block), digit.eq(0), keep_row.eq(0), pruned.eq(0)]
                    m.d.sync += [p.eq(0) for p in prefix]
                    m.next = "SAMPLES"
            with m.State("SAMPLES"):
                m.d.comb += [arriving_valid.eq(self.sample_valid), arriving_word.eq(self.sample.word),
                             count_last.eq(self.sample.key + 1 == block.n_keys)]
                with m.If(self.sample_valid & count_last):
                    m.next = "KEEPS"
            with m.State("KEEPS"):
                with m.If(keeps_done & (pruned == 0)):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Elif(keeps_done):
                    m.d.sync += [scan_bucket.eq(buckets - 1), found.eq(0)]
                    m.d.sync += [a.eq(0) for a in accumulated]
                    m.next = "SCAN"
            with m.State("SCAN"):
                m.d.comb += scanning.eq(1)
                m.d.sync += scan_bucket.eq(scan_bucket - 1)
                with m.If(scan_bucket == 0):
                    with m.If(digit == passes - 1):
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [digit.eq(digit + 1), key.eq(0), reading.eq(1)]
                        m.next = "PASS"
            with m.State("PASS"):
                m.d.comb += [arriving_valid.eq(read_valid), arriving_word.eq(self.prob_read.data)]
                with m.If(read_valid & read_last):
                    m.next = "COUNT_LAST"
            with m.State("COUNT_LAST"):
                m.d.sync += [scan_bucket.eq(buckets - 1), found.eq(0)]
                m.d.sync += [a.eq(0) for a in accumulated]
                m.next = "SCAN"
        return m
