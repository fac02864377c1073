"""Combinational networks over a row of P parallel lanes, shared by the stream engines.

Each function builds logic in the caller's module from plain Python loops over lanes (no
``Array`` muxes, which make Verilog generation slow) and returns Amaranth values.
"""

from amaranth.hdl import Const, Mux, Value, unsigned

from spattn.formats import bits_for

__all__ = ["popcount", "exclusive_prefix_counts", "compact", "masked_reduce"]


def popcount(flags):
    """Number of set bits among the 1-bit values ``flags``."""
    total = Const(0, unsigned(bits_for(len(flags))))
    for flag in flags:
        total = total + flag
    return total[:bits_for(len(flags))]


def exclusive_prefix_counts(flags):
    """``[popcount(flags[:i]) for i in range(len(flags))]``: the rank of each lane among set lanes."""
    ranks, running = [], Const(0, unsigned(bits_for(len(flags))))
    for flag in flags:
        ranks.append(running[:bits_for(len(flags))])
        running = running + flag
    return ranks


def compact(flags, values, ranks, slot):
    """The value of the set lane whose rank equals ``slot`` (zero when there is none).

    With ``ranks = exclusive_prefix_counts(flags)``, calling this for every slot packs the set lanes
    to the front in lane order: a zero eliminator.
    """
    width = Value.cast(values[0]).shape().width
    picked = Const(0, width)
    for flag, value, rank in zip(flags, values, ranks):
        picked = picked | Mux(flag & (rank == slot), Value.cast(value).as_unsigned(), 0)
    return picked


def masked_reduce(flags, values, pick_first, identity):
    """Reduce the values of set lanes with a binary tree; ``identity`` where no lane is set.

    ``pick_first(a, b)`` is a 1-bit value saying whether ``a`` wins over ``b`` (``a > b`` for a maximum).
    """
    level = [Mux(flag, value, identity) for flag, value in zip(flags, values)]
    while len(level) > 1:
        paired = [Mux(pick_first(a, b), a, b) for a, b in zip(level[0::2], level[1::2])]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]
