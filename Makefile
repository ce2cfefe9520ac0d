# kimi-deploy — every target sets up what it needs; `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
KD := $(BIN)/kimi-deploy
HARDWARE ?=
PLAN ?= plan.json
export PYTHONUNBUFFERED := 1

.PHONY: help setup test test-fast lint plan inventory

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

inventory: setup ## probe this node (GPUs, CPU, RAM, NUMA, disk, network) and print its hardware profile
	$(KD) inventory

plan: setup ## plan for this machine (or HARDWARE=hardware/h200x8.yaml); writes $(PLAN)
	@if [ -n "$(HARDWARE)" ]; then $(KD) plan --hardware $(HARDWARE) -o $(PLAN); \
	else $(KD) inventory -o .kimi-deploy/this-node.yaml && $(KD) plan --hardware .kimi-deploy/this-node.yaml -o $(PLAN); fi

# --- up / down / check / demo / bench-up (deploy/launch.py, deploy/demo.py) ----------------------------------
RENDERED ?= rendered
.PHONY: up down status check demo bench-up

up: setup ## start the rendered engine on verified weights, wait for /health 200 (SYSTEMD=1: as a systemd unit)
	$(KD) up --plan $(PLAN) --rendered $(RENDERED) $(if $(SYSTEMD),--systemd)

down: setup ## stop the engine (SIGTERM to its process group, SIGKILL after the grace period); idempotent
	$(KD) down

status: setup ## is the engine running and ready?
	$(KD) status

check: setup ## conformance checks against what $(PLAN) deploys (or URL=http://host:port MODEL=name)
	$(KD) check $(if $(URL),--url $(URL) --model $(MODEL),--plan $(PLAN))

demo: ## the whole pipeline for real on a small model (Gemma 3 270M on llama-server, CPU); fine as a first command
	@echo "==> set-up: virtualenv $(VENV) with the toolkit and its test tools (first time: a few minutes)"
	@$(MAKE) --no-print-directory setup
	$(KD) demo

bench-up: setup ## readiness-detection overhead of `up` (first 200 -> `up` returns) over runs of the demo; goal <= 0.3 s
	$(BIN)/python bench/bench_up.py

# --- download / verify / mirror / bench-download (deploy/download.py, deploy/lockfile.py, deploy/mirror.py) --
MIRROR_DIR ?= weights
MIRROR_PORT ?= 8090
.PHONY: download verify mirror bench-download

download: setup ## fetch the plan's weights (ENDPOINT=http://head:8090 for a mirror), write weights.lock, verify
	$(KD) download --plan $(PLAN) $(if $(ENDPOINT),--endpoint $(ENDPOINT)) $(if $(DEST),--dest $(DEST))

verify: setup ## re-hash the plan's weights (or DIR=...) against weights.lock; corrupt files go to .quarantine/
	$(KD) verify $(DIR) --plan $(PLAN)

mirror: setup ## serve staged/downloaded weights in MIRROR_DIR to other nodes (HF_ENDPOINT=http://this-host:MIRROR_PORT)
	$(KD) mirror serve $(MIRROR_DIR) --host 0.0.0.0 --port $(MIRROR_PORT)

bench-download: setup ## our download + verification vs plain `hf download` from the same local mirror; median ratio
	$(BIN)/python bench/bench_download.py $(BENCH_ARGS)
