# Service365 — operator's entry points. `make help` lists them.
#
# Adding a service: append it to SERVICES and add its processes to the Procfile.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

SERVICES := intake dispatch scoring notify feed
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KEYS_DIR ?= var/keys

export SERVICES

# Local development defaults for `make run` / `make up` (DESIGN.md: demo data for the township).
# In production the services refuse the dev login and demo data, so these are not set there.
APP_ENV ?= development
export APP_ENV
ifneq ($(APP_ENV),production)
run up prepare: export WECHAT_MODE ?= dev
run up prepare: export DEMO_DATA ?= true
# The demo password (DEMO_PASSWORD, default demo365) is 7 characters; production keeps 8.
run up prepare: export PASSWORD_MIN_LENGTH ?= 6
endif

.PHONY: help venv keys prepare run up down test lint format clean-metrics bench bench-smoke

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

venv: $(STAMP) ## create .venv and install the project with its dev tools

keys: $(STAMP) ## make the development JWT key pair under var/keys (KEYS_DIR=...) if absent
	$(PY) -m shared.cli keys --dir $(KEYS_DIR)

prepare: $(STAMP) ## keys, migrations and demo data (not in production) for every service
	scripts/prepare.sh

run: prepare ## run every service in the foreground (Ctrl-C stops them)
	$(VENV)/bin/honcho start --no-colour -f Procfile

up: prepare ## run every service in the background; returns when every /readyz is 200
	scripts/up.sh

down: ## stop what `make up` started
	scripts/down.sh

test: $(STAMP) ## the whole test suite (needs PostgreSQL and RabbitMQ; see README)
	$(VENV)/bin/pytest --durations=30

bench: $(STAMP) ## the benchmark suite (issue 11): table + bench/results.json (REPEATS=3, ONLY=...)
	$(PY) -m bench.run --repeats $(or $(REPEATS),3) $(if $(ONLY),--only $(ONLY))

bench-smoke: $(STAMP) ## the benchmark suite at small sizes, once each: checks it works, not speed
	$(PY) -m bench.run --smoke $(if $(ONLY),--only $(ONLY))

lint: $(STAMP) ## ruff check + ruff format --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean-metrics: ## remove metric files of processes that are gone
	@for dir in var/metrics/*/; do \
	  [ -d "$$dir" ] || continue; \
	  PROMETHEUS_MULTIPROC_DIR=$$dir $(PY) -c \
	    'from shared.metrics import clean_stale_files as c; print(c(), "stale files removed")'; \
	done
