# shardworld — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install demo test lint typecheck unit bench bench-quick warmup clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' | expand -t 16

install: $(STAMP)  ## create .venv and install shardworld with test and benchmark extras

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "shardworld needs Python >= 3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $(STAMP)

warmup: install  ## compile every numba kernel into the on-disk cache
	$(BIN)/shardworld warmup

demo: install warmup  ## run the arena (zone + WebSocket gateway on 127.0.0.1:7700) with 300 bots
	$(BIN)/shardworld run zones/arena --dev --bots 300

lint: install  ## ruff lint and format check
	$(BIN)/ruff check src tests benchmarks zones
	$(BIN)/ruff format --check src tests benchmarks zones

typecheck: install  ## mypy --strict over the package
	$(BIN)/mypy

unit: install  ## the pytest suite only
	$(BIN)/pytest -q

test: lint typecheck unit  ## everything CI runs: lint, types, tests

bench: install warmup  ## every benchmark, full size (slow: minutes)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

bench-quick: install warmup  ## every benchmark with --quick (about a minute each)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
