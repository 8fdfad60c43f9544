# argofl: `make run` sets everything up and runs the flagship FedAvg experiment on this machine;
# `make test` sets everything up and runs lint, type checks and the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/fedavg-fmnist-torch.yaml
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install data browser run test lint typecheck unit compile bench clean images images-all

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[torch,tensorflow,dev]'
	touch $@

# Fashion-MNIST from Debian's package when we can install it; otherwise the loader downloads it.
data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	fi

# Debian's Chromium, for the test that opens an MLflow run link in a browser (it skips without one).
browser:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium)) >/dev/null \
			|| echo "warning: could not install chromium; the MLflow link browser test will skip (fail under CI=true)"; \
	fi

run: install data
	$(BIN)/argofl run $(CONFIG)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q -m "not slow"

test: install data browser lint typecheck
	$(BIN)/pytest -q

# Step images with the local Docker engine (images/build.sh; README, "Step images"). IMAGE_FLAGS passes
# options, e.g. IMAGE_FLAGS="--local-base --torch-wheels /opt/wheels --ca-bundle /etc/ssl/certs/ca-certificates.crt"
# where no registry is reachable. The GPU images build where their bases can be pulled.
IMAGE_FLAGS ?=
images:
	images/build.sh $(IMAGE_FLAGS) torch-cpu

images-all:
	images/build.sh $(IMAGE_FLAGS) torch-cpu tf-cpu torch-cuda tf-gpu

compile: install
	for c in configs/*.yaml; do $(BIN)/argofl compile $$c; done

bench: install data
	$(BIN)/python benchmarks/bench_rounds.py --target 1.15
	$(BIN)/python benchmarks/bench_rounds.py -p clients=50 -p rounds=3 --target 1.3
	$(BIN)/python benchmarks/bench_rounds.py configs/fedavg-fmnist-torch-blocks.yaml --no-floor \
		-p clients=4 -p min-clients=2 -p rounds=3 -p rounds-per-workflow=2 -p data-limit=600
	$(BIN)/python benchmarks/bench_clients.py --fanin 4
	$(BIN)/python benchmarks/bench_aggregate.py
	$(BIN)/python benchmarks/bench_checkpoint.py
	$(BIN)/python benchmarks/bench_training.py

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
