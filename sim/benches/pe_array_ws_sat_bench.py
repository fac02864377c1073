"""The PE-array bench (:mod:`.pe_array_bench`) for the ``pe_array_ws_sat`` block: the
weight-stationary dataflow with saturating accumulators and 2-row activation tiles; the manifest's
block name selects the golden rules."""

from spattn.sim.benches.pe_array_bench import (edge_cases, minilm_tiles, random_runs, reset_mid_run,
                                               skipping_saves_cycles)

__all__ = ["edge_cases", "minilm_tiles", "random_runs", "reset_mid_run", "skipping_saves_cycles"]
