# The MES order service. `make dev` runs it on an embedded SQLite; `make test` runs every test.
# Both work on a fresh Debian 12 machine as root: missing Debian packages and the virtualenv are installed first.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
DEV_DB := var/mes.db
# Debian packages the tests need: PostgreSQL 15 and Redis (started by the tests in temporary folders),
# Chromium for the browser test, and venv support for Debian's own Python.
TEST_PACKAGES := postgresql-15 chromium python3-venv redis-server
DEV_PACKAGES := python3-venv

.PHONY: dev test test-fast bench venv packages-dev packages-test clean

define ensure_packages
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

packages-dev:
	$(call ensure_packages,$(DEV_PACKAGES))

packages-test:
	$(call ensure_packages,$(TEST_PACKAGES))

$(BIN)/activate: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

venv: $(BIN)/activate

## Run both pools on http://127.0.0.1:5000 with SQLite, a demo operator and demo API keys.
dev: packages-dev venv
	@mkdir -p var
	@export DATABASE_URL="sqlite:///$(CURDIR)/$(DEV_DB)"; \
	$(BIN)/mes migrate >/dev/null 2>&1 && \
	echo "== MES is starting on http://$(HOST):$(PORT)" && \
	echo "   operator UI: http://$(HOST):$(PORT)/operator/" && \
	echo "   public API:  http://$(HOST):$(PORT)/api/v1/  (OpenAPI: /api/v1/openapi.yaml)" && \
	LOG_LEVEL=WARNING $(BIN)/mes seed-demo | sed 's/^/   /' && \
	exec $(BIN)/mes run --host $(HOST) --port $(PORT)

## Every test, on SQLite and on a real PostgreSQL 15 that the tests start themselves.
test: packages-test venv
	$(BIN)/python -m pytest -p no:cacheprovider

## Quick loop while editing: SQLite only, no browser.
test-fast: venv
	MES_TEST_BACKENDS=sqlite $(BIN)/python -m pytest -p no:cacheprovider -m "not browser" -x -q

## Server time of the orders queue and the API list at 10,000 and 1,000,000 orders (see BENCHMARKS.md).
bench: packages-test venv
	$(BIN)/python bench/queue_bench.py

clean:
	rm -rf $(VENV) var .pytest_cache src/*.egg-info
