"""AMBA AXI4 and AXI4-Lite port signatures, as seen from the manager (master) side.

The member names are the AXI signal names in lower case, so that a member ``m_axi`` of a generated
top becomes Verilog ports ``m_axi__awaddr``, ``m_axi__rdata`` ...: cocotbext-axi's
``AxiBus.from_prefix(dut, "m_axi_")`` and ``AxiLiteBus.from_prefix(dut, "s_axil_")`` find them as
they are. A subordinate (slave) port is ``In(signature)``, i.e. the flipped signature.

Only what the spattn blocks use is present: a one-bit ID that managers tie to 0 (so every response
returns in order; the ID signals are there because interconnects and cocotbext-axi expect them),
INCR bursts, no locks, caches, QoS, regions or user signals. Responses use ``RESP_*``.
"""

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AXI_DATA_BITS", "AXI_ADDR_BITS", "AXI_ID_BITS", "AXI_MAX_BURST", "BURST_INCR", "RESP_OKAY",
           "RESP_SLVERR", "RESP_DECERR", "AXI4Signature", "AXI4LiteSignature"]

#: Data width of the accelerator's memory port and its register port (bits).
AXI_DATA_BITS = 32
#: Byte-address width of the memory port.
AXI_ADDR_BITS = 32
#: Width of the transaction ID signals (always 0 from spattn's managers).
AXI_ID_BITS = 1
#: Most beats in one INCR burst (AXI4); a burst must also not cross a 4 KiB boundary.
AXI_MAX_BURST = 256

BURST_INCR = 0b01
RESP_OKAY, RESP_SLVERR, RESP_DECERR = 0b00, 0b10, 0b11


class AXI4Signature(wiring.Signature):
    """AXI4 manager port: read and write channels, ``data_bits`` wide data, bursts up to 256 beats."""

    def __init__(self, addr_bits=AXI_ADDR_BITS, data_bits=AXI_DATA_BITS):
        self.addr_bits, self.data_bits = addr_bits, data_bits
        super().__init__({
            "awid": Out(AXI_ID_BITS), "awaddr": Out(addr_bits), "awlen": Out(8), "awsize": Out(3), "awburst": Out(2),
            "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_bits), "wstrb": Out(data_bits // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bid": In(AXI_ID_BITS), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "arid": Out(AXI_ID_BITS), "araddr": Out(addr_bits), "arlen": Out(8), "arsize": Out(3), "arburst": Out(2),
            "arvalid": Out(1), "arready": In(1),
            "rid": In(AXI_ID_BITS), "rdata": In(data_bits), "rresp": In(2), "rlast": In(1), "rvalid": In(1), "rready": Out(1),
        })


class AXI4LiteSignature(wiring.Signature):
    """AXI4-Lite manager port: single 32-bit transfers."""

    def __init__(self, addr_bits):
        self.addr_bits = addr_bits
        super().__init__({
            "awaddr": Out(addr_bits), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(32), "wstrb": Out(4), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_bits), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(32), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })
