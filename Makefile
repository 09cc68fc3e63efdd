# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= ../shared/data
OUT_DIR ?= out/demo

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.installed
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m experiments.reconstruct_demo --data_dir=$(DATA_DIR) --out_dir=$(OUT_DIR)

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q tests

bench: $(VENV)/.dev-installed
	$(BIN)/python -m benchmarks.reconstruct --data_dir=$(DATA_DIR)

clean:
	rm -rf $(VENV) out .pytest_cache
