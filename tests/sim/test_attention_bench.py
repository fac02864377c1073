"""The attention core's generated Verilog against the golden model, on both simulators."""

import dataclasses
import json

import pytest

from spattn.config import preset
from spattn.sim.bench import attention_settings, format_attention, summarize_attention
from spattn.sim.runner import SIMULATORS, run_bench

# attn4: a 4 x 4 PE array (on the ULX3S, for the multipliers) with the tiny preset's formats and
# 64 tokens: every test of the bench, on Verilator only (on Icarus it took 800 s of `make test`'s 57
# minutes on 2026-12-01, repeating what Verilator checks). tiny: the iCE40 preset's 2 x 2 array,
# fewer tests. minilm: the shipped preset the README's figures come from (8 x 8 PEs, 256 tokens,
# head_dim 32, 12-bit values), so that widths of a real configuration are simulated too, up to heads
# of max_tokens. Icarus runs tiny (every kind of head) and minilm (the shipped widths).
# SPATTN_ATTN_WORK bounds the heads of the tests (cycles of one Q·Kᵀ pass): on attn4, n up to 64 =
# max_tokens on Verilator; Icarus, the slower simulator, gets n up to 16 and largest heads of 22.
# minilm on Icarus is `extended` (`make test-all`): 212 of `make test`'s 1,031 s on 2026-12-01 for
# three short heads, whose widths Verilator runs in `make test` up to heads of max_tokens.
CONFIGS = {
    "attn4": dataclasses.replace(preset("tiny"), name="attn4", board="ulx3s-85f", clock_mhz=25.0,
                                 pe_rows=4, pe_cols=4),
    "tiny": preset("tiny"),
    "minilm": preset("minilm"),
}
TESTCASES = {
    "attn4": None,
    "tiny": ["random_heads", "causal_heads", "static_mask", "reset_mid_head", "dynatran"],
    "minilm": ["longest_heads", "minilm_heads", "dynatran"],
}
ENV = {"verilator": {"SPATTN_ATTN_WORK": "4096"},
       "icarus": {"SPATTN_ATTN_WORK": "256", "SPATTN_ATTN_LARGEST_WORK": "512"}}
#: minilm on Icarus, which simulates this core about a hundred times slower than Verilator: random
#: heads of 1, 2 and 9 tokens, enough to run the shipped widths through the second simulator.
MINILM_ICARUS = {"testcase": ["random_heads"], "env": {"SPATTN_ATTN_MAX_N": "9",
                                                      "SPATTN_ATTN_RANDOM_HEADS": "0"}}


RUNS = [(simulator, config) for simulator in SIMULATORS for config in sorted(CONFIGS)
        if (simulator, config) != ("icarus", "attn4")]
#: Seconds each run takes alone on a core (measured), for the order of `make test` (tests/conftest.py).
SECONDS = {("verilator", "minilm"): 60, ("icarus", "minilm"): 140,
           ("verilator", "tiny"): 50, ("verilator", "attn4"): 50, ("icarus", "tiny"): 20}


EXTENDED = {("icarus", "minilm")}


@pytest.mark.parametrize("simulator, config", [
    pytest.param(simulator, config, marks=[pytest.mark.slow(seconds=SECONDS[simulator, config])]
                 + ([pytest.mark.extended] if (simulator, config) in EXTENDED else []))
    for simulator, config in RUNS])
def test_attention_core_matches_golden_model(simulator, config, tmp_path):
    cfg, env = CONFIGS[config], dict(ENV[simulator])
    bench_out = tmp_path / "bench.jsonl"
    benchmark = simulator == "verilator" and config == "attn4"
    if benchmark:
        # the benchmark test too, on one short MiniLM head (what `spattn bench attention` runs)
        settings = attention_settings(cfg, keeps=(1.0, 0.5), dynatran=(0.1,))
        env.update(SPATTN_ATTN_BENCH=json.dumps({"latency": 3, "sentences": [0], "layers": [1], "heads": [1],
                                                 "settings": settings}),
                   SPATTN_BENCH_OUT=str(bench_out))
    testcase = TESTCASES[config]
    if config == "minilm":
        env["SPATTN_ATTN_LARGEST_WORK"] = str(256 * 256 * 32 // 64)       # heads of max_tokens
    if config == "minilm" and simulator == "icarus":
        testcase = MINILM_ICARUS["testcase"]
        env.update(MINILM_ICARUS["env"])
    run_bench("attention", cfg, "spattn.sim.benches.attention_bench", simulator=simulator,
              testcase=testcase, extra_env=env)
    if benchmark:
        rows = [json.loads(line) for line in bench_out.read_text().splitlines()]
        assert [r["setting"] for r in rows] == [s["name"] for s in settings]
        dense, *progressive, dynatran = rows
        assert dense["bytes_fetched"] == dense["dense_bytes"] == 3 * 12 * cfg.head_dim * cfg.act_bits / 8
        assert dense["rows_recomputed"] == 0
        assert all(r["bytes_fetched"] < dense["bytes_fetched"] for r in progressive)
        # DynaTran zeroes values, it fetches the same rows
        assert dynatran["bytes_fetched"] == dense["bytes_fetched"] and dynatran["dynatran"] > 0
        assert all(0 < r["utilization"] <= r["pe_utilization"] <= 1 for r in rows)
        table = format_attention(rows, summarize_attention(rows), cfg, {0: 12}, simulator, 3, 1.0)
        assert table.count("\n| ") == 2 * len(settings) + 1
