"""The formal tests import their helpers (``mutants``, the harness factories of
``test_stream_contracts``) by module name, and register the ``formal_slow`` marker: deeper bounded
checks that take minutes, run with ``pytest -m formal_slow`` (not part of ``make test``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "formal_slow: deep SymbiYosys bounded checks (minutes each); `pytest -m formal_slow`")


def pytest_collection_modifyitems(config, items):
    # `-m formal` selects by the module's marker; leave the slow ones to `-m formal_slow`.
    markexpr = config.getoption("markexpr") or ""
    if "formal_slow" in markexpr:
        return
    import pytest
    skip = pytest.mark.skip(reason="deep bounded check: run with -m formal_slow")
    for item in items:
        if item.get_closest_marker("formal_slow"):
            item.add_marker(skip)
