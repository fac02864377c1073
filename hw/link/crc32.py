"""CRC-32 (ISO-HDLC) of a byte stream, one byte per cycle."""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from spattn.link import CRC32_INIT, CRC32_POLY_REFLECTED, CRC32_XOROUT, CRC_BYTES, crc32

__all__ = ["Crc32", "crc32_byte_network", "CRC32_RESIDUE"]

_STATE_BITS = 32


def crc32_byte_network():
    """The next CRC register after one byte, as XOR sets: ``network[i]`` lists the bits of the
    vector ``state (bits 0..31) ++ byte (bits 32..39)`` whose XOR is bit ``i`` of the next state.

    Derived by running the bitwise reflected algorithm on symbols (each bit a set of inputs) with
    :data:`spattn.link.CRC32_POLY_REFLECTED`, so the network follows the polynomial, not a table.
    """
    bits = [1 << i for i in range(_STATE_BITS)]          # bit i: the set {state i}, as a mask
    for k in range(8):
        bits[0] ^= 1 << (_STATE_BITS + k)                 # the data bit enters at the bottom
        feedback = bits[0]
        bits = bits[1:] + [0]
        bits = [b ^ feedback if CRC32_POLY_REFLECTED >> i & 1 else b for i, b in enumerate(bits)]
    return [[j for j in range(_STATE_BITS + 8) if mask >> j & 1] for mask in bits]


#: ``zlib.crc32`` of any frame payload followed by its own CRC (little-endian): a receiver that
#: runs the CRC over the CRC bytes too checks the frame by comparing with this constant.
CRC32_RESIDUE = crc32(crc32(b"").to_bytes(CRC_BYTES, "little"))


class Crc32(wiring.Component):
    """Running CRC-32 (the CRC of :func:`zlib.crc32` and :func:`spattn.link.crc32`).

    Members
    -------
    clear : In(1)
        Start a new CRC (of no bytes) at the next clock edge; wins over ``en``.
    en : In(1)
        Take ``data`` into the CRC at the next clock edge.
    data : In(8)
    crc : Out(32)
        The CRC of the bytes taken since the last ``clear`` (or reset), final XOR applied: from the
        cycle after a byte is taken, it includes that byte. It comes straight from the register.

    Throughput one byte per cycle; each next-state bit is an XOR of at most 14 inputs.
    """

    clear: In(1)
    en: In(1)
    data: In(8)
    crc: Out(32)

    def elaborate(self, platform):
        m = Module()
        state = Signal(_STATE_BITS, init=CRC32_INIT)
        inputs = [state[i] for i in range(_STATE_BITS)] + [self.data[k] for k in range(8)]
        for i, taps in enumerate(crc32_byte_network()):
            with m.If(self.clear):
                m.d.sync += state[i].eq(CRC32_INIT >> i & 1)
            with m.Elif(self.en):
                bit = inputs[taps[0]]
                for j in taps[1:]:
                    bit = bit ^ inputs[j]
                m.d.sync += state[i].eq(bit)
        m.d.comb += self.crc.eq(state ^ CRC32_XOROUT)
        return m
