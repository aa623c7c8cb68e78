# Two commands for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	# llama-cpp-python builds from source the first time (about 10 minutes on 2 cores);
	# pip caches the wheel, so later installs take seconds.
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install -q -e '.[local,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	cd examples && ../$(BIN)/corral run tickets.yaml --limit $(or $(ROWS),40)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .corral examples/.corral examples/out out
