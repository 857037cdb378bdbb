# The README's two set-up commands are `make serve` and `make test`; each works
# on a fresh clone (it creates .venv and installs what it needs first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
ARGS ?=

.PHONY: serve test install install-test lint fmt bench bench-quick soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

# Stamp files: reinstall only when the packaging metadata changes.
$(VENV)/.installed: $(BIN)/python setup.cfg setup.py pyproject.toml
	$(BIN)/python -m pip install -q -e '.[metrics]'
	@touch $@

$(VENV)/.installed-test: $(BIN)/python setup.cfg setup.py pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	@touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

serve: $(VENV)/.installed
	$(BIN)/sse-engine serve --host $(HOST) --port $(PORT) $(ARGS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check engine tests benchmarks
	$(BIN)/ruff format --check engine tests benchmarks
	$(BIN)/mypy

fmt: $(VENV)/.installed-test
	$(BIN)/ruff format engine tests benchmarks
	$(BIN)/ruff check --fix engine tests benchmarks

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks

bench-quick: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks --quick

# A bounded soak (10 minutes; `make soak ARGS='--minutes 2'`): RSS, fds and tasks
# sampled under hundreds of clients, their slopes into benchmarks/RESULTS.md.
soak: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.soak $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
