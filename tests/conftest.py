"""Order of the run: tests marked ``slow(seconds=N)`` first, the longest first.

``make test`` runs ``pytest -n 2 --dist loadgroup --no-loadscope-reorder``, which hands each worker
one test (or one ``xdist_group``) at a time in this order: the long simulations and builds start
first and the many short tests fill in behind them, so the two workers finish together. ``N`` is
what the test (or the xdist group it opens) took alone on one core of the 2-core CI machine,
measured; it only orders the run.
"""


def _seconds(item):
    marker = item.get_closest_marker("slow")
    return marker.kwargs.get("seconds", 0) if marker else 0


def pytest_collection_modifyitems(config, items):
    items.sort(key=_seconds, reverse=True)      # stable: the rest keep their order
