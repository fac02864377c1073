"""The host link protocol: the one definition of the frames between a host and the board.

The board's UART (8 data bits, no parity, 1 stop bit) carries **SLIP** frames (RFC 1055): every
frame is sent as ``END`` + escaped bytes + ``END``; inside a frame ``END`` becomes ``ESC ESC_END`` and
``ESC`` becomes ``ESC ESC_ESC``. Empty frames (two ``END`` in a row) are ignored, so the leading
``END`` ends any garbage or truncated frame before a real one.

A frame, before escaping, is::

    seq (1 byte) | cmd (1 byte) | body (0 .. MAX_BODY bytes) | crc (4 bytes, little-endian)

``crc`` is CRC-32 (ISO-HDLC, the CRC of zlib and Ethernet) over ``seq``, ``cmd`` and ``body``. All
multi-byte fields are little-endian.

Host -> board commands (``seq`` chosen by the host; every one but ``MEM_DATA`` gets a reply with
the same ``seq`` and ``cmd | REPLY``):

============  ==============================  ===========================================================
command       body                            reply body
============  ==============================  ===========================================================
REG_READ      addr u32                        status u8 (AXI resp), value u32
REG_WRITE     addr u32, value u32             status u8 (AXI resp)
LINK_STATUS   (empty)                         frames_accepted u32, frames_refused u32, replies_dropped u32
MEM_DATA      tag u8, data                    (none; answers the board's MEM_READ ``tag``, in order)
============  ==============================  ===========================================================

Board -> host frames that the board starts (``seq`` counts these frames, so the host sees a gap):

=========  ================================  ==========================================================
command    body                              meaning
=========  ================================  ==========================================================
MEM_READ   tag u8, addr u32, length u16      the accelerator reads ``length`` bytes at ``addr``; the host
                                             answers with ``MEM_DATA`` of that ``tag`` and length
MEM_WRITE  addr u32, data                    the accelerator wrote ``data`` at ``addr``; the host stores it
=========  ================================  ==========================================================

``tag`` counts MEM_READ frames modulo 256; the host answers them in the order they came.
``length`` and ``data`` are whole bus words, at most :data:`MAX_DATA` bytes.

The board checks a received frame in this order and answers the first check that fails: the
escapes (``BAD_ESCAPE``), the length (``TOO_LONG``, ``TOO_SHORT``), the CRC (``BAD_CRC``), as
:class:`FrameDecoder` does; then whether it had a buffer for the frame (``OVERRUN``), then the
command and its body length (``UNKNOWN_COMMAND``, ``BAD_LENGTH``, as :func:`check_command` does),
then, for ``MEM_DATA``, whether it answers the oldest unanswered ``MEM_READ`` (``UNEXPECTED_DATA``).
A ``MEM_DATA`` body is the tag and 1 .. ``MAX_DATA / WORD_BYTES`` whole words.

A host frame the board cannot act on gets an ``ERROR`` frame (``seq`` of the offending frame as
received, 0 if it had none) with body ``code u8, cmd u8`` (the offending ``cmd``, 0 if it had
none); :class:`ErrorCode` lists the codes. The board then goes on as if the frame had not come.
If the board's reply queue is full the error reply is dropped and counted (LINK_STATUS).
"""

import enum
import struct
from dataclasses import dataclass

__all__ = ["END", "ESC", "ESC_END", "ESC_ESC", "CRC32_POLY_REFLECTED", "MAX_DATA", "MAX_BODY",
           "MIN_FRAME", "MAX_FRAME", "WORD_BYTES", "REPLY", "Command", "ErrorCode", "Status", "crc32",
           "slip_encode", "encode_frame", "Frame", "FrameError", "FrameDecoder", "BODY_LENGTHS",
           "REPLY_LENGTHS", "ERROR_LENGTH", "check_command"]

# ---- SLIP (RFC 1055) -----------------------------------------------------------------------------
END, ESC, ESC_END, ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD

# ---- CRC-32 (ISO-HDLC): reflected polynomial 0x04C11DB7, initial value and final XOR all ones ---
CRC32_POLY_REFLECTED = 0xEDB88320
CRC32_INIT = 0xFFFFFFFF
CRC32_XOROUT = 0xFFFFFFFF
CRC_BYTES = 4

#: Memory data moves in whole bus words of this many bytes.
WORD_BYTES = 4
#: Most data bytes in one MEM_READ / MEM_DATA / MEM_WRITE: 64 bus words. The board system refuses
#: a config whose bursts do not fit, naming the row and its size.
MAX_DATA = 256
#: Longest body: MEM_WRITE's address and data.
MAX_BODY = 4 + MAX_DATA
#: Shortest and longest frame before escaping: seq, cmd, body, crc.
MIN_FRAME = 2 + CRC_BYTES
MAX_FRAME = 2 + MAX_BODY + CRC_BYTES

#: A reply's ``cmd`` is the command's with this bit set.
REPLY = 0x80


class Command(enum.IntEnum):
    # host -> board
    REG_READ = 0x01
    REG_WRITE = 0x02
    LINK_STATUS = 0x03
    MEM_DATA = 0x04
    # board -> host, started by the board
    MEM_READ = 0x40
    MEM_WRITE = 0x41
    # board -> host, for a host frame the board could not act on
    ERROR = 0x7F


class ErrorCode(enum.IntEnum):
    BAD_CRC = 1          # the CRC does not match
    TOO_SHORT = 2        # fewer than MIN_FRAME bytes (e.g. truncated)
    TOO_LONG = 3         # more than MAX_FRAME bytes
    BAD_ESCAPE = 4       # ESC followed by something other than ESC_END or ESC_ESC
    UNKNOWN_COMMAND = 5  # cmd is not a host -> board command
    BAD_LENGTH = 6       # the body's length does not fit the command
    UNEXPECTED_DATA = 7  # MEM_DATA with no read pending, another tag or another length
    OVERRUN = 8          # the frame came while the board had no buffer for it (host sent too fast)


class Status(enum.IntEnum):
    """Status of a register reply: the AXI4-Lite response of the register file."""
    OKAY = 0
    SLVERR = 2
    DECERR = 3


#: Body length of each host command (None: variable, checked by the command).
BODY_LENGTHS = {Command.REG_READ: 4, Command.REG_WRITE: 8, Command.LINK_STATUS: 0, Command.MEM_DATA: None}
#: Body length of each reply (by command).
REPLY_LENGTHS = {Command.REG_READ: 5, Command.REG_WRITE: 1, Command.LINK_STATUS: 12}
#: Body length of an ERROR frame: code, cmd.
ERROR_LENGTH = 2


def _crc_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (CRC32_POLY_REFLECTED if crc & 1 else 0)
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc32(data: bytes) -> int:
    """CRC-32 (ISO-HDLC) of ``data``: equal to :func:`zlib.crc32`, computed here from the polynomial."""
    crc = CRC32_INIT
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc ^ CRC32_XOROUT


def slip_encode(payload: bytes) -> bytes:
    """``END`` + ``payload`` escaped + ``END``."""
    out = bytearray([END])
    for byte in payload:
        if byte == END:
            out += bytes([ESC, ESC_END])
        elif byte == ESC:
            out += bytes([ESC, ESC_ESC])
        else:
            out.append(byte)
    out.append(END)
    return bytes(out)


def encode_frame(seq: int, cmd: int, body: bytes = b"") -> bytes:
    """The bytes on the wire for one frame."""
    if not 0 <= seq < 256 or not 0 <= cmd < 256:
        raise ValueError(f"seq and cmd are bytes: seq={seq!r}, cmd={cmd!r}")
    if len(body) > MAX_BODY:
        raise ValueError(f"a frame body holds at most MAX_BODY = {MAX_BODY} bytes, not {len(body)}")
    payload = bytes([seq, cmd]) + bytes(body)
    return slip_encode(payload + struct.pack("<I", crc32(payload)))


@dataclass(frozen=True)
class Frame:
    seq: int
    cmd: int
    body: bytes


@dataclass(frozen=True)
class FrameError:
    """A received frame that could not be read: the error code and, where known, its seq and cmd."""
    code: ErrorCode
    seq: int = 0
    cmd: int = 0


class FrameDecoder:
    """Turns received bytes into :class:`Frame` and :class:`FrameError` items, as the board's
    receiver does (same checks, same order: escape, length, CRC)."""

    def __init__(self):
        self._buf = bytearray()
        self._escaped = False
        self._bad_escape = False
        self._too_long = False

    def feed(self, data: bytes):
        """Decode ``data``; returns the frames (and errors) completed by it, in order."""
        out = []
        for byte in data:
            if byte == END:
                item = self._finish()
                if item is not None:
                    out.append(item)
                continue
            if self._escaped:
                self._escaped = False
                if byte == ESC_END:
                    byte = END
                elif byte == ESC_ESC:
                    byte = ESC
                else:
                    self._bad_escape = True
            elif byte == ESC:
                self._escaped = True
                continue
            if len(self._buf) < MAX_FRAME:
                self._buf.append(byte)
            else:
                self._too_long = True
        return out

    def _finish(self):
        buf, bad_escape, too_long = bytes(self._buf), self._bad_escape or self._escaped, self._too_long
        self._buf, self._escaped, self._bad_escape, self._too_long = bytearray(), False, False, False
        if not buf and not bad_escape:
            return None
        seq, cmd = (buf[0] if buf else 0), (buf[1] if len(buf) > 1 else 0)
        if bad_escape:
            return FrameError(ErrorCode.BAD_ESCAPE, seq, cmd)
        if too_long:
            return FrameError(ErrorCode.TOO_LONG, seq, cmd)
        if len(buf) < MIN_FRAME:
            return FrameError(ErrorCode.TOO_SHORT, seq, cmd)
        payload, (crc,) = buf[:-CRC_BYTES], struct.unpack("<I", buf[-CRC_BYTES:])
        if crc32(payload) != crc:
            return FrameError(ErrorCode.BAD_CRC, seq, cmd)
        return Frame(seq, cmd, payload[2:])


def check_command(frame: Frame):
    """The board's command and body-length checks of a frame that :class:`FrameDecoder` accepted:
    the :class:`ErrorCode` of the first that fails, or None."""
    if frame.cmd not in BODY_LENGTHS:
        return ErrorCode.UNKNOWN_COMMAND
    length = BODY_LENGTHS[frame.cmd]
    if length is None:  # MEM_DATA: the tag, then whole words
        data = len(frame.body) - 1
        fits = WORD_BYTES <= data <= MAX_DATA and data % WORD_BYTES == 0
    else:
        fits = len(frame.body) == length
    return None if fits else ErrorCode.BAD_LENGTH
