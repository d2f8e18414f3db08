# Every target bootstraps what it needs: a fresh clone needs only `make serve` or `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH ?= $(shell uname -m | sed -e 's/aarch64/arm64/')
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: help venv node serve test test-fast lint integration reliability fuzz layer synth localstack-up localstack-down deploy-local bench clean

help: ## Show the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# `make serve` installs only the `serve` extra (onnxruntime, numpy, onnx: about 200 MB, under half a
# minute); the first target that needs more (`make test`, `lint`, ...) adds the `dev` extra to the same venv.
$(VENV)/.serve-installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing what serving needs into $(VENV) (the serve extra) ..."
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[serve]'
	@touch $@

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing every Python dependency into $(VENV) (the dev extra; a few minutes the first time) ..."
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@ $(VENV)/.serve-installed

venv: $(VENV)/.installed ## Create the virtualenv with every Python dependency

node_modules/.installed: package.json
	@bash scripts/check-node.sh
	npm install --no-audit --no-fund --loglevel=error
	@touch $@

# node comes before venv in the targets below: a too-old Node fails at once, not after the venv's install.
node: node_modules/.installed ## Install the pinned CDK command-line tools (needs Node >= 20; see scripts/check-node.sh)
	@bash scripts/check-node.sh --quiet

serve: $(VENV)/.serve-installed ## Serve the bundled default model (or STORE=...) on http://$(HOST):$(PORT)
	$(VENV)/bin/modelship serve --host $(HOST) --port $(PORT) $(if $(STORE),--store $(STORE),)

test: venv node ## Run the whole test suite: lint, types, unit, functional, infra, edge, integration
	bash scripts/test.sh all

test-fast: venv ## Unit and functional tests, without those marked slow or network
	bash scripts/test.sh fast

lint: venv ## ruff, mypy (strict on modelship) and the import contracts (lint-imports)
	bash scripts/test.sh lint

integration: node venv ## LocalStack integration tests: fresh LocalStack, deploy, test, tear down
	bash scripts/test.sh integration

reliability: venv ## Reliability and security suite with figures (bounded); writes docs/reliability.md
	bash scripts/reliability.sh

fuzz: venv ## Long property-based fuzzing of the parsers (about 35 minutes; HYPOTHESIS_MAX_EXAMPLES=N to change)
	HYPOTHESIS_PROFILE=long $(PY) -m pytest tests/reliability -k fuzz -p no:cacheprovider

layer: venv ## Build the onnxruntime + numpy Lambda layer: make layer ARCH=x86_64|arm64
	$(PY) layers/build_layer.py --arch $(ARCH)

synth: node venv ## Synthesize the CDK app offline into cdk.out/ (full log: build/synth.log)
	@bash scripts/synth.sh

localstack-up: ## Start LocalStack on 127.0.0.1:4566 on the host (no Docker); idempotent
	bash scripts/localstack.sh up

localstack-down: ## Stop LocalStack and its Lambda processes; idempotent
	bash scripts/localstack.sh down

deploy-local: node venv ## Deploy the CDK app to LocalStack, push the default model, write .localstack/env.sh
	@bash scripts/deploy-local.sh

$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[bench]'
	@touch $@

bench: $(VENV)/.bench-installed ## Every benchmark series of issue 13 (<15 min); writes docs/benchmarks.md (BENCH_ARGS=--quick)
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make bench: installing wrk (Debian's package) for the HTTP series"; \
	    apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; } \
	      || echo "make bench: could not install wrk; the HTTP series will say so (apt-get install wrk)"; \
	  else echo "make bench: wrk is missing (apt-get install wrk); the HTTP series will be skipped"; fi; }
	BENCH_COMMAND="make bench$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" $(PY) bench/run.py $(BENCH_ARGS)

clean: ## Remove build outputs (keeps the virtualenvs)
	rm -rf cdk.out layers/build build dist .pytest_cache .mypy_cache .ruff_cache
