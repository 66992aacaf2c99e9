# sync_assets — every target bootstraps .venv from pyproject.toml first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install dev demo test validate bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## Dagster UI + daemon on embedded Postgres, syncing from the real ESI.
dev: install
	$(BIN)/sync-assets dev

## The same, fully offline, against the ESI sandbox.
demo: install
	$(BIN)/sync-assets demo

## The whole test suite (real Postgres, sandbox over HTTP, Dagster end to end).
test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

validate: install
	$(BIN)/dagster definitions validate

## Benchmarks (not part of `make test`); results go to bench/RESULTS.md.
bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/market_orders.py --write bench/RESULTS.md

clean:
	rm -rf $(VENV) .dagster_home .pytest_cache
