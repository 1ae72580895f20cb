# Set-up and checks. `make demo` and `make test` each create .venv on first use:
# torch is installed first from constraints.txt (the CPU build on this machine class), so pip never
# pulls CUDA wheels; the library itself only asks for torch>=2.5.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $@

.PHONY: demo test lint format bench results wheel-check
demo: $(BIN)/.installed
	$(BIN)/pure-prune demo

lint: $(BIN)/.installed
	$(BIN)/ruff check pure_prune models tests bench
	$(BIN)/ruff format --check pure_prune models tests bench

# the suite runs with two threads and again with one: float results must not depend on the kernels
# torch picks for a thread count (docs/conventions.md, "Float comparisons in tests"); the slow tests
# (whole runs in subprocesses: end-to-end bench, reproduction, kill -9, torchrun) run in the first pass
test: lint
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"
	OMP_NUM_THREADS=1 $(BIN)/python -m tests.mutation.check
	$(MAKE) --no-print-directory wheel-check

# the newcomer's path: the built wheel in a fresh venv without the dev extras (.ci/wheel_check.sh)
wheel-check:
	PY=$(PY) .ci/wheel_check.sh

format: $(BIN)/.installed
	$(BIN)/ruff check --fix pure_prune models tests bench
	$(BIN)/ruff format pure_prune models tests bench

bench: $(BIN)/.installed
	$(BIN)/python bench/selection.py

# docs/results.md and docs/results/ (about 11 minutes on 2 cores; sections are cached in
# docs/results/*.json, so a rerun with the same settings only rebuilds the document)
results: $(BIN)/.installed
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python bench/reproduce.py
