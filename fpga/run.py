"""One sentence through an accelerator, checked against the golden model and reported (``spattn run``).

:func:`run_and_report` tokenises a sentence, runs :meth:`Driver.run_sentence
<spattn.fpga.driver.Driver.run_sentence>` over any transport (a board's
:class:`~spattn.fpga.link.LinkTransport`, the golden model, a simulated board) and prints a line
per layer as it finishes, then:

- the embedding's cosine against the dense float model (:func:`~spattn.sim.golden.bert.dense_embedding`)
  and against the golden integer path (:func:`spattn.sim.golden.sparse.run_sentence` with
  ``arith="int"``), which the accelerator must equal **exactly**: "exactly equal" or the largest
  difference;
- per layer: tokens and heads alive, bytes the accelerator read (its BYTES_READ counter) against
  the dense baseline of the golden traffic model (:mod:`spattn.sim.golden.traffic`), and its cycles;
- every layer's alive tokens and heads and every counter but CYCLES against the golden model of the
  accelerator (:class:`~spattn.sim.golden.accelerator.GoldenAccelerator` behind the same driver),
  which they must equal;
- the sum of the CYCLES counters, and with a link transport its :class:`~spattn.fpga.link.LinkStats`,
  checked against the counters: the memory bytes served must equal the sum of BYTES_READ and those
  stored the sum of BYTES_WRITTEN (the host is the memory, so every byte the accelerator moved
  crossed the link); and the wall time.

The returned :class:`SentenceRun` is ``ok`` when the embedding is exactly the golden one, the
counters are the golden model's and the link's byte counts agree. Link and accelerator errors propagate
(:class:`~spattn.fpga.link.LinkError`, :class:`~spattn.fpga.driver.AcceleratorError`), as do
:class:`~spattn.config.ConfigError` for a model the config does not fit or a sentence too long.
"""

import sys
import time
from dataclasses import dataclass

import torch

from spattn.memmap import MemoryMap
from spattn.sim.golden.accelerator import GoldenAccelerator
from spattn.sim.golden.bert import dense_embedding
from spattn.sim.golden.sparse import run_sentence

from .driver import COUNTERS, Driver

__all__ = ["SentenceRun", "run_and_report"]

PROGRESS_BAR_WIDTH = 30


@dataclass(frozen=True)
class SentenceRun:
    """What :func:`run_and_report` measured."""
    tokens: int
    embedding: torch.Tensor
    golden_embedding: torch.Tensor
    cosine_dense: float
    cosine_golden: float
    max_difference: float       # largest |accelerator - golden| element, 0.0 when exactly equal
    layers: tuple               # driver's LayerReport per layer
    bytes_read: int             # sum of BYTES_READ
    bytes_written: int          # sum of BYTES_WRITTEN
    dense_bytes: int            # dense baseline of the traffic model
    cycles: int                 # sum of CYCLES
    wall_s: float
    link_problems: tuple        # link byte counts that disagree with the counters (text)
    counter_problems: tuple     # layers whose alive lists or counters differ from the golden model's (text)

    @property
    def exact(self) -> bool:
        return torch.equal(self.embedding, self.golden_embedding)

    @property
    def ok(self) -> bool:
        return self.exact and not self.link_problems and not self.counter_problems


def _progress(cfg, n, out):
    fetched = 0

    def on_layer(layer, report):
        nonlocal fetched
        fetched += report.counters["BYTES_READ"]
        done = (layer + 1) * PROGRESS_BAR_WIDTH // cfg.layers
        print(f"layer {layer + 1}/{cfg.layers} [{'#' * done}{'.' * (PROGRESS_BAR_WIDTH - done)}]  "
              f"tokens {len(report.tokens):>4}/{n}  heads {len(report.heads):>3}/{cfg.heads}  "
              f"fetched {fetched:>12,} B", file=out, flush=True)
    return on_layer


def _link_problems(stats, bytes_read, bytes_written):
    problems = []
    for what, link, counter, name in (
            ("served to MEM_READs", stats.mem_bytes_served, bytes_read, "BYTES_READ"),
            ("stored from MEM_WRITEs", stats.mem_bytes_stored, bytes_written, "BYTES_WRITTEN")):
        if link != counter:
            problems.append(f"{link:,} memory bytes {what}, but the accelerator counts {name} = {counter:,}")
    return tuple(problems)


def _counter_problems(layers, golden_layers):
    problems = []
    for layer, (got, want) in enumerate(zip(layers, golden_layers, strict=True), 1):
        if (got.tokens, got.heads) != (want.tokens, want.heads):
            problems.append(f"layer {layer}: tokens {got.tokens} and heads {got.heads} alive, the golden model "
                            f"has {want.tokens} and {want.heads}")
        problems += [f"layer {layer}: {name} = {got.counters[name]:,}, the golden model's is {want.counters[name]:,}"
                     for name in COUNTERS if name != "CYCLES" and got.counters[name] != want.counters[name]]
    return tuple(problems)


async def run_and_report(transport, cfg, model, text: str, out=None, mem_base: int = 0) -> SentenceRun:
    """Run ``text`` through the accelerator behind ``transport`` (generated for ``cfg``, memory map
    at ``mem_base``), with ``model`` (a :class:`~spattn.sim.golden.minilm.MiniLM` with its
    tokenizer) doing the rest of each layer; print the report to ``out`` (default standard output)
    and return it."""
    out = sys.stdout if out is None else out
    ids = model.encode(text)
    n = len(ids)
    print(f"spattn run: preset {cfg.name}, {n} tokens, {cfg.layers} layers of {cfg.heads} heads", file=out,
          flush=True)
    started = time.monotonic()
    driver = Driver(transport, cfg, mem_base=mem_base)
    run = await driver.run_sentence(model, ids, on_layer=_progress(cfg, n, out))
    wall = time.monotonic() - started

    golden = run_sentence(model, cfg, ids, arith="int")
    size = mem_base + MemoryMap(cfg).size
    golden_run = await Driver(GoldenAccelerator(cfg, memory_bytes=size), cfg, mem_base).run_sentence(model, ids)
    dense = dense_embedding(model, ids)
    total = {name: sum(layer.counters[name] for layer in run.layers)
             for name in ("BYTES_READ", "BYTES_WRITTEN", "CYCLES")}
    stats = getattr(transport, "stats", None)
    result = SentenceRun(
        tokens=n, embedding=run.embedding, golden_embedding=golden.embedding,
        cosine_dense=float(run.embedding @ dense), cosine_golden=float(run.embedding @ golden.embedding),
        max_difference=float((run.embedding - golden.embedding).abs().max()), layers=run.layers,
        bytes_read=total["BYTES_READ"], bytes_written=total["BYTES_WRITTEN"],
        dense_bytes=sum(layer.dense.bits for layer in golden.layers) // 8, cycles=total["CYCLES"],
        wall_s=wall,
        link_problems=() if stats is None else _link_problems(stats, total["BYTES_READ"],
                                                              total["BYTES_WRITTEN"]),
        counter_problems=_counter_problems(run.layers, golden_run.layers))

    verdict = "exactly equal" if result.exact else f"DIFFERENT, by up to {result.max_difference:.3g}"
    print(f"embedding: cosine {result.cosine_dense:.6f} against the dense float model; against the golden "
          f"integer path cosine {result.cosine_golden:.6f}, {verdict}", file=out)
    print("layer  tokens  heads   bytes read  dense bytes       cycles", file=out)
    for layer, (report, stats_golden) in enumerate(zip(run.layers, golden.layers, strict=True)):
        print(f"{layer + 1:>5}  {len(report.tokens):>6}  {len(report.heads):>5}  "
              f"{report.counters['BYTES_READ']:>11,}  {stats_golden.dense.bits // 8:>11,}  "
              f"{report.counters['CYCLES']:>11,}", file=out)
    share = f" ({100 * result.bytes_read / result.dense_bytes:.1f}%)" if result.dense_bytes else ""
    print(f"bytes fetched: {result.bytes_read:,} against {result.dense_bytes:,} dense{share}; "
          f"written: {result.bytes_written:,}", file=out)
    names = ", ".join(name for name in COUNTERS if name != "CYCLES")
    print(f"counters ({names}) and alive lists of every layer: "
          + ("equal to the golden model's" if not result.counter_problems else "DIFFERENT"), file=out)
    for problem in result.counter_problems:
        print(f"counters: MISMATCH: {problem}", file=out)
    print(f"accelerator cycles: {result.cycles:,} ({result.cycles / cfg.clock_mhz / 1e3:.3f} ms at "
          f"{cfg.clock_mhz:g} MHz)", file=out)
    if stats is not None:
        print(f"link: {stats.wire_bytes_sent:,} B sent in {stats.frames_sent:,} frames, "
              f"{stats.wire_bytes_received:,} B received in {stats.frames_received:,} frames; memory "
              f"{stats.mem_bytes_served:,} B served in {stats.mem_reads:,} reads, "
              f"{stats.mem_bytes_stored:,} B stored in {stats.mem_writes:,} writes; {stats.resends} resends",
              file=out)
        for problem in result.link_problems:
            print(f"link: MISMATCH: {problem}", file=out)
    print(f"wall time: {wall:.2f} s", file=out)
    failures = ([] if result.exact else ["the embedding differs from the golden integer path"]) + list(
        result.link_problems) + (["the counters differ from the golden model's"] if result.counter_problems else [])
    print("FAIL: " + "; ".join(failures) if failures else
          "PASS: the embedding equals the golden integer path exactly, the counters the golden model's",
          file=out, flush=True)
    return result
