"""Board builds: real YoWASP builds (`spattn bitstream` itself on the iCEBreaker, the ULX3S through
its PLL), the nextpnr report parser, the errors. Every real build must meet its clock."""

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from spattn.config import BOARDS as BOARD_SPECS
from spattn.config import ConfigError, preset
from spattn.fpga.build import (BOARDS, BuildError, BuildReport, build_bitstream, format_report,
                               parse_nextpnr_report)
from spattn.fpga.pll import ecp5_pll_params
from spattn.fpga.toolchain import ToolchainError, find_tool, toolchain_env
from spattn.gen.cli import main

#: The tiny preset on the ULX3S, at a clock its 25 MHz oscillator makes only through the PLL.
TINY_ULX3S = dataclasses.replace(preset("tiny"), board="ulx3s-85f", clock_mhz=50.0)


@pytest.fixture(scope="module")
def tiny_icebreaker(tmp_path_factory):
    """``spattn bitstream`` itself: the iCEBreaker's default design (the top-k self-test) of tiny."""
    out = tmp_path_factory.mktemp("icebreaker")
    assert main(["bitstream", "--board", "icebreaker", "-o", str(out)]) == 0
    (report_json,) = out.glob("*.report.json")
    data = json.loads(report_json.read_text())
    assert data.pop("timing_met") is True
    return BuildReport(**data)


@pytest.fixture(scope="module")
def tiny_ulx3s(tmp_path_factory):
    # A quick real ECP5 build of the same engine, clocked by the PLL.
    return build_bitstream(TINY_ULX3S, "ulx3s-85f", tmp_path_factory.mktemp("ulx3s"))


def _check_sane(report, board):
    spec = BOARD_SPECS[board]
    assert report.board == board and report.device == spec.device
    bitstream = Path(report.bitstream)
    assert bitstream.is_file() and bitstream.suffix == BOARDS[board].bitstream_suffix
    assert bitstream.stat().st_size > 50_000
    assert 0 < report.luts_used <= report.luts_available == spec.luts
    assert 0 < report.registers_used <= report.registers_available
    assert 0 <= report.dsps_used <= report.dsps_available == spec.dsps
    assert 0 <= report.brams_used <= report.brams_available == spec.brams
    assert report.target_mhz == {"icebreaker": 12.0, "ulx3s-85f": 50.0}[board]
    assert report.timing_met and report.fmax_mhz >= report.target_mhz
    assert report.wall_time_s > 0


def _raw(report):
    return json.loads(Path(report.nextpnr_report).read_text())


def _log(report):
    return Path(report.nextpnr_report.replace(".nextpnr.json", ".tim")).read_text()


#: One xdist group: its tests share the two builds (module fixtures), built once on one worker.
pytestmark = pytest.mark.xdist_group("board_builds")


def test_the_builds_stay_on_one_worker(request):
    # pytest-xdist marks a grouped test by its node id; pytest 9.2 drops the mark without a word
    # (pytest-dev/pytest-xdist#1386), and each worker then builds the boards again.
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("checks pytest-xdist's --dist loadgroup (make test)")
    assert request.node.nodeid.endswith("@board_builds"), (
        f"--dist loadgroup did not group {request.node.nodeid}: pytest {pytest.__version__} "
        f"with this pytest-xdist drops the group from node ids; install pytest<9.2 (pyproject.toml)")


# 150 s: the group's whole run, which starts where this test sorts (tests/conftest.py).
@pytest.mark.slow(seconds=150)
def test_tiny_icebreaker_build(tiny_icebreaker):
    report = tiny_icebreaker
    _check_sane(report, "icebreaker")
    assert report.brams_used > 0    # the iCE40 has no LUT RAM: the engine's buffers take EBRs
    raw = _raw(report)["utilization"]
    assert report.luts_used == raw["ICESTORM_LC"]["used"]
    assert report.dsps_used == raw["ICESTORM_DSP"]["used"]
    assert report.brams_used == raw["ICESTORM_RAM"]["used"]
    # iCE40 flip-flops come from nextpnr's packing log: LCs with a DFF, with or without a LUT.
    log = _log(report)
    both = int(re.search(r"(\d+) LCs used as LUT4 and DFF", log).group(1))
    dff_only = int(re.search(r"(\d+) LCs used as DFF only", log).group(1))
    assert report.registers_used == both + dff_only
    # The Fmax is nextpnr's final one, the last line of its log that states it.
    last = re.findall(r"Max frequency for clock '[^']+': ([\d.]+) MHz", log)[-1]
    assert report.fmax_mhz == pytest.approx(float(last), abs=0.01)


@pytest.mark.slow
def test_tiny_ulx3s_build(tiny_ulx3s):
    report = tiny_ulx3s
    _check_sane(report, "ulx3s-85f")
    raw = _raw(report)["utilization"]
    for field, key in [("luts_used", "TRELLIS_COMB"), ("registers_used", "TRELLIS_FF"),
                       ("dsps_used", "MULT18X18D"), ("brams_used", "DP16KD")]:
        assert getattr(report, field) == raw[key]["used"], field
    # The clock comes from the PLL, constrained at its output frequency.
    assert raw["EHXPLLL"]["used"] == 1
    # Two global buffers: the clock (nextpnr's) and the reset (ours), both on the clock network.
    assert raw["DCCA"]["used"] == 2
    globals_routed = re.findall(r"routing clock net (\S+) using global", _log(report))
    assert len(globals_routed) == 2 and any(net.endswith(".rst") for net in globals_routed), globals_routed
    assert [c["constraint"] for c in report.clocks.values()] == [pytest.approx(50.0)]


@pytest.mark.slow
def test_parser_on_real_reports(tiny_icebreaker, tiny_ulx3s):
    ice = parse_nextpnr_report(tiny_icebreaker.nextpnr_report, "ice40", log_text=_log(tiny_icebreaker))
    ecp = parse_nextpnr_report(tiny_ulx3s.nextpnr_report, "ecp5")
    for report, figures in [(tiny_icebreaker, ice), (tiny_ulx3s, ecp)]:
        for key, value in figures.items():
            assert getattr(report, key) == value, key
    raw = _raw(tiny_ulx3s)
    assert ecp["fmax_mhz"] == min(c["achieved"] for c in raw["fmax"].values())
    assert ecp["clocks"] == {name: {"achieved": c["achieved"], "constraint": c["constraint"]}
                             for name, c in raw["fmax"].items()}
    assert ecp["utilization"]["TRELLIS_COMB"]["available"] == BOARD_SPECS["ulx3s-85f"].luts

    # The family picks the keys: an iCE40 report read as ECP5 names the missing primitive.
    with pytest.raises(BuildError, match="no 'TRELLIS_COMB' entry for luts"):
        parse_nextpnr_report(_raw(tiny_icebreaker), "ecp5")
    with pytest.raises(ValueError, match="needs the nextpnr log"):
        parse_nextpnr_report(_raw(tiny_icebreaker), "ice40")
    with pytest.raises(BuildError, match="register count"):
        parse_nextpnr_report(_raw(tiny_icebreaker), "ice40", log_text="Info: nothing here\n")
    no_clock = dict(raw, fmax={})
    with pytest.raises(BuildError, match="no 'fmax' entry"):
        parse_nextpnr_report(no_clock, "ecp5")
    with pytest.raises(ValueError, match="family must be one of"):
        parse_nextpnr_report(raw, "gowin")


@pytest.mark.slow
def test_report_json_and_table(tiny_icebreaker):
    report = tiny_icebreaker
    data = json.loads(report.to_json())
    assert data["luts_used"] == report.luts_used and data["bitstream"] == report.bitstream
    assert data["timing_met"] == (report.fmax_mhz >= report.target_mhz)
    rebuilt = BuildReport(**{k: v for k, v in data.items() if k != "timing_met"})
    assert rebuilt == report

    table = format_report(report)
    assert "icebreaker (iCE40UP5K), preset tiny" in table
    assert re.search(rf"LUTs\s+{report.luts_used}\s+5280\b", table)
    assert re.search(rf"Registers\s+{report.registers_used}\s+5280\b", table)
    assert re.search(rf"Block RAMs\s+{report.brams_used}\s+30\b", table)
    assert f"{report.fmax_mhz:.2f} MHz (target 12.00 MHz" in table
    assert "NOT MET" in format_report(dataclasses.replace(report, fmax_mhz=5.0))
    assert ": met)" in format_report(dataclasses.replace(report, fmax_mhz=50.0))


def test_unknown_board(tmp_path):
    with pytest.raises(ConfigError, match=r"board must be one of \['icebreaker', 'ulx3s-85f'\], "
                                          r"not 'nexys-a7'"):
        build_bitstream(preset("tiny"), "nexys-a7", tmp_path)
    assert not any(tmp_path.iterdir())


def test_preset_that_does_not_fit(tmp_path):
    with pytest.raises(ConfigError, match=r"preset 'default' does not fit board 'icebreaker': .*"
                                          r"needs 128 multipliers, more than the 8"):
        build_bitstream(preset("default"), "icebreaker", tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("f_out, dividers", [(40.0, (5, 8, 15)), (25.0, (1, 1, 24)), (50.0, (1, 2, 12))])
def test_pll_dividers(f_out, dividers):
    params = ecp5_pll_params(25.0, f_out)
    assert (params.clki_div, params.clkfb_div, params.clkop_div) == dividers
    assert params.f_out_mhz == f_out and 400 <= params.f_vco_mhz <= 800


@pytest.mark.parametrize("f_out, message", [
    (12.0, r"clock_mhz 12.0 cannot be made from the 25.0 MHz oscillator within 0.5%, the nearest is 12.500 MHz"),
    (500.0, r"clock_mhz must be in 3.125..400.0 MHz for the ECP5 PLL, not 500.0"),
])
def test_pll_refuses_what_it_cannot_make(f_out, message):
    with pytest.raises(ConfigError, match=message):
        ecp5_pll_params(25.0, f_out)


def test_impossible_designs(tmp_path):
    with pytest.raises(ConfigError, match=r"design 'accelerator' is built for the ULX3S \(ECP5\); board "
                                          r"'icebreaker' builds 'topk-selftest'"):
        build_bitstream(preset("tiny"), "icebreaker", tmp_path, design="accelerator")
    with pytest.raises(ValueError, match="design must be one of accelerator, topk-selftest, not 'blinky'"):
        build_bitstream(preset("tiny"), "icebreaker", tmp_path, design="blinky")
    with pytest.raises(ConfigError, match=r"clock_mhz must be the 12 MHz oscillator of board 'icebreaker' "
                                          r"\(no PLL there\), not 13.0"):
        build_bitstream(dataclasses.replace(preset("tiny"), clock_mhz=13.0), "icebreaker", tmp_path)
    assert not any(tmp_path.iterdir())


def test_registry_matches_config_boards():
    assert set(BOARDS) == set(BOARD_SPECS)
    for name, board in BOARDS.items():
        assert board.platform.device == BOARD_SPECS[name].device


def test_toolchain_without_activated_venv():
    env = toolchain_env("ecp5", base={"PATH": "/usr/bin:/bin"})
    assert env["PATH"] == "/usr/bin:/bin" and env["AMARANTH_USE_YOSYS"] == "builtin"
    for var in ("YOSYS", "NEXTPNR_ECP5", "ECPPACK"):
        assert Path(env[var]).parent == Path(sys.executable).parent and Path(env[var]).is_file()
    assert "NEXTPNR_ICE40" not in env and env["OPENFPGALOADER"].endswith("true")
    assert set(toolchain_env()) >= {"YOSYS", "NEXTPNR_ECP5", "ECPPACK", "NEXTPNR_ICE40", "ICEPACK"}


def test_missing_tool_names_tool_and_package():
    with pytest.raises(ToolchainError, match=r"'yowasp-nextpnr-gowin' not found .* "
                                             r"pip install yowasp-nextpnr-gowin"):
        find_tool("yowasp-nextpnr-gowin", "yowasp-nextpnr-gowin")
    with pytest.raises(ValueError, match="family must be one of"):
        toolchain_env("gowin")


class _StandInHarness(wiring.Component):
    """A stand-in for the harness: ``ffs`` flip-flops of a cellular automaton (each bit XORs its
    neighbour in) and ``mults`` registered 16 x 16 products of them, all folded into the LEDs, so
    synthesis keeps every flip-flop and multiplier."""

    done: Out(1)
    passed: Out(1)
    failed: Out(1)
    busy: Out(1)
    checksum: Out(32)

    def __init__(self, ffs, mults=0):
        self.ffs, self.mults = ffs, mults
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        width = max(self.ffs, 32 * self.mults)
        state = Signal(width, init=1)
        m.d.sync += state.eq(state ^ state.rotate_left(1))
        parity = state.xor()
        for i in range(self.mults):
            product = Signal(32, name=f"product{i}")
            m.d.sync += product.eq(state[32 * i:32 * i + 16] * state[32 * i + 16:32 * i + 32])
            parity = parity ^ product.xor()
        m.d.comb += [self.passed.eq(parity), self.failed.eq(state[0])]
        return m


@pytest.mark.slow
@pytest.mark.parametrize("mults, opts, message", [
    (9, "", r"failed in nextpnr: ERROR: .*ICESTORM_DSP"),                    # the UP5K has 8 DSPs
    (0, "--no-such-option", r"failed in nextpnr: exit status \d+, see the logs"),  # exits at once
], ids=["too-many-dsps", "bad-option"])
def test_tool_failure_names_the_step(tmp_path, mults, opts, message):
    with pytest.raises(BuildError, match=r"FPGA build of preset 'tiny' for board 'icebreaker' " + message):
        build_bitstream(preset("tiny"), "icebreaker", tmp_path, harness=_StandInHarness(64, mults),
                        nextpnr_opts=opts)


def test_a_rebuild_reports_its_own_steps(tmp_path):
    """Files an earlier build left behind are removed before the script runs: otherwise its Yosys
    output made the progress line show nextpnr and the old nextpnr log during the new Yosys run."""
    from spattn.fpga.build import BOARDS, _current_step, _remove_outputs, _steps
    board = BOARDS["ulx3s-85f"]
    for _, output, log in _steps("design", board):
        for path in (output, log):
            if path:
                (tmp_path / path).write_text("from the last build\n")
    assert _current_step(tmp_path, "design", board)[0] == "the build script"
    _remove_outputs(tmp_path, "design", board)
    assert _current_step(tmp_path, "design", board) == ("Yosys", "design.rpt")
    assert not any(tmp_path.iterdir())
