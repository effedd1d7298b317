# Two commands do all set-up on a fresh machine:  make demo  |  make test
# torch is installed first, pinned to the CPU wheel; any other spec pulls GBs of CUDA wheels.
# On a GPU machine: make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-slow test-all install docs clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[assets,test]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/mdistill run configs/default.yaml

# make test: unit tests, the docs build (mkdocs --strict) + the core integration tests on real Ray (the
# end-to-end run, experiment tracking, a damaged teacher cache, corpus build, selection); make test-slow: the multi-minute scenarios (whole recipes,
# kill/resume, Tune resume, multi-node pools, a job on a 3-node cluster); make test-all (CI): both.
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q --durations=15 -m "not slow" tests

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -q --durations=15 -m slow tests

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -q --durations=25 tests

# The documentation site (docs/, mkdocs.yml) into site/; the config reference is generated from the config models.
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs site
