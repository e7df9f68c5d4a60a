# vitlab: `make test` and `make demo` set everything up from nothing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# PyTorch builds that install from this project's package index; override on other platforms,
# e.g. `make test TORCH="torch==2.9.1 torchvision==0.24.1"` on aarch64.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.vitlab-installed

export OMP_NUM_THREADS ?= 2

.PHONY: test demo study lint format setup clean fashion-mnist

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard benchmarks examples)
	$(BIN)/ruff format --check src tests $(wildcard benchmarks examples)
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff check --fix src tests $(wildcard benchmarks examples)
	$(BIN)/ruff format src tests $(wildcard benchmarks examples)

test: lint
	$(BIN)/python -m pytest -q

# The demo: a ViT trained from scratch on Fashion-MNIST (preset fashion_mnist_vit), then evaluated.
# Re-running it resumes (or just re-reports) the run in $(DEMO_RUN); `rm -rf $(DEMO_RUN)` retrains.
DEMO_RUN ?= runs/demo

demo: $(STAMP) fashion-mnist
	$(BIN)/vitlab train --config fashion_mnist_vit --download --out $(DEMO_RUN) --resume auto
	$(BIN)/vitlab eval --checkpoint $(DEMO_RUN)/last.safetensors --data fashion-mnist --download \
		--out $(DEMO_RUN)/eval
	@echo "demo run: $(DEMO_RUN) (report.json, curves.png, confusion.png, last.safetensors)"
	$(BIN)/vitlab inspect --checkpoint $(DEMO_RUN)/last.safetensors --data fashion-mnist --num-images 10 --out $(DEMO_RUN)/inspect

# A study of the paper's claims (`vitlab study --help`): by default the quick data-scaling one,
# ViT vs BiT ResNet vs hybrid on 1k/4k/16k Fashion-MNIST images (about 15 minutes on 2 cores).
# Re-running it continues where it stopped; `make study STUDY=transfer PRESET=full` runs another.
STUDY  ?= data-scaling
PRESET ?= quick

study: $(STAMP) fashion-mnist
	$(BIN)/vitlab study $(STUDY) --preset $(PRESET) --download

# Fashion-MNIST from Debian's dataset-fashion-mnist where apt is usable (root or sudo without a
# password); otherwise `vitlab train --download` fetches it through torchvision.
fashion-mnist:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
		S=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); export DEBIAN_FRONTEND=noninteractive; \
		$$S apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
		|| { $$S apt-get update -q >/dev/null && $$S apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
		|| echo "apt could not install dataset-fashion-mnist; it will be downloaded instead"; \
	else echo "apt is not usable here; Fashion-MNIST will be downloaded through torchvision"; fi

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache src/*.egg-info
