# The two commands of the README:
#   make run    set up .venv (if needed) and run the whole pipeline with configs/default.toml
#   make test   set up .venv (if needed), lint, and run the whole test suite
# Offline: export MNIST_MIRROR=/path/to/mnist (the four IDX .gz files) first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

ARGS ?=

.PHONY: run test lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train,dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) run_pipeline.py $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
