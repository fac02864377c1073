"""The PE array's result beats against its commands, from its ports only.

The harness counts: a command opens a run that owes ``m * ceil(n / C)`` result beats (one beat
per result row segment of C columns, both dataflows: :class:`spattn.hw.pe_array.PEArray`); each
taken result beat is counted, and the beat with ``last`` closes the run. Asserted:

* no result beat while no run is open (none before its command, none after the run's ``last``);
* no command accepted while a run is open;
* a run's beats never exceed ``m * ceil(n / C)``, and ``last`` is set exactly on beat number
  ``m * ceil(n / C)``: so the run has exactly that many beats, if it ends.

Assumed: commands within :func:`spattn.config.check_matmul_run`'s limits; inputs obey the stream
contract; the operand values and every stall are free.
"""

import dataclasses

import pytest
from amaranth.hdl import Signal

from spattn.config import preset
from spattn.formats import bits_for
from spattn.sim.formal import check, prove

from test_stream_contracts import pe_legal

pytestmark = pytest.mark.formal

TINY = preset("tiny")
#: 4 tokens on the 2 x 2 array of ``tiny``: every run of every shape fits a short bounded check.
PE_MICRO = dataclasses.replace(TINY, max_tokens=4)


def pe_array(cfg, dataflow):
    from spattn.hw.pe_array import PEArray
    return PEArray(cfg, dataflow=dataflow)


def beats_monitor(cfg):
    c, t = cfg.pe_cols, cfg.max_tokens
    legal = pe_legal(cfg)

    def monitor(m, dut):
        cmd, res = dut.cmd, dut.result
        width = bits_for(t * ((t + c - 1) // c))
        open_ = Signal(name="run_open")
        expected = Signal(width, name="run_expected")
        emitted = Signal(width, name="run_emitted")
        runs = Signal(2, name="runs_done")
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [open_.eq(1), emitted.eq(0),
                         expected.eq(cmd.payload.m * ((cmd.payload.n + c - 1) // c))]
        with m.If(res.valid & res.ready):
            m.d.sync += emitted.eq(emitted + 1)
            with m.If(res.payload.last):
                m.d.sync += [open_.eq(0), runs.eq(runs | (runs + 1))]
        checks = [("assume", cond, msg) for cond, msg in legal(dut)]
        checks += [
            ("assert", ~res.valid | open_, "no result beat outside a run (before its command)"),
            ("assert", ~(cmd.valid & cmd.ready) | ~open_, "no command accepted while a run is open"),
            ("assert", ~res.valid | (emitted < expected), "at most m * ceil(n / C) result beats"),
            ("assert", ~res.valid | (res.payload.last == (emitted + 1 == expected)),
             "last exactly on beat m * ceil(n / C)"),
            ("cover", res.valid & res.ready & res.payload.last & (expected == t * ((t + c - 1) // c)),
             "run of m = n = max_tokens done"),
            ("cover", runs == 3, "two runs done"),
        ]
        return checks
    return monitor


#: name -> (config, dataflow, depth of the bounded check, depth of the deep one (``formal_slow``))
PE_PROOFS = {
    "os_beats": (PE_MICRO, "output_stationary", 16, 30),
    "ws_beats": (PE_MICRO, "weight_stationary", 16, 30),
}


@pytest.mark.parametrize("name", sorted(PE_PROOFS))
def test_pe_array_beats(name, tmp_path):
    cfg, dataflow, depth, _ = PE_PROOFS[name]
    check(f"pe_{name}", pe_array(cfg, dataflow), mode="bmc", depth=depth, workdir=tmp_path,
          monitor=beats_monitor(cfg))


@pytest.mark.formal_slow
@pytest.mark.parametrize("name", sorted(PE_PROOFS))
def test_pe_array_beats_deep(name, tmp_path):
    cfg, dataflow, _, depth = PE_PROOFS[name]
    check(f"pe_{name}_deep", pe_array(cfg, dataflow), mode="bmc", depth=depth, workdir=tmp_path,
          monitor=beats_monitor(cfg))


def test_pe_array_mutant_fails(tmp_path):
    """An array whose result beats never carry ``last`` (built here) fails the beat count."""
    from mutants import Mutant
    from spattn.hw.pe_array import result_layout
    last = result_layout(PE_MICRO)["last"].offset
    dut = Mutant(pe_array(PE_MICRO, "output_stationary"),
                 {("result", "payload"): lambda value, glitch: value & ~(1 << last)})
    result = prove("pe_no_last", dut, mode="bmc", depth=12, workdir=tmp_path, monitor=beats_monitor(PE_MICRO))
    assert result.status == "FAIL", result
    assert "last exactly on beat m * ceil(n / C)" in result.detail, result
