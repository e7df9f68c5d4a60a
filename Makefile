# vitlab: `make test` and `make demo` set everything up from nothing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# PyTorch builds that install from this project's package index; override on other platforms,
# e.g. `make test TORCH="torch==2.9.1 torchvision==0.24.1"` on aarch64.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.vitlab-installed

export OMP_NUM_THREADS ?= 2

.PHONY: test demo lint format setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard benchmarks)
	$(BIN)/ruff format --check src tests $(wildcard benchmarks)

format: $(STAMP)
	$(BIN)/ruff check --fix src tests $(wildcard benchmarks)
	$(BIN)/ruff format src tests $(wildcard benchmarks)

test: lint
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/vitlab models --paper

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache src/*.egg-info
