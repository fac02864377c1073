"""cocotb drivers and monitors for Amaranth ``lib.stream`` ports, with idle and back-pressure.

A stream port ``name`` of the generated Verilog is the signals ``name__valid``, ``name__ready`` and
``name__payload``. Payloads are packed and unpacked with the same ``amaranth.lib.data`` layout
object the gateware uses, never with hand-written bit offsets.

Both sides act on the falling clock edge and sample the handshake in the read-only phase before
the rising edge, so a beat counts exactly when valid and ready are both high at a rising edge, on
every simulator. The producer raises valid without waiting for ready and holds valid and payload
until the transfer, as the stream contract requires.

Each port runs its own coroutine unless it is made with ``start=False`` and handed to a
:class:`StreamGroup`, which runs the same two steps for all its ports in one coroutine: the same
cycle-by-cycle behaviour, with far fewer simulator callbacks per cycle on a bench with many ports.
"""

import collections
import random

import cocotb
from cocotb.triggers import Event, FallingEdge, ReadOnly, RisingEdge

__all__ = ["CycleCounter", "StreamSource", "StreamSink", "StreamGroup", "wait_for"]


class CycleCounter:
    """Counts rising edges of ``clock``: the time base that transfers are stamped with."""

    def __init__(self, clock):
        self.clock = clock
        self.now = 0
        cocotb.start_soon(self._run())

    async def _run(self):
        while True:
            await RisingEdge(self.clock)
            self.now += 1


class _StreamPort:
    def __init__(self, dut, name, layout, clock, counter, stall_probability, rng):
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.layout = layout
        self.clock = clock
        self.counter = counter
        self.stall_probability = stall_probability
        self.rng = rng or random.Random(0)

    def stalls(self):
        return self.stall_probability > 0 and self.rng.random() < self.stall_probability

    async def _run(self):
        """Drive on the falling edge, sample the handshake in the read-only phase before the rising one."""
        while True:
            await FallingEdge(self.clock)
            self._drive()
            await ReadOnly()
            self._sample()


class StreamSource(_StreamPort):
    """Sends queued payloads (Python values of ``layout``) into an ``In`` stream port of the DUT.

    With ``stall_probability`` p, every cycle the source has a beat to offer it stays idle with
    probability p instead (random valid gaps). ``transfers`` records the cycle of each transfer.
    """

    def __init__(self, dut, name, layout, clock, counter, stall_probability=0.0, rng=None, start=True):
        super().__init__(dut, name, layout, clock, counter, stall_probability, rng)
        self.queue = collections.deque()
        self.current = None
        self.transfers = []
        self.valid.value = self._valid = 0
        if start:
            cocotb.start_soon(self._run())

    def send(self, value):
        self.queue.append(value)

    def clear(self):
        """Forget every beat not yet transferred (for a reset of the DUT)."""
        self.queue.clear()
        self.current = None

    @property
    def idle(self):
        return self.current is None and not self.queue

    def _drive(self):
        """At the falling edge: offer the next beat, unless this cycle is a valid gap."""
        if self.current is None and self.queue and not self.stalls():
            self.current = self.queue.popleft()
            self.payload.value = self.layout.const(self.current).as_bits()
        valid = int(self.current is not None)
        if valid != self._valid:    # a write per change, not per cycle: handles are slow
            self.valid.value = self._valid = valid

    def _sample(self):
        """In the read-only phase before the rising edge: did the beat transfer?"""
        if self.current is not None and self.ready.value == 1:
            self.transfers.append(self.counter.now + 1)  # it happens at the coming edge
            self.current = None


class StreamSink(_StreamPort):
    """Takes beats from an ``Out`` stream port of the DUT and hands them to ``on_beat``.

    With ``stall_probability`` p, ready is low with probability p in every cycle (back-pressure).
    ``on_beat(beat, cycle)`` gets the payload unpacked as a ``data.Const`` of ``layout``.
    """

    def __init__(self, dut, name, layout, clock, counter, on_beat, stall_probability=0.0, rng=None,
                 start=True):
        super().__init__(dut, name, layout, clock, counter, stall_probability, rng)
        self.on_beat = on_beat
        self.beats = 0
        self.ready.value = self._ready = 0
        if start:
            cocotb.start_soon(self._run())

    def _drive(self):
        ready = int(not self.stalls())
        if ready != self._ready:
            self.ready.value = self._ready = ready

    def _sample(self):
        if self._ready and self.valid.value == 1:
            self.beats += 1
            self.on_beat(self.layout.from_bits(self.payload.value.to_unsigned()), self.counter.now + 1)


class StreamGroup:
    """Runs the ports (made with ``start=False``) of one clock in a single coroutine: each cycle,
    every port's falling-edge step, then every port's read-only step, in the order given."""

    def __init__(self, clock, ports):
        self.clock = clock
        self.ports = list(ports)
        cocotb.start_soon(self._run())

    async def _run(self):
        drives = [port._drive for port in self.ports]
        samples = [port._sample for port in self.ports]
        while True:
            await FallingEdge(self.clock)
            for drive in drives:
                drive()
            await ReadOnly()
            for sample in samples:
                sample()


async def wait_for(event: Event, clock, cycles, what):
    """Wait for ``event``, failing the test after ``cycles`` clock cycles."""
    for _ in range(cycles):
        if event.is_set():
            return
        await RisingEdge(clock)
    assert event.is_set(), f"timed out after {cycles} cycles waiting for {what}"
