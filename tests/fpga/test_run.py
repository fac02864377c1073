"""``spattn run``'s report (:func:`spattn.fpga.run.run_and_report`) on the golden accelerator as the
transport: the printed lines, the exact-equality verdict, and its failure on a wrong embedding or on
link byte counts that disagree with the accelerator's counters; the command's errors without a board."""

import asyncio
import dataclasses

import pytest
import torch

from spattn.config import preset
from spattn.fpga.link import LinkStats
from spattn.fpga.run import run_and_report
from spattn.gen.cli import main
from spattn.memmap import MemoryMap
from spattn.sim.golden.accelerator import GoldenAccelerator
from spattn.sim.golden.minilm import load_minilm
from spattn.sim.golden.sparse import run_sentence

#: A quarter of the heads pruned after each layer, so the report has something to show.
CFG = dataclasses.replace(preset("minilm"), head_keep=(0.75,))
SENTENCE = "Hello"        # [CLS] hello [SEP]


@pytest.fixture(scope="module")
def minilm():
    torch.set_num_threads(1)
    return load_minilm()


class WrongOutput(GoldenAccelerator):
    """The golden accelerator with one bit of head 0's first output value flipped on its way out."""

    async def read_mem(self, address, length):
        data = bytearray(await super().read_mem(address, length))
        if address == self.memmap.out_address(0, 0):
            data[0] ^= 1
        return bytes(data)


def test_report_on_the_golden_model(minilm, capsys):
    result = asyncio.run(run_and_report(GoldenAccelerator(CFG), CFG, minilm, SENTENCE))
    out = capsys.readouterr().out
    golden = run_sentence(minilm, CFG, minilm.encode(SENTENCE), arith="int")
    assert result.ok and result.exact and result.max_difference == 0.0
    assert result.tokens == 3
    assert "against the golden integer path cosine 1.000000, exactly equal" in out
    assert "alive lists of every layer: equal to the golden model's" in out
    assert out.rstrip().endswith("PASS: the embedding equals the golden integer path exactly, the counters the "
                                 "golden model's")
    for layer, stats in enumerate(golden.layers):
        assert f"layer {layer + 1}/6 [" in out
        assert f"heads {len(stats.alive_heads):>3}/12" in out
        assert (f"{layer + 1:>5}  {len(stats.alive_tokens):>6}  {len(stats.alive_heads):>5}  "
                f"{stats.traffic.bits // 8:>11,}  {stats.dense.bits // 8:>11,}") in out
    assert [len(stats.alive_heads) for stats in golden.layers] == [12, 9, 7, 6, 5, 4]
    assert result.bytes_read == sum(stats.traffic.bits for stats in golden.layers) // 8 < result.dense_bytes
    print(out)    # the sample output for the README (pytest -s)


def test_a_wrong_embedding_fails(minilm, capsys):
    result = asyncio.run(run_and_report(WrongOutput(CFG), CFG, minilm, SENTENCE))
    out = capsys.readouterr().out
    assert not result.exact and not result.ok and result.max_difference > 0
    assert f"DIFFERENT, by up to {result.max_difference:.3g}" in out
    assert out.rstrip().endswith("FAIL: the embedding differs from the golden integer path")


class WrongCounter(GoldenAccelerator):
    """The golden accelerator reporting one recomputed row too many."""

    async def read_reg(self, offset):
        value = await super().read_reg(offset)
        return value + 1 if offset == self.regmap["ROWS_RECOMPUTED"].offset else value


def test_a_wrong_counter_fails(minilm, capsys):
    result = asyncio.run(run_and_report(WrongCounter(CFG), CFG, minilm, SENTENCE))
    out = capsys.readouterr().out
    assert result.exact and not result.ok and len(result.counter_problems) == CFG.layers
    assert "alive lists of every layer: DIFFERENT" in out
    assert "counters: MISMATCH: layer 1: ROWS_RECOMPUTED = 1, the golden model's is 0" in out
    assert out.rstrip().endswith("FAIL: the counters differ from the golden model's")


def test_link_bytes_that_disagree_with_the_counters_fail(minilm, capsys):
    transport = GoldenAccelerator(CFG)
    transport.stats = LinkStats()    # a link that served and stored nothing
    result = asyncio.run(run_and_report(transport, CFG, minilm, SENTENCE))
    out = capsys.readouterr().out
    assert result.exact and not result.ok
    assert f"link: MISMATCH: 0 memory bytes served to MEM_READs, but the accelerator counts BYTES_READ = " \
           f"{result.bytes_read:,}" in out
    assert f"link: MISMATCH: 0 memory bytes stored from MEM_WRITEs, but the accelerator counts " \
           f"BYTES_WRITTEN = {result.bytes_written:,}" in out
    assert out.splitlines()[-1].startswith("FAIL: 0 memory bytes served to MEM_READs")


def test_run_command_exit_code_follows_the_verdict(minilm, monkeypatch, capsys):
    """The command over a stand-in for the serial port: 0 for the golden model, 1 for a wrong output."""
    import spattn.fpga.link as link

    class NoPort:
        def __init__(self, port, baud):
            assert (port, baud) == ("/dev/ttyTEST", preset("minilm").link_baud)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(link, "SerialChannel", NoPort)
    for transport, code in ((GoldenAccelerator, 0), (WrongOutput, 1)):
        def make(channel, memory_size, timeout, transport=transport):
            assert memory_size == MemoryMap(preset("minilm")).size and timeout == 60.0
            return transport(preset("minilm"))
        monkeypatch.setattr(link, "LinkTransport", make)
        assert main(["run", "--port", "/dev/ttyTEST", SENTENCE]) == code
    assert "FAIL" in capsys.readouterr().out


def test_run_command_errors_without_a_board(capsys):
    assert main(["run", "--port", "/nonexistent/ttyUSB9", SENTENCE]) == 2
    assert "spattn: error: cannot open /nonexistent/ttyUSB9:" in capsys.readouterr().err
    assert main(["run", "--preset", "default", "--port", "/nonexistent/ttyUSB9", SENTENCE]) == 2
    assert "spattn: error: head_dim must be 32 for this model, not 64" in capsys.readouterr().err
