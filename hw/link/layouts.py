"""Payloads of the streams between the host link's parts, and the sizes they share."""

from amaranth.lib import data

from spattn.link import MAX_BODY, MAX_DATA, MAX_FRAME, WORD_BYTES, ErrorCode

__all__ = ["MAX_BEATS", "BANK_BYTES", "BANKS", "frame_layout", "reply_layout", "mem_read_layout",
           "mem_write_layout", "expected_read_layout", "link_status_layout"]

#: Most bus words in one MEM_READ / MEM_DATA / MEM_WRITE.
MAX_BEATS = MAX_DATA // WORD_BYTES
#: A receive buffer bank holds one frame (seq, cmd, body, crc): the next power of two.
BANK_BYTES = 1 << (MAX_FRAME - 1).bit_length()
#: Receive buffer banks: one fills while the other is being executed.
BANKS = 2


def frame_layout():
    """A received frame: its ``seq``, ``cmd``, body ``length`` and receive buffer ``bank`` (the
    body starts at byte 2 of the bank), or, when ``error`` is not 0, the :class:`ErrorCode` to
    answer (with ``seq`` and ``cmd`` as received, 0 where the frame was shorter; no bank)."""
    return data.StructLayout({"seq": 8, "cmd": 8, "length": range(MAX_BODY + 1),
                              "bank": range(BANKS), "error": range(max(ErrorCode) + 1)})


def reply_layout():
    """A reply to send: ``cmd`` is the reply's (``cmd | REPLY``, or ``ERROR``). ``status`` is the
    AXI response (register replies) or the error code; ``value`` the register value, or the
    offending command in its low byte (ERROR). LINK_STATUS replies carry no fields: the
    transmitter reads the counters as it sends."""
    return data.StructLayout({"seq": 8, "cmd": 8, "status": 8, "value": 32})


def mem_read_layout():
    """A MEM_READ frame to send: ``beats`` bus words at byte address ``addr``."""
    return data.StructLayout({"tag": 8, "addr": 32, "beats": range(1, MAX_BEATS + 1)})


def mem_write_layout():
    """A MEM_WRITE frame to send: ``beats`` words of the write buffer, from word 0, to ``addr``."""
    return data.StructLayout({"addr": 32, "beats": range(1, MAX_BEATS + 1)})


def expected_read_layout():
    """The MEM_DATA the host owes next: its tag and its number of words."""
    return data.StructLayout({"tag": 8, "beats": range(1, MAX_BEATS + 1)})


def link_status_layout():
    """The counters of LINK_STATUS, in the order of its reply body."""
    return data.StructLayout({"frames_accepted": 32, "frames_refused": 32, "replies_dropped": 32})
