"""The board clock: an ECP5 PLL (EHXPLLL) from the oscillator to the config's clock, reset synchronised.

:func:`ecp5_pll_params` chooses the dividers as Project Trellis' ``ecppll`` does, within the
EHXPLLL's limits (phase detector 3.125-400 MHz, VCO 400-800 MHz, output 3.125-400 MHz): the output
closest to the request, then the VCO closest to the middle of its range. A request it cannot meet
within :data:`MAX_CLOCK_ERROR` raises :class:`~spattn.config.ConfigError` naming the frequencies.

:class:`ECP5ClockReset` drives the ``sync`` domain at that frequency from the board's ``clk25``:
its reset is held while the PLL is not locked (and while ``reset`` is high) and released
synchronously to the new clock (:class:`amaranth.lib.cdc.ResetSynchronizer`), then spread through a
global buffer (DCCA) onto the clock network: the reset reaches every flip-flop of the design (about
17,500 LSR pins in the ``minilm`` system), and nextpnr, which promotes only clocks by itself, would
otherwise route that one net through the fabric, where the router cannot finish. nextpnr derives the
output clock's constraint from the oscillator's through the PLL's dividers (a constraint on the
output net itself would name a net that synthesis merges away).
"""

from dataclasses import dataclass

from amaranth.hdl import ClockDomain, ClockSignal, Const, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

from spattn.config import ConfigError

__all__ = ["PLLParams", "ecp5_pll_params", "ECP5ClockReset", "MAX_CLOCK_ERROR"]

PFD_MHZ = (3.125, 400.0)
VCO_MHZ = (400.0, 800.0)
OUT_MHZ = (3.125, 400.0)
#: Largest relative difference between the clock asked for and the one the PLL makes.
MAX_CLOCK_ERROR = 0.005


@dataclass(frozen=True)
class PLLParams:
    clki_div: int
    clkfb_div: int
    clkop_div: int
    f_in_mhz: float

    @property
    def f_out_mhz(self) -> float:
        return self.f_in_mhz * self.clkfb_div / self.clki_div

    @property
    def f_vco_mhz(self) -> float:
        return self.f_out_mhz * self.clkop_div


def ecp5_pll_params(f_in_mhz: float, f_out_mhz: float) -> PLLParams:
    """EHXPLLL dividers for ``f_out_mhz`` from ``f_in_mhz``, feedback from CLKOP."""
    if not OUT_MHZ[0] <= f_out_mhz <= OUT_MHZ[1]:
        raise ConfigError(f"clock_mhz must be in {OUT_MHZ[0]}..{OUT_MHZ[1]} MHz for the ECP5 PLL, "
                          f"not {f_out_mhz}")
    best, best_key = None, None
    for clki_div in range(1, 129):
        if not PFD_MHZ[0] <= f_in_mhz / clki_div <= PFD_MHZ[1]:
            continue
        for clkfb_div in range(1, 81):
            out = f_in_mhz * clkfb_div / clki_div
            # The output divider that puts the VCO nearest the middle of its range.
            clkop_div = min(max(round(sum(VCO_MHZ) / 2 / out), 1), 128)
            vco = out * clkop_div
            if VCO_MHZ[0] <= vco <= VCO_MHZ[1]:
                key = (abs(out - f_out_mhz), abs(vco - sum(VCO_MHZ) / 2))
                if best_key is None or key < best_key:
                    best, best_key = PLLParams(clki_div, clkfb_div, clkop_div, f_in_mhz), key
    if best is None or abs(best.f_out_mhz / f_out_mhz - 1) > MAX_CLOCK_ERROR:
        near = f", the nearest is {best.f_out_mhz:.3f} MHz" if best else ""
        raise ConfigError(f"clock_mhz {f_out_mhz} cannot be made from the {f_in_mhz} MHz oscillator within "
                          f"{100 * MAX_CLOCK_ERROR}%{near}")
    return best


class ECP5ClockReset(Elaboratable):
    """Drives the clock and reset of the ``sync`` domain (which the parent defines, as Amaranth 0.6
    wants) at ``f_out_mhz`` from the platform's default clock through an EHXPLLL.

    ``reset`` (a signal of the oscillator's side, e.g. a button) also holds the domain in reset.
    ``locked`` is the PLL's lock output.
    """

    def __init__(self, f_out_mhz: float):
        self.f_out_mhz = f_out_mhz
        self.reset = Signal()
        self.locked = Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.clk_in = clk_in = io.Buffer("i", platform.request(platform.default_clk, dir="-"))
        f_in_mhz = platform.default_clk_frequency / 1e6
        params = ecp5_pll_params(f_in_mhz, self.f_out_mhz)
        clk_out = Signal()
        m.d.comb += ClockSignal("sync").eq(clk_out)
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{f_in_mhz:g}",
            a_FREQUENCY_PIN_CLKOP=f"{params.f_out_mhz:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=params.clki_div, p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=params.clkop_div,
            # Zero phase: the coarse phase is the output divider minus one (as ecppll writes it).
            p_CLKOP_CPHASE=params.clkop_div - 1, p_CLKOP_FPHASE=0,
            p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=params.clkfb_div,
            i_RST=Const(0), i_STDBY=Const(0), i_CLKI=clk_in.i, i_CLKFB=clk_out,
            o_CLKOP=clk_out, o_LOCK=self.locked,
            i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(1), i_PHASESTEP=Const(1),
            i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0), i_ENCLKOP=Const(0),
        )
        # The synchroniser's output is the reset of a domain of its own, from which the DCCA drives
        # the ``sync`` reset on the global network.
        m.domains.reset_source = ClockDomain(local=True)
        m.d.comb += ClockSignal("reset_source").eq(clk_out)
        m.submodules.reset_sync = ResetSynchronizer(~self.locked | self.reset, domain="reset_source")
        m.submodules.reset_buffer = Instance("DCCA", i_CLKI=ResetSignal("reset_source"), i_CE=Const(1),
                                             o_CLKO=ResetSignal("sync"))
        return m
