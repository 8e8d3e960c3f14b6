# Two commands on a fresh machine:
#   make demo   -- install kquant (with its Prefect flows) and run the main job on the bundled sample
#   make test   -- install what the tests need and run them
# and, for whoever changes the code:
#   make lint       -- ruff (lint and format), mypy on kquant/, import contracts
#   make test-fast  -- the tests not marked slow, stopping at the first failure
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test test-fast lint install install-flows install-test install-lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# the library and the `kquant` command line (what a dask worker needs)
install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-flows: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[flows]'

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

install-lint: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[lint]'

# the main job: the quantize-image Prefect flow, in-process (ephemeral Prefect API, no
# server to start); `$(BIN)/kquant demo` runs the same job without Prefect
demo: install-flows
	$(BIN)/python -m flows.quantize --demo --out kquant-demo

test: install-test
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

test-fast: install-test
	$(BIN)/python -m pytest -q -x -m "not slow" $(PYTEST_ARGS)

lint: install-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) kquant-demo *.egg-info
