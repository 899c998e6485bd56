# The MES order service. `make up` runs the whole topology on this machine; `make test` runs every test;
# `make dev` runs the app alone on an embedded SQLite. All work on a fresh Debian 12 machine as root:
# missing Debian packages and the virtualenv are installed first.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
DEV_DB := var/mes.db
TOPOLOGY ?= split
# Debian packages of the topology (`make up`); the tests start the same programs in temporary
# folders, and drive the operator UI in Chromium; nftables checks the firewall role's rules.
STACK_PACKAGES := python3-venv postgresql-15 etcd-server etcd-client pgbackrest pgpool2 haproxy redis-server prometheus prometheus-alertmanager \
	prometheus-node-exporter prometheus-postgres-exporter prometheus-redis-exporter wrk gcc
TEST_PACKAGES := $(STACK_PACKAGES) chromium vagrant nftables
# The deploy test boots Debian hosts in systemd-nspawn containers on this machine.
DEPLOY_TEST_PACKAGES := debootstrap systemd-container socat iproute2 openssh-client
DEV_PACKAGES := python3-venv

.PHONY: up down status reset dev test test-suite test-deploy packages-deploy-test test-fast bench bench-ledger bench-topology bench-failover bench-webhooks venv packages-dev packages-test packages-stack clean

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

packages-deploy-test:
	$(call ensure_packages,$(DEPLOY_TEST_PACKAGES))

packages-stack:
	$(call ensure_packages,$(STACK_PACKAGES))

$(BIN)/activate: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# Patroni runs as the postgres user: its virtualenv is built on Debian's /usr/bin/python3, which that
# user can run (any interpreter of root's own may not be).
PATRONI_VENV := .venv-patroni
$(PATRONI_VENV)/bin/patroni: requirements-patroni.txt
	/usr/bin/python3 -m venv $(PATRONI_VENV)
	$(PATRONI_VENV)/bin/pip install -q --upgrade pip
	$(PATRONI_VENV)/bin/pip install -q -r requirements-patroni.txt
	touch $@

venv: $(BIN)/activate $(PATRONI_VENV)/bin/patroni

## The whole topology as processes on loopback (TOPOLOGY=single: the "before" topology).
up: packages-stack venv
	$(BIN)/python -m stack up --topology $(TOPOLOGY)

down: venv
	$(BIN)/python -m stack down

status: venv
	$(BIN)/python -m stack status

reset: venv
	$(BIN)/python -m stack reset

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

## Every test: the suite, then the deploy test (root; 44 to 61 minutes in all).
test: test-suite test-deploy

## Every test but the deploy test, on SQLite and on a real PostgreSQL 15 that the tests start themselves.
## Two workers, each test file on one (its stack or servers with it): the tests wait on real components
## much of the time, so two halve the wall time on 2 cores. WORKERS=0 runs them in this process.
WORKERS ?= 2
test-suite: packages-test venv
	$(BIN)/python -m pytest -p no:cacheprovider --durations=25 $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadfile)

## The playbooks against Debian 12 hosts in systemd-nspawn containers on this machine (root, 28 to 43 min):
## site.yml from bare hosts twice, the app through HAProxy, a rolling deploy under traffic, failover
## and rejoin by pg_rewind, switchover, backups, a point-in-time restore onto a fresh host, a replica
## restored from the backup repository and added under traffic.
test-deploy: packages-deploy-test venv
	$(BIN)/python -m pytest -p no:cacheprovider -s tests/deploy

## Quick loop while editing: SQLite only, no browser, no topology (a minute or two).
test-fast: venv
	MES_TEST_BACKENDS=sqlite $(BIN)/python -m pytest -p no:cacheprovider -m "not browser and not topology" -x -q

## Server time of the orders queue and the API list at 10,000 and 1,000,000 orders (see BENCHMARKS.md).
bench: packages-test venv
	$(BIN)/python bench/queue_bench.py

## "My work" and the supervisor's ledger with a year of production records, at 10,000 and 1,000,000 orders.
bench-ledger: packages-test venv
	$(BIN)/python bench/ledger_bench.py

## Split against single topology: isolation, shedding, status reads, read offload (see BENCHMARKS.md).
bench-topology: packages-stack venv
	$(BIN)/python bench/topology_bench.py

## What each database fault costs (host loss, crash, hang, lost standby, ...) and synchronous commit's price.
bench-failover: packages-stack venv
	$(BIN)/python bench/failover_bench.py

## Webhook delivery: events per second with 1 and 2 workers, status change to receipt, a slow receiver.
bench-webhooks: packages-stack venv
	$(BIN)/python bench/webhook_bench.py

clean:
	rm -rf $(VENV) $(PATRONI_VENV) var .pytest_cache src/*.egg-info
