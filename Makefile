# sync_assets — every target bootstraps .venv from pyproject.toml first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install ui-test-deps dev demo test faults validate bench clean

# The UI test drives Debian's Chromium through Playwright (never Playwright's own browser download).
CHROMIUM   := /usr/bin/chromium
PLAYWRIGHT := playwright==1.65.2
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

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

## Debian's chromium (when missing) and the playwright package, for sync_assets_tests/test_ui.py.
ui-test-deps: install
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	@$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/python -m pip install --quiet '$(PLAYWRIGHT)'

## The whole test suite (real Postgres, sandbox over HTTP, Dagster end to end, the UI in Chromium).
# A private --basetemp: pytest prunes old numbered dirs under the shared default one, which can pull a
# data directory from under an embedded Postgres when two test sessions run on one machine.
# TEST_WORKERS parallel workers, each taking whole modules (their module fixtures stay in one process),
# the slow ones first (conftest); TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: install ui-test-deps
	$(BIN)/python -m pytest -q --durations=30 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
		--basetemp="$$(mktemp -d /tmp/sync-assets-tests.XXXXXX)" $(PYTEST_ARGS)

## The fault-injection suite alone (SIGKILL, Postgres restarts, 5xx/420/429 storms, bad input; part of
## `make test` too), then docs/RELIABILITY.md from its figures. SYNC_ASSETS_FAULT_SCALE=5 for a longer soak.
faults: install
	$(BIN)/python -m sync_assets_tests.faults.report

## Load every definition as Dagster does (`dg check defs`; needs no database and starts none).
validate: install
	$(BIN)/dg check defs

## Benchmarks (not part of `make test`); results go to bench/RESULTS.md.
bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run --write bench/RESULTS.md

## The demo deployment's runs and CPU per hour, before/after the automation rework (~2.2 h; MINUTES=15 for a shorter run).
bench-deployment: install
	$(BIN)/python -m bench.deployment --minutes $(or $(MINUTES),60) --warmup $(or $(WARMUP),5) --write bench/RESULTS.md

clean:
	rm -rf $(VENV) .dagster_home .pytest_cache
