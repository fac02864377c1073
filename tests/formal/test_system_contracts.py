"""Handshake proofs of the system blocks: the pruning controller, the AXI4 manager's channels, the
register file's AXI4-Lite responses, and the accelerator top's AXI ports.

AXI channels are valid/ready pairs, not :mod:`amaranth.lib.stream` ports: they are named to the
harness through ``handshakes`` (:func:`spattn.sim.formal.harness`), which asserts the stream
contract (VALID, once high, stays high with its payload unchanged until READY, as AMBA requires)
of the channels the block drives and assumes it of the ones it receives. The memory behind an AXI4
manager is also assumed to answer only bursts it was asked for (R after an accepted AR, B after an
accepted AW): an unasked-for RLAST would make the AXI manager count a read it never issued.

Bounded checks: the register file's induction meets the unreachable state "ARREADY and RVALID both
high", the AXI manager's the harness's count of open bursts against its own, and the accelerator
top is too large for induction and takes a minute to depth 30, past its first AR (step 26 of a
cover run: register writes, then the core's first plane-row fetch), so it is in ``formal_slow``. Its AW and W come after a whole
head, out of reach; they are the AXI manager's, wired straight to ``m_axi``.
"""

import dataclasses

import pytest
from amaranth.hdl import Signal
from amaranth.lib.wiring import Flow

from spattn.config import preset
from spattn.sim.formal import check

from test_stream_contracts import axi_legal

pytestmark = pytest.mark.formal

TINY = preset("tiny")
#: The smallest accelerator the memory map and the units accept comfortably: 8 tokens, 4 head dims.
ACCEL_MICRO = dataclasses.replace(TINY, max_tokens=8, head_dim=4, topk_comparators=2, topk_stream_lanes=2)


def axi4_channels(bus, prefix):
    """The five channels of an AXI4 manager port ``bus``, as the manager sees them."""
    return [
        (f"{prefix}.aw", Flow.Out, bus.awvalid, bus.awready,
         [bus.awid, bus.awaddr, bus.awlen, bus.awsize, bus.awburst]),
        (f"{prefix}.w", Flow.Out, bus.wvalid, bus.wready, [bus.wdata, bus.wstrb, bus.wlast]),
        (f"{prefix}.ar", Flow.Out, bus.arvalid, bus.arready,
         [bus.arid, bus.araddr, bus.arlen, bus.arsize, bus.arburst]),
        (f"{prefix}.b", Flow.In, bus.bvalid, bus.bready, [bus.bid, bus.bresp]),
        (f"{prefix}.r", Flow.In, bus.rvalid, bus.rready, [bus.rid, bus.rdata, bus.rresp, bus.rlast]),
    ]


def axi4_subordinate_rules(bus, limit=15):
    """A monitor of the memory behind an AXI4 manager port: R beats only for a read burst whose AR
    was accepted, B responses only for a write burst whose AW was accepted (AMBA AXI4)."""
    def monitor(m, dut):
        port = bus(dut)
        reads = Signal(range(limit + 2), name="reads_open")
        writes = Signal(range(limit + 2), name="writes_open")
        ar, burst_read = port.arvalid & port.arready, port.rvalid & port.rready & port.rlast
        aw, b = port.awvalid & port.awready, port.bvalid & port.bready
        m.d.sync += [reads.eq(reads + ar - burst_read), writes.eq(writes + aw - b)]
        return [("assume", ~port.rvalid | (reads != 0), "R only for an accepted AR"),
                ("assume", ~port.bvalid | (writes != 0), "B only for an accepted AW"),
                ("assume", (reads <= limit) & (writes <= limit), "fewer than 16 bursts open")]
    return monitor


def axi_lite_subordinate_channels(bus, prefix):
    """The five channels of an AXI4-Lite subordinate port ``bus``, as the subordinate sees them."""
    return [
        (f"{prefix}.aw", Flow.In, bus.awvalid, bus.awready, [bus.awaddr, bus.awprot]),
        (f"{prefix}.w", Flow.In, bus.wvalid, bus.wready, [bus.wdata, bus.wstrb]),
        (f"{prefix}.ar", Flow.In, bus.arvalid, bus.arready, [bus.araddr, bus.arprot]),
        (f"{prefix}.b", Flow.Out, bus.bvalid, bus.bready, [bus.bresp]),
        (f"{prefix}.r", Flow.Out, bus.rvalid, bus.rready, [bus.rdata, bus.rresp]),
    ]


def axi_manager():
    from spattn.hw.axi_manager import AxiManager
    return AxiManager(max_beats=4, max_reads=2)


def register_file():
    from spattn.hw.register_file import RegisterFile
    from spattn.hw.registers import accelerator_registers
    return RegisterFile(accelerator_registers(TINY))


def accelerator(cfg=ACCEL_MICRO):
    from spattn.hw.accelerator import Accelerator
    return Accelerator(cfg)


def accelerator_channels(dut):
    return axi4_channels(dut.m_axi, "m_axi") + axi_lite_subordinate_channels(dut.s_axil, "s_axil")


def pruning_properties(dut):
    return [(dut.probs.ready & dut.magnitude.ready, "probs and magnitude always ready"),
            (~dut.prune.ready | ~dut.busy, "a prune is taken only while idle")]


#: name -> (DUT factory, harness arguments, mode, depth)
PROOFS = {
    "axi_manager_axi_channels": (axi_manager, {"assume": axi_legal,
                                               "handshakes": lambda dut: axi4_channels(dut.axi, "axi"),
                                               "monitor": axi4_subordinate_rules(lambda dut: dut.axi)},
                                 "bmc", 12),
    "register_file_axil": (register_file, {"handshakes": lambda dut: axi_lite_subordinate_channels(dut.bus,
                                                                                                   "bus")},
                           "bmc", 20),
}

#: Deeper checks (marker ``formal_slow``): the accelerator's first AR is at step 26 of a cover run
#: (register writes, then the core's first plane-row fetch); AW and W come after a whole head,
#: out of reach: they are proven on the AXI manager, which drives ``m_axi`` directly.
DEEP = {"accelerator_axi": (accelerator, {"handshakes": accelerator_channels,
                                           "monitor": axi4_subordinate_rules(lambda dut: dut.m_axi)},
                             "bmc", 30)}


@pytest.mark.parametrize("name", sorted(PROOFS))
def test_system_proof(name, tmp_path):
    factory, kwargs, mode, depth = PROOFS[name]
    check(name, factory(), mode=mode, depth=depth, workdir=tmp_path, **kwargs)


@pytest.mark.formal_slow
@pytest.mark.parametrize("name", sorted(DEEP))
def test_system_proof_deep(name, tmp_path):
    factory, kwargs, mode, depth = DEEP[name]
    check(name, factory(), mode=mode, depth=depth, workdir=tmp_path, **kwargs)


def test_pruning_controller(tmp_path, monkeypatch):
    """Its inputs are always ready (probs, magnitude) or taken only while idle (prune), and the two
    streams it drives into its top-k engine (``cmd``, ``scores``) keep the stream contract (its
    ``indices`` are the engine's, proven in ``test_stream_contracts.py``)."""
    import spattn.hw.pruning as pruning
    engines = []

    class Watched(pruning.TopKEngine):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            engines.append(self)

    monkeypatch.setattr(pruning, "TopKEngine", Watched)
    ctl = pruning.PruningController(TINY)
    # Elaborate once, now, so that the engine exists when the harness names its streams.
    module = ctl.elaborate(None)
    ctl.elaborate = lambda platform: module
    (engine,) = engines

    def handshakes(dut):
        return [("topk.cmd", Flow.Out, engine.cmd.valid, engine.cmd.ready, engine.cmd.payload),
                ("topk.scores", Flow.Out, engine.scores.valid, engine.scores.ready, engine.scores.payload)]

    check("pruning_controller", ctl, mode="prove", depth=6, workdir=tmp_path,
          assert_=pruning_properties, handshakes=handshakes)


def test_register_file_mutant_fails(tmp_path):
    """A register file whose RDATA follows a free input while RVALID waits (built here) fails."""
    from mutants import Mutant
    from spattn.sim.formal import prove
    dut = Mutant(register_file(), {("bus", "rdata"): lambda value, glitch: value ^ glitch})
    result = prove("register_file_glitch", dut, mode="bmc", depth=6, workdir=tmp_path,
                   handshakes=lambda dut: axi_lite_subordinate_channels(dut.bus, "bus"))
    assert result.status == "FAIL", result
    assert "bus.r: payload changed before ready" in result.detail.replace("bus_r", "bus.r"), result
