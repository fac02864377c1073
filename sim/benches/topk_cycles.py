"""cocotb benchmark of the top-k engine: cycles per run over a sweep of n and k/n.

Reads ``SPATTN_TOPK_SWEEP`` (a JSON list of [n, k] pairs) and writes one JSON line per pair to the
file named by ``SPATTN_BENCH_OUT``, with free-flowing streams:

* ``cycles``, ``max_cycles``: from command to last index beat of a run on its own, mean and worst
  over ``SPATTN_BENCH_TRIALS`` random score sets;
* ``input``, ``selection``, ``emission``: of those runs, the mean cycles from the command to the
  last score beat, from there to the first index beat, and from there to the last index beat with
  both counted (so the three overlap by a cycle);
* ``back_to_back``: cycles per run when the same runs are queued one after another (from the first
  command to the last run's last beat, divided by the number of runs).

Every run is still checked against the golden model, so a benchmark of a broken engine fails
instead of printing numbers. With ``SPATTN_TOPK_LIMITS`` (a JSON list of points as this bench
writes them, e.g. the committed ``reports/topk_cycles.json``) each point's mean may not exceed the
recorded one by more than ``SPEED_MARGIN``: the engine is held to its published speed.
"""

import json
import os
import random
from statistics import mean

import cocotb

from spattn.sim.benches.topk_bench import SEED, random_scores, setup

#: How much slower than its recorded figure a benchmarked point may run before the bench fails.
SPEED_MARGIN = 1.10


def recorded_limits(env_value, p):
    """``{(n, k): recorded mean cycles}`` of the points recorded for P = ``p``."""
    return {(row["n"], row["k"]): row["cycles"] for row in json.loads(env_value) if row["P"] == p}


@cocotb.test()
async def sweep(dut):
    bench, cfg, _ = await setup(dut)
    rng = random.Random(SEED)
    trials = int(os.environ.get("SPATTN_BENCH_TRIALS", "5"))
    limits = recorded_limits(os.environ.get("SPATTN_TOPK_LIMITS", "[]"), cfg.topk_comparators)
    too_slow = []
    with open(os.environ["SPATTN_BENCH_OUT"], "w") as out:
        for n, k in json.loads(os.environ["SPATTN_TOPK_SWEEP"]):
            runs = [random_scores(cfg, rng, n, "full") for _ in range(trials)]
            singles = []
            for scores in runs:
                bench.submit(n, k, scores)
                await bench.drain(max_cycles=10 * cfg.score_bits * n + 1000)
                singles.append(bench.finished[-1])
            first_command = len(bench.cmd.transfers)
            for scores in runs:
                bench.submit(n, k, scores)
            await bench.drain(max_cycles=trials * (10 * cfg.score_bits * n + 1000))
            started, ended = bench.cmd.transfers[first_command], bench.finished[-1].ended
            point = {"n": n, "k": k, "cycles": mean(run.cycles for run in singles),
                     "max_cycles": max(run.cycles for run in singles),
                     "input": mean(run.last_score - (run.ended - run.cycles) for run in singles),
                     "selection": mean(run.first_beat - run.last_score for run in singles),
                     "emission": mean(run.ended - run.first_beat + 1 for run in singles),
                     "back_to_back": (ended - started) / trials}
            out.write(json.dumps(point) + "\n")
            recorded = limits.get((n, k))
            if recorded is not None and point["cycles"] > SPEED_MARGIN * recorded:
                too_slow.append(f"n={n} k={k}: {point['cycles']:.1f} cycles, recorded {recorded:.1f}")
    await bench.finish()
    assert not too_slow, "slower than the recorded figures by more than 10%: " + "; ".join(too_slow)
