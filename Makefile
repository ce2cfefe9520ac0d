# kimi-deploy — every target sets up what it needs; `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
KD := $(BIN)/kimi-deploy
HARDWARE ?=
PLAN ?= plan.json
export PYTHONUNBUFFERED := 1

.PHONY: help setup test test-fast lint plan

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

$(BIN)/kimi-deploy: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,ansible]'
	@touch $@

setup: $(BIN)/kimi-deploy ## create the venv and install the toolkit with its test tools

test: setup ## run the whole test suite (slow end-to-end tests included)
	$(BIN)/python -m pytest -q

test-fast: setup ## run the fast tests only
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup ## ruff
	$(BIN)/ruff check deploy tests
	$(BIN)/ruff format --check deploy tests

plan: setup ## plan for this machine (or HARDWARE=hardware/h200x8.yaml); writes $(PLAN)
	@if [ -n "$(HARDWARE)" ]; then $(KD) plan --hardware $(HARDWARE) -o $(PLAN); \
	else $(KD) inventory -o .kimi-deploy/this-node.yaml && $(KD) plan --hardware .kimi-deploy/this-node.yaml -o $(PLAN); fi
