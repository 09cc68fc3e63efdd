# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= ../shared/data
OUT_DIR ?= out/demo

.PHONY: demo demo-standard figures test bench bench-accelerator clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# `pip install -e .` also compiles the CPU eigensolver (setup.py; needs a C++17 compiler).
NATIVE_SOURCES := setup.py $(wildcard menet_jax/reconstruct/*.cc menet_jax/reconstruct/*.inc)
$(VENV)/.installed: requirements.txt pyproject.toml $(NATIVE_SOURCES) | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt requirements-tfds.txt $(VENV)/.installed
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

$(VENV)/.bench-installed: requirements-bench.txt requirements-reference.txt $(VENV)/.dev-installed
	$(BIN)/python -m pip install -q -r requirements-bench.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-reference.txt
	touch $@

# The quick CIFAR-10 run: build the ME training set, train the small CNN, report clean
# accuracy through the defense, then attack it (gray-box PGD, BPDA-PGD, BPDA+EOT) with the
# sanity checks. A second `make demo` resumes or reuses that run.
demo: $(VENV)/.installed
	$(BIN)/python -m experiments.cifar10 --flagfile=experiments/flags/quick.flags --data_dir=$(DATA_DIR)
	$(BIN)/python -m experiments.cifar10 --flagfile=experiments/flags/quick.flags --data_dir=$(DATA_DIR) \
	  --flagfile=experiments/flags/eval/quick.flags

# AutoAttack's ensemble (the "auto" preset) on the quick run of `make demo`, with its figure.
demo-standard: demo
	$(BIN)/python -m experiments.cifar10 --flagfile=experiments/flags/quick.flags --data_dir=$(DATA_DIR) \
	  --flagfile=experiments/flags/eval/quick_standard.flags

figures: $(VENV)/.installed
	$(BIN)/python -m experiments.reconstruct_demo --data_dir=$(DATA_DIR) --out_dir=$(OUT_DIR)

# Two workers (pytest-xdist), one test file each at a time: module fixtures are built once.
# The suite is mostly single-threaded XLA compilation, so two cores run it in about half the time.
TEST_WORKERS ?= 2
test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# Every benchmark, then one table of all their ratios (benchmarks/summary.py).
BENCH_OUT ?= out/bench
BENCH_SUMMARY = --summary_file=$(BENCH_OUT)/summary.jsonl
bench: $(VENV)/.bench-installed
	rm -f $(BENCH_OUT)/summary.jsonl
	$(BIN)/python -m benchmarks.reconstruct --data_dir=$(DATA_DIR) $(BENCH_SUMMARY)
	$(BIN)/python -m benchmarks.eigh_route --data_dir=$(DATA_DIR) $(BENCH_SUMMARY)
	$(BIN)/python -m benchmarks.train --data_dir=$(DATA_DIR)
	$(BIN)/python -m benchmarks.attack --data_dir=$(DATA_DIR) $(BENCH_SUMMARY)
	$(BIN)/python -m benchmarks.ride --data_dir=$(DATA_DIR) $(BENCH_SUMMARY)
	$(BIN)/python -m benchmarks.conv_loop $(BENCH_SUMMARY)
	$(BIN)/python -m benchmarks.summary $(BENCH_OUT)/summary.jsonl

# The papers' runs at their real shapes on whatever backend JAX finds (README: install the
# accelerator's jax first): throughput, peak device memory and projected wall time of each.
bench-accelerator: $(VENV)/.installed
	$(BIN)/python -m benchmarks.paper_scale --out=$(BENCH_OUT)/paper_scale

clean:
	rm -rf $(VENV) out runs .pytest_cache
