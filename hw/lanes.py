"""Combinational networks over a row of P parallel lanes, shared by the stream engines.

Each function builds logic in module ``m`` from plain Python loops over lanes (no ``Array`` muxes,
which make Verilog generation slow) and returns signals. Every intermediate that is used more than
once is a named signal: Amaranth copies an expression tree into the netlist at each place it is
used, so reusing Python expressions instead multiplies the logic (P-lane networks by P or more).
"""

from amaranth.hdl import Cat, Const, Mux, Signal, Value, unsigned

from spattn.formats import bits_for

__all__ = ["wire", "less_than", "popcount", "add_tree", "exclusive_prefix_counts", "compact", "pipelined_reduce"]


def wire(m, value, name, shape=None):
    """A signal in ``m`` driven combinationally by ``value``."""
    signal = Signal(shape if shape is not None else Value.cast(value).shape(), name=name)
    m.d.comb += signal.eq(value)
    return signal


def less_than(a, b):
    """``a < b`` for unsigned ``a`` and ``b``, as the borrow out of ``a - b``.

    Yosys maps a subtraction onto the ECP5's carry chain alone (a CCU2C per two bits), while its
    comparison cells came out with about as many LUT4s again beside the chain: 120 comparisons of
    16 bits took 960 CCU2C and 2,013 LUT4s, as borrows 1,080 CCU2C and nothing else.
    """
    width = max(len(Value.cast(a)), len(Value.cast(b)))
    return (Cat(a, Const(0, width + 1 - len(Value.cast(a)))) -
            Cat(b, Const(0, width + 1 - len(Value.cast(b)))))[width]


def _inclusive_prefix_sums(m, flags, name):
    """Kogge-Stone prefix sums of 1-bit ``flags``: ``log2(P)`` adder levels instead of P in series."""
    shape = unsigned(bits_for(len(flags)))
    sums = [wire(m, flag, f"{name}_l0_{lane}", shape) for lane, flag in enumerate(flags)]
    distance, level = 1, 0
    while distance < len(flags):
        level += 1
        sums = [wire(m, (total + sums[lane - distance])[:shape.width], f"{name}_l{level}_{lane}", shape)
                if lane >= distance else total
                for lane, total in enumerate(sums)]
        distance *= 2
    return sums


def popcount(m, flags, name):
    """Number of set bits among the 1-bit values ``flags``, by a tree of full adders.

    Each full adder takes three bits of one weight and gives their sum bit (same weight) and carry
    (twice the weight), until one bit of each weight is left: a counter that is plain logic, so it
    maps onto LUTs. An adder tree of 1- and 2-bit sums maps each adder onto a carry chain instead,
    which on the ECP5 cost about four times the LUTs (a 15-input count: about 90 LUT4s, not 25).
    """
    shape = unsigned(bits_for(len(flags)))
    if not flags:
        return Const(0, shape)
    columns = [[Value.cast(flag) for flag in flags]]    # columns[w]: bits of weight 2^w
    adders = 0
    weight = 0
    while weight < len(columns):
        column = columns[weight]
        while len(column) > 1:
            if len(column) == 2:
                a, b = column.pop(0), column.pop(0)
                total, carry = a ^ b, a & b
            else:
                a, b, c = column.pop(0), column.pop(0), column.pop(0)
                total, carry = a ^ b ^ c, (a & b) | (a & c) | (b & c)
            column.append(wire(m, total, f"{name}_s{adders}"))
            if weight + 1 == len(columns):
                columns.append([])
            columns[weight + 1].append(wire(m, carry, f"{name}_c{adders}"))
            adders += 1
        weight += 1
    return wire(m, Cat(*(column[0] for column in columns)), name, shape)


def add_tree(m, values, name, shape):
    """The sum of ``values`` in ``shape`` (wide enough for it), by a balanced adder tree."""
    level = [Value.cast(value) for value in values]
    depth = 0
    while len(level) > 1:
        depth += 1
        paired = [wire(m, (a + b)[:shape.width], f"{name}_l{depth}_{i}", shape)
                  for i, (a, b) in enumerate(zip(level[0::2], level[1::2]))]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return wire(m, level[0], name, shape)


def exclusive_prefix_counts(m, flags, name):
    """``[popcount(flags[:i]) for i in range(len(flags))]``: the rank of each lane among set lanes."""
    shape = unsigned(bits_for(len(flags)))
    inclusive = _inclusive_prefix_sums(m, flags, name)
    return [Const(0, shape)] + inclusive[:-1]


def compact(flags, values, ranks, slot):
    """The value of the set lane whose rank equals ``slot`` (zero when there is none).

    With ``ranks = exclusive_prefix_counts(...)``, calling this for every slot packs the set lanes
    to the front in lane order: a zero eliminator. ``flags``, ``values`` and ``ranks`` should be
    signals, since this is called once per slot. A lane's rank never exceeds its position, so the
    lanes before ``slot`` are left out (the ranks are registers: synthesis cannot see that).
    """
    width = Value.cast(values[0]).shape().width
    picked = Const(0, width)
    for flag, value, rank in list(zip(flags, values, ranks))[slot:]:
        picked = picked | Mux(flag & (rank == slot), Value.cast(value).as_unsigned(), 0)
    return picked


def pipelined_reduce(m, values, pick_first, name, levels_per_stage=2):
    """Tree reduction of ``values`` with a register after every ``levels_per_stage`` levels.

    Returns ``(result, latency)``: ``result`` follows the inputs ``latency`` cycles later (0 when
    the tree is shallow enough to stay combinational). ``pick_first(a, b)`` says whether ``a`` wins.
    """
    shape = Value.cast(values[0]).shape()
    level = [Value.cast(value) for value in values]
    depth = latency = 0
    while len(level) > 1:
        depth += 1
        paired = [wire(m, Mux(pick_first(a, b), a, b), f"{name}_l{depth}_{i}", shape)
                  for i, (a, b) in enumerate(zip(level[0::2], level[1::2]))]
        if len(level) % 2:
            paired.append(level[-1])
        if depth % levels_per_stage == 0 and len(paired) > 1:
            staged = [Signal(shape, name=f"{name}_r{depth}_{i}") for i in range(len(paired))]
            m.d.sync += [reg.eq(value) for reg, value in zip(staged, paired)]
            paired, latency = staged, latency + 1
        level = paired
    return level[0], latency
