# Two commands on a fresh machine (see README.md):
#   make main   - install into .venv, run the main job on the embedded default (SQLite + ./mlruns)
#   make test   - install into .venv (with test extras), run the whole test suite
PYTHON ?= python3
VENV   := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export TF_CPP_MIN_LOG_LEVEL ?= 2

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $@

# @tensorflow/tfjs for the Node TF.js test (pure JS, pinned by the lock file; npm's cache makes reruns offline)
TFJS_NODE := tests/ml/inference/tfjs_node
$(TFJS_NODE)/node_modules/.installed: $(TFJS_NODE)/package.json $(TFJS_NODE)/package-lock.json
	cd $(TFJS_NODE) && npm ci --prefer-offline --no-audit --no-fund --loglevel=error
	touch $@

# The edge client (edge/): @tensorflow/tfjs for the browser, pinned by its lock file
edge/node_modules/.installed: edge/package.json edge/package-lock.json
	cd edge && npm ci --prefer-offline --no-audit --no-fund --loglevel=error
	touch $@

# Debian's Chromium for the edge browser tests (Playwright drives /usr/bin/chromium; it never downloads a browser)
.PHONY: chromium
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)

.PHONY: install lint main test test-fast bench
install: $(VENV)/.installed $(TFJS_NODE)/node_modules/.installed edge/node_modules/.installed chromium

main: $(VENV)/.installed
	mlflow run . -e main --env-manager local --experiment-name towerops

# ruff (lint + import order) and the import-linter contracts (layers, no cycles): fail fast
lint: $(VENV)/.installed
	ruff check .
	lint-imports

test: install lint
	python -m pytest tests

test-fast: install lint
	python -m pytest tests -m "not slow"

bench: install
	python bench/train.py
