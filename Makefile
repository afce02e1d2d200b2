# Every target installs what is missing first, idempotently. `make check` runs what CI runs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
UV := .uv/bin/uv
export PYTHONPATH := $(CURDIR):$(CURDIR)/generated

.PHONY: install run test test-fast lint protos protos-check check bench fuzz chaos services upgrade clean

$(STAMP): pyproject.toml uv.lock scripts/install.sh
	scripts/install.sh
	touch $(STAMP)

install: $(STAMP)

## Starts Loom all-in-one on embedded defaults (SQLite, a nats-server child, simulated hosts).
run: install
	$(VENV)/bin/loom up

## Starts the services the tests use (PostgreSQL; libvirtd for real guests), then runs every test.
test: install services
	$(PY) -m pytest -q -p no:cacheprovider --durations=40 $(PYTEST_ARGS)

## What needs neither libvirtd nor a whole running stack: a few minutes, for the edit-test loop.
test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow and not qemu" $(PYTEST_ARGS)

services: install
	scripts/services.sh

## Schemathesis against a running Loom: at least 10,000 generated requests, none may get a 5xx.
fuzz: install services
	LOOM_FUZZ_EXAMPLES=120 $(PY) -m pytest -q -s -p no:cacheprovider tests/e2e/test_fuzz.py

## Faults injected into Loom running as separate processes (tests/chaos at full size); each
## scenario's figures go to bench/results/chaos-<time>.json (see docs/reliability.md).
chaos: install services
	LOOM_CHAOS_SCALE=full LOOM_CHAOS_REPORT=bench/results/chaos-$$(date -u +%Y%m%dT%H%M%SZ).json \
		$(PY) -m pytest -q -p no:cacheprovider tests/chaos

lint: install
	$(UV) lock --check --quiet
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/buf lint
	scripts/check_breaking.sh

protos: install
	scripts/gen_protos.sh

## Fails when generated/ differs from what protos/ produce.
protos-check: install
	scripts/check_generated.sh

check: lint protos-check test

bench: install services
	$(PY) -m bench $(BENCH_ARGS)

## Upgrades one locked dependency (PACKAGE=name; PACKAGE=all for every one), installs it and
## regenerates generated/; commit uv.lock and generated/ together.
upgrade: install
	@test -n "$(PACKAGE)" || { echo "usage: make upgrade PACKAGE=<name>|all" >&2; exit 2; }
	$(UV) lock $(if $(filter all,$(PACKAGE)),--upgrade,--upgrade-package $(PACKAGE))
	scripts/install.sh
	scripts/gen_protos.sh

clean:
	rm -rf .loom .pytest_cache .mypy_cache .ruff_cache
