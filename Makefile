# Every target installs what is missing first, idempotently. `make check` runs what CI runs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR):$(CURDIR)/generated

.PHONY: install run test lint protos protos-check check bench services clean

$(STAMP): pyproject.toml scripts/install.sh
	scripts/install.sh
	touch $(STAMP)

install: $(STAMP)

## Starts Loom all-in-one on embedded defaults (SQLite, a nats-server child, simulated hosts).
run: install
	$(VENV)/bin/loom up

## Starts the services the tests use (PostgreSQL; libvirtd for real guests), then runs every test.
test: install services
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

services: install
	scripts/services.sh

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/buf lint

protos: install
	scripts/gen_protos.sh

## Fails when generated/ differs from what protos/ produce.
protos-check: install
	scripts/check_generated.sh

check: lint protos-check test

bench: install services
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf .loom .pytest_cache .mypy_cache .ruff_cache
