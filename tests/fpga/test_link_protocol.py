"""The link protocol (:mod:`spattn.link`) against references written by others: :func:`zlib.crc32`
for the CRC and PyPI's sliplib for SLIP; :class:`~spattn.link.FrameDecoder` on every malformed
frame, each followed by a valid frame that must still decode."""

import random
import struct
import zlib

import pytest
import sliplib

from spattn.link import (END, ESC, ESC_END, MAX_BODY, MAX_FRAME, MIN_FRAME, Command, ErrorCode, Frame,
                         FrameDecoder, FrameError, crc32, encode_frame, slip_encode)


def payloads(seed, count=300, longest=MAX_FRAME):
    """Random payloads, half of them mostly END and ESC bytes, lengths 0 .. longest."""
    rng = random.Random(seed)
    for i in range(count):
        n = rng.randint(0, longest)
        if i % 2:
            yield bytes(rng.choice((END, ESC, ESC_END, 0xDD, rng.randrange(256))) for _ in range(n))
        else:
            yield rng.randbytes(n)


def test_crc32_is_zlibs():
    for payload in payloads(1):
        assert crc32(payload) == zlib.crc32(payload)


def test_slip_encoding_is_sliplibs():
    for payload in payloads(2):
        assert slip_encode(payload) == bytes([END]) + sliplib.encode(payload) + bytes([END])


def test_frames_decode_with_sliplib():
    """What encode_frame puts on the wire, taken apart by sliplib and zlib."""
    rng = random.Random(3)
    stream, sent = b"", []
    for body in payloads(4, count=100, longest=MAX_BODY):
        seq, cmd = rng.randrange(256), rng.randrange(256)
        stream += encode_frame(seq, cmd, body)
        sent.append(bytes([seq, cmd]) + body)
    driver = sliplib.Driver()
    driver.receive(stream)
    for want in sent:
        message = driver.get(block=False)
        assert message[:-4] == want
        assert struct.unpack("<I", message[-4:])[0] == zlib.crc32(want)
    assert driver.get(block=False) is None


def sliplib_frame(seq, cmd, body):
    """A frame encoded with sliplib and zlib only."""
    payload = bytes([seq, cmd]) + body
    return bytes([END]) + sliplib.encode(payload + struct.pack("<I", zlib.crc32(payload))) + bytes([END])


def test_decoder_reads_sliplib_frames_in_any_chunks():
    rng = random.Random(5)
    frames = [Frame(rng.randrange(256), rng.randrange(256), body) for body in payloads(6, 100, MAX_BODY)]
    stream = b"".join(sliplib_frame(f.seq, f.cmd, f.body) for f in frames)
    decoder, got, at = FrameDecoder(), [], 0
    while at < len(stream):
        step = rng.randint(1, 40)
        got += decoder.feed(stream[at:at + step])
        at += step
    assert got == frames


VALID = Frame(0x21, Command.REG_READ, b"\x10\x00\x00\x00")


def raw(payload):
    """END + ``payload`` (already escaped or deliberately not) + END."""
    return bytes([END]) + payload + bytes([END])


def with_crc(payload):
    return payload + struct.pack("<I", zlib.crc32(payload))


@pytest.mark.parametrize("wire, error", [
    # a CRC bit flipped
    (raw(bytearray(with_crc(b"\x07\x02abc"))[:-1] + bytes([with_crc(b"\x07\x02abc")[-1] ^ 1])),
     FrameError(ErrorCode.BAD_CRC, 7, 2)),
    # a body bit flipped
    (raw(bytes([7, 2, ord("a") ^ 4]) + with_crc(b"\x07\x02abc")[3:]), FrameError(ErrorCode.BAD_CRC, 7, 2)),
    # truncated below MIN_FRAME: seq and cmd still reported
    (raw(with_crc(b"\x09\x01")[:MIN_FRAME - 1]), FrameError(ErrorCode.TOO_SHORT, 9, 1)),
    (raw(b"\x09"), FrameError(ErrorCode.TOO_SHORT, 9, 0)),
    # truncated above MIN_FRAME: the CRC catches it
    (raw(with_crc(b"\x09\x01" + bytes(20))[:12]), FrameError(ErrorCode.BAD_CRC, 9, 1)),
    # garbage between frames (no leading END of its own)
    (b"\x55\xaa\x13\x37\x00\x01\x02\x03" + bytes([END]), FrameError(ErrorCode.BAD_CRC, 0x55, 0xAA)),
    (b"\x42\x43" + bytes([END]), FrameError(ErrorCode.TOO_SHORT, 0x42, 0x43)),
    # ESC followed by something else, and ESC right before END
    (raw(bytes([3, 4, ESC, 0x01]) + bytes(6)), FrameError(ErrorCode.BAD_ESCAPE, 3, 4)),
    (raw(slip_encode(with_crc(b"\x03\x04xy"))[1:-1] + bytes([ESC])), FrameError(ErrorCode.BAD_ESCAPE, 3, 4)),
    (raw(bytes([ESC, 0x99])), FrameError(ErrorCode.BAD_ESCAPE, 0x99, 0)),
    # one byte over the longest frame, also with a bad escape (escape is checked first)
    (raw(bytes([5, 6]) + bytes(MAX_FRAME - 1)), FrameError(ErrorCode.TOO_LONG, 5, 6)),
    (raw(bytes([5, 6]) + bytes(MAX_FRAME - 1) + bytes([ESC, 0x01])), FrameError(ErrorCode.BAD_ESCAPE, 5, 6)),
], ids=["crc", "body-bit", "short", "one-byte", "truncated", "garbage", "garbage-short", "escape",
        "escape-at-end", "escape-only", "too-long", "too-long-bad-escape"])
def test_malformed_frame_then_a_valid_one(wire, error):
    decoder = FrameDecoder()
    assert decoder.feed(wire + encode_frame(VALID.seq, VALID.cmd, VALID.body)) == [error, VALID]
    # byte by byte, the same
    decoder = FrameDecoder()
    got = [item for byte in wire + encode_frame(VALID.seq, VALID.cmd, VALID.body)
           for item in decoder.feed(bytes([byte]))]
    assert got == [error, VALID]


def test_empty_frames_are_ignored():
    decoder = FrameDecoder()
    assert decoder.feed(bytes([END] * 5)) == []
    wire = bytes([END, END]) + encode_frame(VALID.seq, VALID.cmd, VALID.body) + bytes([END])
    assert decoder.feed(wire) == [VALID]


def test_longest_frame_decodes():
    body = bytes(range(256)) + b"\xc0\xdb\xc0\xdb"
    assert len(body) == MAX_BODY
    got = FrameDecoder().feed(sliplib_frame(255, Command.MEM_WRITE, body))
    assert got == [Frame(255, Command.MEM_WRITE, body)]


def test_encode_frame_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="seq and cmd are bytes: seq=256"):
        encode_frame(256, 1)
    with pytest.raises(ValueError, match=f"at most MAX_BODY = {MAX_BODY} bytes, not {MAX_BODY + 1}"):
        encode_frame(0, 1, bytes(MAX_BODY + 1))
