# Two commands do all set-up on a fresh machine:  make demo  |  make test
# torch is installed first, pinned to the CPU wheel; any other spec pulls GBs of CUDA wheels.
# On a GPU machine: make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[assets,test]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/mdistill run configs/default.yaml

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q --durations=15 tests

clean:
	rm -rf $(VENV) runs
