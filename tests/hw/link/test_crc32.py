"""The CRC-32 unit against zlib.crc32, and the XOR network's derivation from the polynomial."""

import random
import zlib

import pytest
from amaranth.sim import Simulator

import spattn.hw.link.crc32 as crc32_module
from spattn.hw.link.crc32 import CRC32_RESIDUE, Crc32


def rtl_crc(chunks):
    """The unit's ``crc`` after each chunk (cleared before each), bytes fed with random gaps."""
    dut, rng, results = Crc32(), random.Random(1), []

    async def bench(ctx):
        for chunk in chunks:
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
            for byte in chunk:
                while rng.random() < 0.3:
                    await ctx.tick()
                ctx.set(dut.en, 1)
                ctx.set(dut.data, byte)
                await ctx.tick()
                ctx.set(dut.en, 0)
            results.append(ctx.get(dut.crc))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


CHUNKS = [b"", b"123456789", bytes(range(256))] + [random.Random(n).randbytes(n * 7) for n in range(1, 12)]


def test_crc_matches_zlib_on_random_data():
    assert rtl_crc(CHUNKS) == [zlib.crc32(chunk) for chunk in CHUNKS]


def test_residue_checks_a_frame():
    payload = b"\x07\x01\x00\x10\x00\x00"
    frame = payload + zlib.crc32(payload).to_bytes(4, "little")
    assert rtl_crc([frame]) == [CRC32_RESIDUE] == [0x2144DF1C]


def test_a_flipped_polynomial_bit_is_caught(monkeypatch):
    # the mutant: the network derived from a polynomial with one bit flipped
    monkeypatch.setattr(crc32_module, "CRC32_POLY_REFLECTED", crc32_module.CRC32_POLY_REFLECTED ^ 1 << 5)
    with pytest.raises(AssertionError):
        test_crc_matches_zlib_on_random_data()
