"""The accelerator's control/status register file: an AXI4-Lite subordinate built from a register map."""

from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4LiteSignature, RESP_OKAY, RESP_SLVERR
from .registers import RegisterMap

__all__ = ["RegisterFile"]

#: ``wstrb`` of a write that covers the whole 32-bit register; partial writes are refused.
_ALL_BYTES = 0b1111


class RegisterFile(wiring.Component):
    """The registers of a :class:`~spattn.hw.registers.RegisterMap` behind an AXI4-Lite port.

    Members
    -------
    bus : In(AXI4LiteSignature(regmap.addr_bits))
        The subordinate port (the host is the manager). ``awprot``/``arprot`` are ignored.
    <name> : one port per register that is not a constant, named by the register in lower case
        * ``"rw"``: ``Out(width)``, the stored value; the map's ``reset`` after reset.
        * ``"ro"``: ``In(width)``, sampled when a read's address is accepted.
        * ``"wo"``: ``Out(width)``, the written value for exactly one cycle after a write, else 0.

    Constants (``const``) are driven by the register file itself. A read of a ``"wo"`` register
    returns 0 with OKAY; bits above a register's width and between its fields read 0 (also when a
    ``"ro"`` input drives them).

    Errors (SLVERR, nothing changes, no ``"wo"`` pulse): a write to an unmapped or unaligned
    address, to a read-only register, with ``wstrb != 0b1111``, or with a value that has bits outside
    the register's bits (:attr:`Register.mask`). A read of an unmapped or unaligned address returns
    SLVERR with data 0. Every transaction gets its response: nothing can hang the bus.

    Handshakes, per AXI4-Lite
    -------------------------
    ``awready``, ``wready`` and ``arready`` are high while the register file is free for that kind of
    transaction. The write address and data are held separately, so they may come in either order or
    in the same cycle. Reads and writes are independent (one of each may be in flight); a read in the
    cycle a register is written returns the old value. Every output is a register: no combinational
    path from an input to an output.

    Latency and throughput
    ----------------------
    * Write: with the later of the AW/W handshakes at the clock edge ending cycle N, the write takes
      effect at the edge ending cycle N+1: from cycle N+2 ``bvalid`` is high, an ``"rw"`` port shows
      the new value and a ``"wo"`` port its one-cycle pulse. ``awready``/``wready`` rise again in the
      cycle after the B handshake: one write per 3 cycles when the manager never stalls.
    * Read: with the AR handshake at the edge ending cycle N, ``rvalid`` and ``rdata`` are valid from
      cycle N+1; ``arready`` rises again in the cycle after the R handshake: one read per 2 cycles.
    """

    def __init__(self, regmap: RegisterMap):
        self.regmap = regmap
        self.addr_bits = regmap.addr_bits
        members = {"bus": In(AXI4LiteSignature(self.addr_bits))}
        for reg in regmap:
            if reg.port_name is None:
                continue
            if reg.port_name in members:
                raise ValueError(f"register {reg.name} would take the name of port {reg.port_name!r}")
            if reg.access == "rw":
                members[reg.port_name] = Out(reg.width, init=reg.reset)
            elif reg.access == "wo":
                members[reg.port_name] = Out(reg.width)
            else:
                members[reg.port_name] = In(reg.width)
        super().__init__(members)

    def port(self, reg):
        """The port of register ``reg`` (a :class:`Register` or its name)."""
        reg = self.regmap[reg] if isinstance(reg, str) else reg
        return getattr(self, reg.port_name)

    def elaborate(self, platform):
        m = Module()
        bus = self.bus

        # ---- Write: address and data are each taken once and held until the response is taken.
        # The ready registers start high, so a manager can hand over both in its first cycle.
        aw_ready = Signal(init=1)
        w_ready = Signal(init=1)
        aw_addr = Signal(self.addr_bits)
        w_data = Signal(32)
        w_strb = Signal(4)
        b_valid = Signal()
        b_resp = Signal(2)
        m.d.comb += [bus.awready.eq(aw_ready), bus.wready.eq(w_ready),
                     bus.bvalid.eq(b_valid), bus.bresp.eq(b_resp)]

        with m.If(bus.awvalid & aw_ready):
            m.d.sync += [aw_addr.eq(bus.awaddr), aw_ready.eq(0)]
        with m.If(bus.wvalid & w_ready):
            m.d.sync += [w_data.eq(bus.wdata), w_strb.eq(bus.wstrb), w_ready.eq(0)]

        # A command register is 0 except in the one cycle after its write.
        for reg in self.regmap:
            if reg.access == "wo":
                m.d.sync += self.port(reg).eq(0)

        # Both halves held and no response outstanding (the ready flags stay low while the
        # response waits, so b_valid tells a performed write from a pending one).
        perform = ~aw_ready & ~w_ready & ~b_valid
        write_ok = Signal()
        with m.If(perform):
            with m.Switch(aw_addr):
                for reg in self.regmap:
                    with m.Case(reg.offset):
                        if reg.access == "ro":
                            m.d.comb += write_ok.eq(0)     # read-only: refused
                        else:
                            # Bits outside the register would be lost: refuse rather than truncate.
                            fits = (w_data & Const(~reg.mask & 0xFFFF_FFFF, 32)) == 0
                            m.d.comb += write_ok.eq((w_strb == _ALL_BYTES) & fits)
                            with m.If(write_ok):
                                m.d.sync += self.port(reg).eq(w_data[:reg.width])
                # Unmapped and unaligned addresses (every offset is a multiple of 4) land here.
                with m.Default():
                    m.d.comb += write_ok.eq(0)
            m.d.sync += [b_valid.eq(1), b_resp.eq(Mux(write_ok, RESP_OKAY, RESP_SLVERR))]

        with m.If(b_valid & bus.bready):
            m.d.sync += [b_valid.eq(0), aw_ready.eq(1), w_ready.eq(1)]

        # ---- Read: the data is looked up at the AR handshake and held until it is taken.
        ar_ready = Signal(init=1)
        r_valid = Signal()
        r_data = Signal(32)
        r_resp = Signal(2)
        m.d.comb += [bus.arready.eq(ar_ready), bus.rvalid.eq(r_valid),
                     bus.rdata.eq(r_data), bus.rresp.eq(r_resp)]

        with m.If(bus.arvalid & ar_ready):
            m.d.sync += [ar_ready.eq(0), r_valid.eq(1)]
            with m.Switch(bus.araddr):
                for reg in self.regmap:
                    with m.Case(reg.offset):
                        if reg.const is not None:
                            value = Const(reg.const, 32)
                        elif reg.access == "wo":
                            value = Const(0, 32)           # a command has no state to read
                        elif reg.access == "ro":
                            # bits between fields are reserved: they read 0 whatever the design drives
                            value = self.port(reg) & Const(reg.mask, reg.width)
                        else:
                            value = self.port(reg)
                        m.d.sync += [r_data.eq(value), r_resp.eq(RESP_OKAY)]
                with m.Default():
                    m.d.sync += [r_data.eq(0), r_resp.eq(RESP_SLVERR)]

        with m.If(r_valid & bus.rready):
            m.d.sync += [r_valid.eq(0), ar_ready.eq(1)]

        return m
