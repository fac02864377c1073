import json

import pytest

from spattn.config import AccelConfig, preset
from spattn.gen.cli import main
from spattn.gen.verilog import generate


def test_verilog_command_writes_verilog_and_manifest(tmp_path, capsys):
    assert main(["verilog", "--preset", "tiny", "-o", str(tmp_path)]) == 0
    verilog = (tmp_path / "spattn_topk.v").read_text()
    manifest = json.loads((tmp_path / "spattn_topk.json").read_text())
    assert "module spattn_topk(" in verilog
    assert AccelConfig.from_dict(manifest["config"]) == preset("tiny")
    assert manifest["top"] == "spattn_topk" and manifest["spattn_version"]
    ports = {port["name"]: port for port in manifest["ports"]}
    cfg = preset("tiny")
    assert ports["scores__payload"] == {"name": "scores__payload", "direction": "input",
                                        "width": cfg.score_bits * cfg.topk_stream_lanes}
    assert ports["indices__ready"]["direction"] == "input"
    assert ports["indices__payload"]["width"] == cfg.topk_comparators * cfg.index_bits + 3 + 1
    for name in ports:
        assert f"{name};" in verilog or f"{name} ;" in verilog or f" {name}," in verilog
    assert "wrote" in capsys.readouterr().out
    # the accelerator top comes with its register map as a C header and a Markdown table
    assert "#define SPATTN_REG_STATUS" in (tmp_path / "spattn_accelerator_regs.h").read_text()
    assert "| 0x10 | `STATUS` |" in (tmp_path / "spattn_accelerator_regs.md").read_text()


def test_unknown_preset_is_a_clear_error(tmp_path, capsys):
    assert main(["verilog", "--preset", "huge", "-o", str(tmp_path)]) == 2
    assert "preset must be one of ['default', 'minilm', 'tiny'], not 'huge'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_unknown_block_names_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"block must be one of \['accelerator', 'attention', 'host_link', 'pe_array', "
                                         r"'pe_array_sat', "
                                         r"'pe_array_ws', "
                                         r"'pe_array_ws_sat', 'system', 'topk'\], not 'fft'"):
        generate(preset("tiny"), tmp_path, block="fft")


def test_units_command_writes_the_table(tmp_path, capsys):
    reports = tmp_path / "reports"
    assert main(["units", "--block", "topk", "--preset", "tiny", "-o", str(reports),
                 "--build-dir", str(tmp_path / "build")]) == 0
    markdown = (reports / "topk_units.md").read_text()
    data = json.loads((reports / "topk_units.json").read_text())
    assert markdown.startswith("# LUTs per unit: topk, preset tiny\n")
    assert data["yosys"] in markdown and data["date"] in markdown
    assert data["block"] == "topk" and data["preset"] == "tiny"
    assert data["units"][0]["module"] == "spattn_topk"
    assert f"| `spattn_topk` (top) | {data['units'][0]['own']['luts']} |" in markdown
    assert "| `out_fifo` |" in markdown
    assert "| `spattn_topk` (top) |" in capsys.readouterr().out
    assert (tmp_path / "build" / "topk-tiny" / "spattn_topk.v").exists()


@pytest.mark.slow(seconds=40)
def test_check_command_runs_the_board_system_at_its_own_link_rate(monkeypatch, capsys):
    """``spattn check`` as ``make`` runs it, on tiny: the board system's Verilog on Verilator, a
    sentence of 2 tokens through its UART pins at tiny's own 1 MBd, then the malformed frames."""
    monkeypatch.setenv("SPATTN_SYSTEM_SENTENCE_AFTER_ERRORS", "0")
    monkeypatch.setenv("SPATTN_SYSTEM_TOKENS", "2")
    assert main(["check", "--preset", "tiny", "--block", "system"]) == 0
    assert "system (tiny, verilator): every cocotb test passed" in capsys.readouterr().out
