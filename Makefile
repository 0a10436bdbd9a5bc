# Two commands on a fresh clone: `make run` (the cpu-mini grid on a local Ray and CIFAR-10) and
# `make test`. Both create the virtual environment .venv on first use (pip install -e ".[dev]"
# and the example plug-ins examples/aig_gates and examples/blockdrop, which the tests run like any
# method).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_ROOT ?= $(or $(PACT_DATA_ROOT),data/cifar10)
PRESET ?= cpu-mini
DOWNLOAD ?= 0

.PHONY: run test test-fast lint format install clean-venv wheelhouse gpu-check

$(BIN)/.installed: pyproject.toml examples/aig_gates/pyproject.toml examples/blockdrop/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]" -e examples/aig_gates -e examples/blockdrop
	touch $@

install: $(BIN)/.installed

STUDY ?= runs/grid/$(PRESET)

# The main job: the grid (resumed if interrupted), then its report; prints where report.md is.
run: $(BIN)/.installed
	$(BIN)/pact-harness grid --preset $(PRESET) --data-root $(DATA_ROOT) --out $(STUDY) \
		$(if $(filter 1,$(DOWNLOAD)),--download,) --resume
	$(BIN)/pact-harness report $(STUDY) --out $(STUDY)/report > /dev/null
	@echo "report: $(STUDY)/report/report.md"

# The full suite (CI runs it): lint, format check, the import layers, every test.
test: lint
	$(BIN)/pytest -q

# The edit loop: lint and the tests not marked slow or ray (a minute or two).
test-fast: lint
	$(BIN)/pytest -q -m "not slow and not ray"

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean-venv:
	rm -rf $(VENV)

# A lent GPU machine (docs/gpu.md). `make wheelhouse` here (it needs the package registries):
# the wheels that machine lacks, at most 60 MiB, into wheelhouse/ (git-ignored; carry it).
WHEELHOUSE ?= wheelhouse
wheelhouse: $(BIN)/.installed
	$(BIN)/python -m tools.wheelhouse build --out $(WHEELHOUSE)

# There, from the repository root: every GPU check in at most 8 minutes; JSON and log into
# $$OUT (or GPU_CHECK_OUT). Without CUDA: one line, exit 0. Uses .venv when there is one.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	$(GPU_PYTHON) -m tools.gpu_check --wheelhouse $(WHEELHOUSE) $(if $(GPU_CHECK_OUT),--out $(GPU_CHECK_OUT),)
