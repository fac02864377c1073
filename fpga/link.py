"""Host side of the board's UART link: a byte channel, and the driver's transport over it.

The frames are :mod:`spattn.link`'s. **The host is the accelerator's memory**: :class:`LinkTransport`
keeps it as a ``bytearray``, so the driver's ``read_mem``/``write_mem`` touch no wire; the
accelerator's AXI reads arrive as MEM_READ frames that the host answers with MEM_DATA (same tag,
in order), its writes as MEM_WRITE frames the host stores. Those frames come while the accelerator
runs, which the driver watches by polling STATUS, so :class:`LinkTransport` serves them while it
waits for the reply to each register command (frames that come between two commands wait in the
channel until the next one). Writes the accelerator finished before a register reply are sent
before that reply (the board has one transmit queue), so once STATUS says DONE, memory holds
every output.

Channel contract (:class:`Channel`): ``await send(data)`` puts bytes on the wire; ``await
receive()`` returns whatever bytes have arrived, waiting a short while (a fraction of a second)
for some and returning ``b""`` if none came. It must await, not spin: the transport calls it in a
loop. :class:`SerialChannel` is one over pyserial (a USB UART such as ``/dev/ttyUSB0``, a pty path,
or a pyserial URL such as ``loop://``); a cocotb bench provides one over its UART models.

Errors: every link failure raises :class:`LinkError` with what was expected and what came:
an ERROR frame from the board (its :class:`~spattn.link.ErrorCode` named), after
:attr:`LinkTransport.retries` resends when it concerns the pending register command and the code
is one line noise or a full receive buffer causes (:data:`RETRIED_ERRORS`); a register reply whose
status is not OKAY (offset and status named); a reply with another seq or command; a gap in the
seq of the frames the board starts (a lost MEM_READ or MEM_WRITE); a MEM_READ tag out of order; a
MEM_READ or MEM_WRITE outside the memory; a frame from the board that does not decode; and
``timeout`` seconds without a frame while a reply is awaited (``None`` waits for ever, e.g. under
a simulator with its own time limit). Errors for MEM_DATA frames are not retried: the board's
reads would be answered out of order. After a :class:`LinkError` the state of the board's link is
unknown: reset the board (reload the bitstream) before the next run.

The first frame the board starts sets the seq and tag the transport expects next (a board keeps
counting across runs until it is reset), so a first frame lost is not seen as a gap.

Statistics (:class:`LinkStats`, :attr:`LinkTransport.stats`): bytes on the wire each way, frames
each way, memory bytes served to MEM_READs and stored from MEM_WRITEs, and resends.
"""

import asyncio
import struct
import time
from dataclasses import dataclass
from typing import Protocol

from spattn.link import (MAX_DATA, REPLY, REPLY_LENGTHS, Command, ErrorCode, Frame, FrameDecoder, FrameError,
                         Status, encode_frame)

__all__ = ["Channel", "SerialChannel", "LinkError", "LinkStats", "LinkStatus", "LinkTransport",
           "DEFAULT_TIMEOUT_S", "RETRIED_ERRORS"]

#: Seconds without a frame from the board before a register command is given up. A simulated
#: board runs thousands of times slower than a real one, and a layer's frames come in bursts.
DEFAULT_TIMEOUT_S = 60.0

#: Board error codes that a resend of the same frame can cure: damage on the wire, or a frame that
#: came while the board's buffer was full. The others mean the frame itself is wrong.
RETRIED_ERRORS = frozenset({ErrorCode.BAD_CRC, ErrorCode.TOO_SHORT, ErrorCode.TOO_LONG,
                            ErrorCode.BAD_ESCAPE, ErrorCode.OVERRUN})


class Channel(Protocol):
    async def send(self, data: bytes) -> None: ...
    async def receive(self) -> bytes: ...


class SerialChannel:
    """A :class:`Channel` over a pyserial port (8N1 at ``baud``): a device (``/dev/ttyUSB0``), a pty
    path, or a pyserial URL (``loop://``). ``receive`` waits up to ``wait_s`` for a first byte.
    The port's blocking calls run in a worker thread, so the event loop never blocks on them.
    Raises :class:`serial.SerialException` if the port cannot be opened. Close it with
    :meth:`close` or use it as a context manager."""

    def __init__(self, port: str, baud: int, wait_s: float = 0.05):
        import serial

        self.port = serial.serial_for_url(port, baudrate=baud, bytesize=8, parity="N", stopbits=1,
                                          timeout=wait_s)

    def _read_available(self) -> bytes:
        first = self.port.read(1)    # blocks up to wait_s
        return first + self.port.read(self.port.in_waiting) if first else b""

    async def send(self, data: bytes) -> None:
        await asyncio.to_thread(self.port.write, data)

    async def receive(self) -> bytes:
        return await asyncio.to_thread(self._read_available)

    def close(self):
        self.port.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LinkError(RuntimeError):
    """The link failed: the message says what was expected and what came instead."""


@dataclass
class LinkStats:
    """What went over the link (bytes as on the wire, i.e. SLIP-escaped, END bytes included)."""
    wire_bytes_sent: int = 0
    wire_bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    register_commands: int = 0
    mem_reads: int = 0           # MEM_READ frames answered
    mem_writes: int = 0          # MEM_WRITE frames stored
    mem_bytes_served: int = 0    # data bytes sent in MEM_DATA
    mem_bytes_stored: int = 0    # data bytes received in MEM_WRITE
    resends: int = 0


@dataclass(frozen=True)
class LinkStatus:
    """The board link's own counters (LINK_STATUS reply)."""
    frames_accepted: int
    frames_refused: int
    replies_dropped: int


def _name(enum, value):
    try:
        return enum(value).name
    except ValueError:
        return f"0x{value:02x}"


class LinkTransport:
    """The driver's transport (:class:`spattn.fpga.driver.Transport`) over ``channel``, with the
    accelerator's memory (``memory_size`` bytes, zeroed) held here as :attr:`memory`.

    ``timeout``: seconds without a frame from the board while a reply is awaited (``None``: no
    limit). ``retries``: resends of a register command the board reported damaged
    (:data:`RETRIED_ERRORS`). One call at a time: the driver awaits each before the next.
    """

    def __init__(self, channel: Channel, memory_size: int, timeout: float | None = DEFAULT_TIMEOUT_S,
                 retries: int = 2):
        self.channel, self.timeout, self.retries = channel, timeout, retries
        self.memory = bytearray(memory_size)
        self.stats = LinkStats()
        self.decoder = FrameDecoder()
        self.seq = 0                  # seq of the next host frame
        self.board_seq = None         # seq expected on the next frame the board starts
        self.read_tag = None          # tag expected on the next MEM_READ

    # ---- transport interface -----------------------------------------------------------------
    async def read_reg(self, offset: int) -> int:
        status, value = struct.unpack("<BI", await self._command(Command.REG_READ, struct.pack("<I", offset)))
        self._check_status("read of", offset, status)
        return value

    async def write_reg(self, offset: int, value: int) -> None:
        (status,) = await self._command(Command.REG_WRITE, struct.pack("<II", offset, value))
        self._check_status("write of", offset, status)

    async def read_mem(self, address: int, length: int) -> bytes:
        self._check_range("read", address, length)
        return bytes(self.memory[address:address + length])

    async def write_mem(self, address: int, data: bytes) -> None:
        self._check_range("write", address, len(data))
        self.memory[address:address + len(data)] = data

    # ---- link ----------------------------------------------------------------------------------
    async def link_status(self) -> LinkStatus:
        """The board link's frame counters."""
        return LinkStatus(*struct.unpack("<III", await self._command(Command.LINK_STATUS)))

    def _check_status(self, what, offset, status):
        if status != Status.OKAY:
            raise LinkError(f"register {what} offset 0x{offset:04x} answered {_name(Status, status)} "
                            f"(status {status}), not OKAY")

    def _check_range(self, what, address, length):
        if address < 0 or address + length > len(self.memory):
            raise LinkError(f"memory {what} of {length} bytes at 0x{address:x} is outside the host's "
                            f"{len(self.memory)}-byte memory (0x0..0x{len(self.memory) - 1:x})")

    async def _transmit(self, wire):
        await self.channel.send(wire)
        self.stats.wire_bytes_sent += len(wire)
        self.stats.frames_sent += 1

    async def _send(self, cmd, body=b""):
        """Send a new frame; returns its seq and its bytes (for a resend)."""
        seq, wire = self.seq, encode_frame(self.seq, cmd, body)
        self.seq = (self.seq + 1) % 256
        await self._transmit(wire)
        return seq, wire

    async def _command(self, cmd: Command, body: bytes = b"") -> bytes:
        """Send a register or link command and return its reply's body, serving memory meanwhile."""
        self.stats.register_commands += 1
        seq, wire = await self._send(cmd, body)
        offset = f", offset 0x{struct.unpack_from('<I', body)[0]:04x}" if body else ""
        what = f"{cmd.name} (seq {seq}{offset})"
        resends = 0
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        reply = None
        while reply is None:
            data = await self.channel.receive()
            if not data:
                if deadline is not None and time.monotonic() > deadline:
                    raise LinkError(f"no reply to {what} from the board after {self.timeout:g} s without "
                                    f"a frame")
                continue
            self.stats.wire_bytes_received += len(data)
            # Every frame of this chunk is acted on, also those after the reply: a MEM_READ behind
            # it would otherwise wait until the next command.
            for item in self.decoder.feed(data):
                if deadline is not None:
                    deadline = time.monotonic() + self.timeout
                if isinstance(item, FrameError):
                    raise LinkError(f"a frame from the board does not decode ({item.code.name}, seq "
                                    f"{item.seq}, cmd 0x{item.cmd:02x}) while waiting for the reply to "
                                    f"{what}")
                self.stats.frames_received += 1
                if item.cmd == Command.ERROR:
                    self._raise_unless_resendable(item, seq, resends, what)
                    resends += 1
                    self.stats.resends += 1
                    await self._transmit(wire)
                elif item.cmd & REPLY:
                    reply = self._reply_body(item, seq, cmd, what, reply)
                else:
                    await self._serve(item)
        return reply

    def _raise_unless_resendable(self, frame: Frame, seq, resends, what):
        """An ERROR frame: returns if it refuses the pending command for a reason a resend can cure
        and resends are left, else raises :class:`LinkError` naming the code."""
        if len(frame.body) != 2:
            raise LinkError(f"ERROR frame from the board with a {len(frame.body)}-byte body (2 expected) "
                            f"while waiting for the reply to {what}")
        code, cmd = frame.body
        curable = frame.seq == seq and code in RETRIED_ERRORS
        if curable and resends < self.retries:
            return
        tries = f" after {resends + 1} tries" if curable else ""
        raise LinkError(f"the board refused the {_name(Command, cmd)} frame seq {frame.seq} with ERROR "
                        f"{_name(ErrorCode, code)}{tries} (waiting for the reply to {what})")

    def _reply_body(self, frame: Frame, seq, cmd, what, earlier):
        if earlier is not None or frame.seq != seq or frame.cmd != cmd | REPLY:
            raise LinkError(f"reply {_name(Command, frame.cmd & ~REPLY)} with seq {frame.seq} came while "
                            f"waiting for the reply to {what}" + (" (already answered)" if earlier is not None
                                                                  else ""))
        if len(frame.body) != REPLY_LENGTHS[cmd]:
            raise LinkError(f"reply to {what} has {len(frame.body)} body bytes, not {REPLY_LENGTHS[cmd]}")
        return frame.body

    async def _serve(self, frame: Frame):
        """Answer a MEM_READ or store a MEM_WRITE, after checking the board's seq count."""
        if frame.cmd not in (Command.MEM_READ, Command.MEM_WRITE):
            raise LinkError(f"the board sent a frame with command 0x{frame.cmd:02x} (seq {frame.seq}), "
                            f"which is none of MEM_READ, MEM_WRITE, ERROR or a reply")
        if self.board_seq is not None and frame.seq != self.board_seq:
            lost = (frame.seq - self.board_seq) % 256
            raise LinkError(f"{_name(Command, frame.cmd)} frame from the board has seq {frame.seq}, expected "
                            f"{self.board_seq}: {lost} frame(s) the board started were lost")
        self.board_seq = (frame.seq + 1) % 256
        if frame.cmd == Command.MEM_READ:
            if len(frame.body) != 7:
                raise LinkError(f"MEM_READ (seq {frame.seq}) has a {len(frame.body)}-byte body, not 7")
            tag, address, length = struct.unpack("<BIH", frame.body)
            if self.read_tag is not None and tag != self.read_tag:
                raise LinkError(f"MEM_READ (seq {frame.seq}) has tag {tag}, expected {self.read_tag}")
            self.read_tag = (tag + 1) % 256
            if length > MAX_DATA:
                raise LinkError(f"MEM_READ (seq {frame.seq}) asks for {length} bytes, more than MAX_DATA = "
                                f"{MAX_DATA}")
            self._check_range(f"read (MEM_READ seq {frame.seq})", address, length)
            await self._send(Command.MEM_DATA, bytes([tag]) + self.memory[address:address + length])
            self.stats.mem_reads += 1
            self.stats.mem_bytes_served += length
        else:
            if len(frame.body) < 4:
                raise LinkError(f"MEM_WRITE (seq {frame.seq}) has a {len(frame.body)}-byte body, no address")
            (address,), data = struct.unpack_from("<I", frame.body), frame.body[4:]
            self._check_range(f"write (MEM_WRITE seq {frame.seq})", address, len(data))
            self.memory[address:address + len(data)] = data
            self.stats.mem_writes += 1
            self.stats.mem_bytes_stored += len(data)
