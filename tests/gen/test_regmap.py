"""The register map (:mod:`spattn.hw.registers`) and what is generated from it (:mod:`spattn.gen.regmap`):
the map's own rules, the C header (compiled, with every macro checked by static asserts against
the Python values) and the Markdown page."""

import re
import shutil
import subprocess

import pytest

from spattn.config import AccelConfig, ConfigError, preset
from spattn.formats import VALUE_KEEP_FRAC
from spattn.gen.regmap import c_header, header_macros, markdown, write_register_files
from spattn.hw.registers import Field, Register, RegisterMap, accelerator_registers
from spattn.memmap import MemoryMap

PRESETS = ["tiny", "minilm", "default"]

#: The register table of the specification: offset, name, access.
TABLE = [
    (0x00, "ID", "ro"), (0x04, "SHAPE", "ro"), (0x08, "FORMAT", "ro"), (0x0C, "CTRL", "wo"),
    (0x10, "STATUS", "ro"), (0x14, "TOKENS", "rw"), (0x18, "LAYER", "rw"), (0x1C, "FLAGS", "rw"),
    (0x20, "TOKEN_KEEP", "rw"), (0x24, "HEAD_KEEP", "rw"), (0x28, "VALUE_KEEP", "rw"),
    (0x2C, "THRESHOLD", "rw"), (0x30, "DYNATRAN", "rw"), (0x34, "MEM_BASE", "rw"),
    (0x38, "ALIVE_TOKENS", "ro"), (0x3C, "ALIVE_HEADS", "ro"), (0x40, "LAYER_TOKENS", "ro"),
    (0x44, "LAYER_HEADS", "ro"), (0x48, "CYCLES", "ro"), (0x4C, "BYTES_READ", "ro"),
    (0x50, "BYTES_WRITTEN", "ro"), (0x54, "ROWS_RECOMPUTED", "ro"), (0x58, "PE_BUSY_CYCLES", "ro"),
]


def _compiler():
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


# ---- the map --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESETS)
def test_map_matches_the_specified_table(name):
    cfg = preset(name)
    regmap = accelerator_registers(cfg)
    assert [(reg.offset, reg.name, reg.access) for reg in regmap] == TABLE
    assert regmap["ID"].const == 0x53504154
    assert regmap["SHAPE"].pack(MAX_TOKENS=cfg.max_tokens, HEADS=cfg.heads, LAYERS=cfg.layers) \
        == regmap["SHAPE"].const
    assert {reg.name for reg in regmap if reg.const is not None} == {"ID", "SHAPE", "FORMAT"}
    for keep in ("TOKEN_KEEP", "HEAD_KEEP", "VALUE_KEEP"):
        assert (regmap[keep].width, regmap[keep].reset) == (VALUE_KEEP_FRAC + 1, 1 << VALUE_KEEP_FRAC)
    assert regmap["STATUS"].field("ERR_MEMORY").lsb == 12 and regmap["CTRL"].field("CLEAR").lsb == 2
    assert regmap["THRESHOLD"].width == cfg.score_bits       # prob is score_bits - 1 wide, plus one
    assert regmap["TOKENS"].width == cfg.count_bits


@pytest.mark.parametrize("name", PRESETS)
def test_offsets_unique_aligned_and_fields_fit(name):
    regmap = accelerator_registers(preset(name))
    offsets = [reg.offset for reg in regmap]
    assert len(set(offsets)) == len(offsets) and all(offset % 4 == 0 for offset in offsets)
    assert regmap.size == 0x5C and regmap.addr_bits == 7
    for reg in regmap:
        assert reg.doc, reg.name
        assert 1 <= reg.width <= 32 and reg.mask < 1 << 32
        used = 0
        for field in reg.fields:
            assert field.doc, f"{reg.name}.{field.name}"
            assert field.msb < 32 and field.msb < reg.width
            assert not used & field.mask, f"{reg.name}.{field.name} overlaps"
            used |= field.mask
        for value in (reg.reset, reg.const or 0):
            assert value & ~reg.mask == 0, reg.name


def test_bad_maps_are_refused():
    with pytest.raises(ValueError, match="overlaps"):
        Register("R", 0, "rw", fields=(Field("A", 0, 4), Field("B", 3, 2)))
    with pytest.raises(ValueError, match="offset"):
        Register("R", 2, "rw")
    with pytest.raises(ValueError, match="beyond its width"):
        Register("R", 0, "rw", width=8, fields=(Field("A", 6, 4),))
    with pytest.raises(ValueError, match="does not fit"):
        Register("R", 0, "rw", width=4, reset=16)
    with pytest.raises(ValueError, match="constant"):
        Register("R", 0, "rw", const=1)
    with pytest.raises(ValueError, match="access"):
        Register("R", 0, "rx")
    with pytest.raises(ValueError, match="share offset"):
        RegisterMap([Register("A", 0, "rw"), Register("B", 0, "ro")])
    with pytest.raises(ValueError, match="named"):
        RegisterMap([Register("A", 0, "rw"), Register("A", 4, "ro")])


def test_a_shape_too_large_for_its_field_is_refused():
    cfg = AccelConfig(head_dim=256)
    with pytest.raises(ConfigError, match="head_dim = 256 .* FORMAT.HEAD_DIM"):
        accelerator_registers(cfg)


# ---- the header and the page ----------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESETS)
def test_header_names_every_register_field_and_region(name):
    cfg = preset(name)
    regmap = accelerator_registers(cfg)
    header = c_header(cfg)
    defines = dict(re.findall(r"^#define (\w+) +(\S.*?)(?: +/\*.*)?$", header, flags=re.M))
    guard = f"SPATTN_{name.upper()}_REGS_H"
    assert header.count(f"#ifndef {guard}") == 1 and f"#endif /* {guard} */" in header
    for reg in regmap:
        assert defines[f"SPATTN_REG_{reg.name}"] == f"0x{reg.offset:02X}u"
        for field in reg.fields:
            stem = f"SPATTN_{reg.name}_{field.name}"
            assert defines[f"{stem}_SHIFT"] == f"{field.lsb}u"
            assert int(defines[f"{stem}_MASK"].rstrip("u"), 16) == field.mask
            assert (f"{stem}_BIT" in defines) == (field.width == 1)
    for constant, value in (("MAX_TOKENS", cfg.max_tokens), ("HEADS", cfg.heads),
                            ("HEAD_DIM", cfg.head_dim), ("LAYERS", cfg.layers), ("KEEP_FRAC", 16)):
        assert defines[f"SPATTN_{constant}"] == f"{value}u"
    memmap = MemoryMap(cfg)
    strides = memmap.strides()
    for region, (offset, _) in memmap.regions.items():
        assert int(defines[f"SPATTN_MEM_{region.upper()}_OFFSET"].rstrip("u"), 16) == offset
        assert defines[f"SPATTN_MEM_{region.upper()}_STRIDE"] == f"{strides[region]}u"
    # the strides are the ones the memory map's own table prints
    for region, stride in strides.items():
        assert re.search(rf"\| `{region}` \| .* \| {stride} \|$", memmap.table(), flags=re.M), region
    names = [name for name, *_ in header_macros(cfg)]
    assert len(names) == len(set(names)) == header.count("#define ") - 1     # minus the guard


@pytest.mark.parametrize("name", PRESETS)
def test_markdown_lists_every_register_and_field(name):
    cfg = preset(name)
    regmap = accelerator_registers(cfg)
    page = markdown(cfg)
    for reg in regmap:
        row = next(line for line in page.splitlines() if line.startswith(f"| 0x{reg.offset:02x} |"))
        assert f"`{reg.name}`" in row and f"| {reg.access} |" in row
        assert row.count("|") - row.count("\\|") == 7          # six cells: no stray pipe
        for field in reg.fields:
            assert f"| `{field.name}` |" in page
    assert MemoryMap(cfg).table() in page


@pytest.mark.parametrize("name", PRESETS)
def test_header_compiles_and_agrees_with_the_map(name, tmp_path):
    compiler = _compiler()
    if compiler is None:
        pytest.skip("no C compiler (cc, gcc or clang) on PATH")
    cfg = preset(name)
    header_path, page_path = write_register_files(cfg, tmp_path, f"spattn_{name}")
    assert header_path.name == f"spattn_{name}_regs.h" and page_path.read_text() == markdown(cfg)
    # every macro equals its Python value, checked by the compiler; included twice for the guard
    asserts = [f'_Static_assert({macro} == {value}ull, "{macro}");'
               for macro, value, _, _ in header_macros(cfg)]
    source = tmp_path / "use.c"
    source.write_text("\n".join([
        f'#include "{header_path.name}"',
        f'#include "{header_path.name}"',
        "#include <stdint.h>",
        *asserts,
        '_Static_assert(SPATTN_ID_VALUE == 0x53504154u, "ID");',
        '_Static_assert((SPATTN_STATUS_ERR_MEMORY_BIT >> SPATTN_STATUS_ERR_MEMORY_SHIFT) == 1u, "bit");',
        '_Static_assert(((SPATTN_SHAPE_VALUE & SPATTN_SHAPE_MAX_TOKENS_MASK)'
        ' >> SPATTN_SHAPE_MAX_TOKENS_SHIFT) == SPATTN_MAX_TOKENS, "shape");',
        '_Static_assert(SPATTN_TOKEN_KEEP_RESET == (1u << SPATTN_KEEP_FRAC), "keep");',
        '_Static_assert(SPATTN_REG_PE_BUSY_CYCLES == 0x58, "last register");',
        "uint32_t start_first(void) { return SPATTN_CTRL_START_BIT | SPATTN_CTRL_FIRST_BIT; }",
        "uint32_t mem_k_row(uint32_t head, uint32_t row) {",
        "    return SPATTN_MEM_K_MSB_OFFSET + (head * SPATTN_MAX_TOKENS + row) * SPATTN_MEM_K_MSB_STRIDE;",
        "}",
        "",
    ]))
    result = subprocess.run([compiler, "-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror",
                             "-fsyntax-only", str(source)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
