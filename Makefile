# The two commands of the README:
#   make run    set up .venv (if needed) and run the whole pipeline with configs/default.toml
#   make test   set up .venv (if needed), lint, and run the whole test suite
# Offline: export MNIST_MIRROR=/path/to/mnist (the four IDX .gz files) first.
#
# make test also builds .venv-runtime, holding only the core dependencies (numpy, onnxruntime,
# Pillow; no TensorFlow), and runs the runtime's tests and CLI there against the export bundle
# of the smoke run that the main test suite writes to build/smoke-run.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNTIME_VENV ?= .venv-runtime
RT_PY := $(RUNTIME_VENV)/bin/python
RT_STAMP := $(RUNTIME_VENV)/.installed
SMOKE_RUN := build/smoke-run
RUNTIME_TESTS := tests/test_runtime_inputs.py tests/test_runtime_bundle.py tests/test_runtime_cli.py

ARGS ?=

.PHONY: run test test-runtime lint venv runtime-venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train,dev]"
	touch $(STAMP)

# the runtime-only environment: a non-editable install of the package without extras
runtime-venv: $(RT_STAMP)

$(RT_STAMP): pyproject.toml $(wildcard export/*.py)
	test -x $(RT_PY) || $(PYTHON) -m venv $(RUNTIME_VENV)
	$(RT_PY) -m pip install --quiet --upgrade pip
	$(RT_PY) -m pip install --quiet . pytest
	touch $(RT_STAMP)

run: $(STAMP)
	$(PY) run_pipeline.py $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint $(RT_STAMP)
	rm -rf $(SMOKE_RUN)
	SMOKE_RUN_DIR=$(SMOKE_RUN) $(PY) -m pytest
	$(MAKE) --no-print-directory test-runtime

# -P: the repository is not put on sys.path, so `import export` is the installed package
test-runtime: $(RT_STAMP)
	@if $(RT_PY) -c "import tensorflow" 2>/dev/null; then \
		echo "error: tensorflow is importable in $(RUNTIME_VENV)"; exit 1; fi
	@echo "$(RUNTIME_VENV): tensorflow is not importable, as intended"
	EXPORT_RUN=$(SMOKE_RUN) $(RT_PY) -P -m pytest -p no:cacheprovider $(RUNTIME_TESTS)

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) $(SMOKE_RUN) .pytest_cache .ruff_cache
