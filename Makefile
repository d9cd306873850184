# The two commands of the README:
#   make run    set up .venv (if needed) and run the whole pipeline with configs/default.toml
#   make test   set up .venv (if needed), lint, check the generated docs (bench/docs.py --check
#               on the committed results), and run the whole test suite
# Offline: export MNIST_MIRROR=/path/to/mnist (the four IDX .gz files) first.
#
# make test runs tests/pipeline, tests/models and tests/bench in .venv (they write the smoke run
# to build/smoke-run), then builds .venv-runtime, holding the runtime's dependencies only (numpy,
# onnxruntime, Pillow, and onnx for the edge kit; no TensorFlow), and runs tests/export there
# against that smoke run's export bundle.
#
# make browser-deps installs what the latent explorer's and the Node client's tests need:
# onnxruntime-web, playwright-core and onnxruntime-node from npm (npm ci, pinned by
# package-lock.json, no install scripts: onnxruntime-node's CPU binaries are in its package, its
# install script only fetches CUDA ones) and Debian's chromium (apt-get, as root, when
# /usr/bin/chromium is missing). No browser is downloaded.
# It builds .venv-beam too (the core runtime plus the beam and parquet extras, no TensorFlow:
# apache-beam pins protobuf below TensorFlow's) and runs the Beam scoring tests there.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNTIME_VENV ?= .venv-runtime
RT_PY := $(RUNTIME_VENV)/bin/python
RT_STAMP := $(RUNTIME_VENV)/.installed
SMOKE_RUN := build/smoke-run
# tests/ mirrors the packages: tests/export runs in the runtime-only environment (the one users
# install; its Beam tests in .venv-beam), the rest in .venv, where the smoke run is made first
RUNTIME_TESTS := tests/export --ignore=tests/export/test_beam.py
TRAINING_TESTS := tests --ignore=tests/export
NODE_STAMP := node_modules/.installed
BEAM_VENV ?= .venv-beam
BEAM_PY := $(BEAM_VENV)/bin/python
BEAM_STAMP := $(BEAM_VENV)/.installed
BEAM_TESTS := tests/export/test_beam.py

ARGS ?=

.PHONY: run test test-runtime test-beam lint docs-check venv runtime-venv beam-venv browser-deps chromium clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train,dev]"
	touch $(STAMP)

# the runtime-only environment: a non-editable install of the package without extras
runtime-venv: $(RT_STAMP)

$(RT_STAMP): pyproject.toml $(wildcard export/*.py export/*/*.py export/web/* export/node/*)
	test -x $(RT_PY) || $(PYTHON) -m venv $(RUNTIME_VENV)
	$(RT_PY) -m pip install --quiet --upgrade pip
	$(RT_PY) -m pip install --quiet ".[edge]" pytest hypothesis
	touch $(RT_STAMP)

browser-deps: $(NODE_STAMP) chromium

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { test "$$(id -u)" = 0 && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; } || \
		{ echo "error: npm is missing: install Node.js (apt-get install nodejs npm)"; exit 1; }
	npm ci --ignore-scripts --no-audit --no-fund
	touch $(NODE_STAMP)

chromium:
	@command -v chromium >/dev/null || { test "$$(id -u)" = 0 && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
		{ echo "error: chromium is missing: apt-get install chromium (as root)"; exit 1; }

# the scale-out environment: the runtime with the beam and parquet extras
beam-venv: $(BEAM_STAMP)

$(BEAM_STAMP): pyproject.toml $(wildcard export/*.py export/*/*.py)
	test -x $(BEAM_PY) || $(PYTHON) -m venv $(BEAM_VENV)
	$(BEAM_PY) -m pip install --quiet --upgrade pip
	$(BEAM_PY) -m pip install --quiet ".[beam,parquet]" pytest
	touch $(BEAM_STAMP)

run: $(STAMP)
	$(PY) run_pipeline.py $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# every figure of README.md and docs/ against the committed results (python -m bench.docs
# rewrites the pages from bench/results/)
docs-check: $(STAMP)
	$(PY) -m bench.docs --check

test: lint docs-check $(RT_STAMP) $(BEAM_STAMP) browser-deps
	rm -rf $(SMOKE_RUN)
	SMOKE_RUN_DIR=$(SMOKE_RUN) $(PY) -m pytest $(TRAINING_TESTS)
	$(MAKE) --no-print-directory test-runtime
	$(MAKE) --no-print-directory test-beam

# -P: the repository is not put on sys.path, so `import export` is the installed package
test-runtime: $(RT_STAMP) browser-deps
	@if $(RT_PY) -c "import tensorflow" 2>/dev/null; then \
		echo "error: tensorflow is importable in $(RUNTIME_VENV)"; exit 1; fi
	@echo "$(RUNTIME_VENV): tensorflow is not importable, as intended"
	EXPORT_RUN=$(SMOKE_RUN) $(RT_PY) -P -m pytest -p no:cacheprovider $(RUNTIME_TESTS)

# SCALEOUT_TESTS=1: the Beam tests must run here (in .venv they skip: Beam is not installed)
test-beam: $(BEAM_STAMP)
	EXPORT_RUN=$(SMOKE_RUN) SCALEOUT_TESTS=1 $(BEAM_PY) -P -m pytest -p no:cacheprovider $(BEAM_TESTS)

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) $(BEAM_VENV) $(SMOKE_RUN) node_modules .pytest_cache .ruff_cache
