# Two commands on a fresh machine:
#   make demo   -- install kquant and run the main job on the bundled sample
#   make test   -- install what the tests need and run them
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

# the main job: the quantize-image Prefect flow, in-process (ephemeral Prefect API, no
# server to start); `$(BIN)/kquant demo` runs the same job without Prefect
demo: install
	$(BIN)/python -m flows.quantize --demo --out kquant-demo

test: install-test
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) kquant-demo *.egg-info
