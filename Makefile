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

.PHONY: install main test test-fast bench
install: $(VENV)/.installed

main: install
	mlflow run . -e main --env-manager local --experiment-name towerops

test: install
	python -m pytest tests

test-fast: install
	python -m pytest tests -m "not slow"

bench: install
	python bench/train.py
