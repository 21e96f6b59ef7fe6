PYTHON ?= .venv/bin/python
BENCH_EVENTS ?= 200000

.PHONY: install bench

install:
	python3 -m venv .venv
	$(PYTHON) -m pip install -q -e '.[dev]'

bench: install
	$(PYTHON) -m pip install -q -e '.[bench]'
	BENCH_EVENTS=$(BENCH_EVENTS) $(PYTHON) -m bench.run
