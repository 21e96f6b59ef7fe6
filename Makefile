# celery-kafka-bridge: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
BENCH_EVENTS ?= 200000
CHAOS_PROFILE ?= short

.PHONY: install services test test-fast lint demo bench chaos clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	rm -f $(VENV)/.installed-* && touch $@

services:
	@scripts/ensure-services

test: install services
	$(BIN)/python -m pytest

# Unit and fast integration tests: under two minutes.
test-fast: install services
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check bridge tests harness bench chaos
	$(BIN)/ruff format --check bridge tests harness bench chaos
	$(BIN)/mypy

demo: install services
	$(BIN)/celery-kafka-bridge demo

bench: install services
	BENCH_EVENTS=$(BENCH_EVENTS) $(BIN)/python -m bench.run

chaos: install services
	$(BIN)/python -m chaos.run --$(CHAOS_PROFILE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
