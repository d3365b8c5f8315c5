# Quartermaster: the one entry point. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ENV ?= dev
ENV_FILE := env/$(ENV).env
CARGO ?= cargo
BIN_DIR := $(or $(CARGO_TARGET_DIR),target)/debug
RUN_DIR := .qm/run/$(ENV)
SERVICES := api orchestrator finops router

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_%-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: dev
dev: ## Run every service in one process on embedded defaults (qm dev, data in ./.qm)
	$(CARGO) build -p qm-cli -p qm-worker-agent --bins
	$(BIN_DIR)/qm dev

.PHONY: build
build: ## Build every binary (debug)
	$(CARGO) build --workspace --bins

.PHONY: services
services: ## Make sure PostgreSQL, Redis and NATS (JetStream) run on loopback; install what is missing
	@scripts/ensure-services.sh

VENV := .venv
PYTHON_TOOLS := openapi-spec-validator==0.7.2 "moto[server]==5.1.*" schemathesis==4.32.5 openai==1.109.1 kubernetes-validate==1.37.0 "PyYAML==6.0.*"

.PHONY: venv
venv: $(VENV)/.installed ## Python tools the tests use (openapi-spec-validator, moto's EC2 server, schemathesis), in ./.venv
$(VENV)/.installed: Makefile
	python3 -m venv $(VENV) || { echo "error: python3 -m venv failed; install python3 and python3-venv" >&2; exit 1; }
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(PYTHON_TOOLS)
	touch $@

.PHONY: deny
deny: ## Dependency policy of deny.toml (licences, banned crates, sources), offline; installs cargo-deny if missing
	@command -v cargo-deny >/dev/null || { echo "installing cargo-deny (once, about 4 minutes)"; $(CARGO) install --locked cargo-deny; }
	$(CARGO) fetch --quiet
	$(CARGO) deny --offline check bans licenses sources

.PHONY: audit
audit: ## RustSec advisories for Cargo.lock (needs the network to fetch the advisory database)
	@command -v cargo-deny >/dev/null || $(CARGO) install --locked cargo-deny
	$(CARGO) deny check advisories

.PHONY: test
test: services venv deny console-tools ## fmt check, clippy -D warnings, dependency policy, and every test against the real services
	$(CARGO) fmt --all -- --check
	CARGO=$(CARGO) scripts/check-dependencies.sh
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) nextest run --workspace --no-fail-fast
	$(VENV)/bin/python -m unittest discover -s scripts -p 'test_*.py'

.PHONY: prices-aws
prices-aws: venv ## Refresh the AWS on-demand prices in seeds/catalog.json from the Price List API (needs AWS credentials)
	$(VENV)/bin/python scripts/aws_prices.py

BENCH_TOOLS := vllm-router==0.1.17 smg==1.13.0
# LiteLLM pins its own openai and web stack: it gets a venv of its own.
BENCH_VENV := .venv-bench
LITELLM := "litellm[proxy]==1.108.7"

.PHONY: bench-tools
bench-tools: venv ## Peers the benches measure against: nginx (Debian), vllm-router and smg (PyPI, ./.venv), LiteLLM (./.venv-bench)
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { echo "installing nginx ..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx) >/dev/null; }
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(BENCH_TOOLS)
	@[ -x $(BENCH_VENV)/bin/litellm ] || { python3 -m venv $(BENCH_VENV) && \
	  $(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check $(LITELLM); }

.PHONY: bench
bench: services bench-tools ## Benchmarks (one release build): API latency and login flood, command latency and provisioning throughput, reconciliation, FinOps queries, router overhead against nginx, vllm-router and smg; each vs a same-run baseline
	$(CARGO) build --release -p qm-worker-agent --bins
	$(CARGO) bench --benches -p qm-domain -p qm-api -p qm-orchestrator -p qm-finops -p qm-cli -p qm-router

.PHONY: console-tools
console-tools: ## The console's browser test tools: Debian's chromium, and playwright-core and axe-core from npm (in ./.npm-tools)
	@[ -x /usr/bin/chromium ] || { echo "installing chromium ..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) >/dev/null \
	  || { echo "error: could not install Debian's chromium (the console tests need it)" >&2; exit 1; }; }
	@command -v node >/dev/null || { echo "error: Node.js is missing (the console tests need node and npm)" >&2; exit 1; }
	@[ -d .npm-tools/node_modules/playwright-core ] && [ -f .npm-tools/node_modules/axe-core/axe.min.js ] || \
	  npm install --silent --no-audit --no-fund --prefix .npm-tools playwright-core@1.49.1 axe-core@4.10.2

.PHONY: k8s-render
k8s-render: ## Print the Kubernetes manifests of ENV's overlay (deploy/kubernetes/overlays/ENV), rendered by kubectl kustomize
	@[ -d deploy/kubernetes/overlays/$(ENV) ] || { echo "error: no overlay deploy/kubernetes/overlays/$(ENV) (staging, prod)" >&2; exit 2; }
	kubectl kustomize deploy/kubernetes/overlays/$(ENV)

.PHONY: lint
lint: ## fmt check and clippy only
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: env-file
env-file:
	@test -f $(ENV_FILE) || { echo "error: $(ENV_FILE) is missing; copy env/$(ENV).env.example to $(ENV_FILE) and fill it in" >&2; exit 1; }

.PHONY: migrate
migrate: env-file build ## Apply migrations to the database of env/$(ENV).env (make migrate ENV=staging)
	set -a && source $(ENV_FILE) && set +a && $(BIN_DIR)/qm migrate

.PHONY: seed
seed: env-file build ## Apply the catalog seed (seeds/catalog.json) to env/$(ENV).env's database, idempotently
	set -a && source $(ENV_FILE) && set +a && $(BIN_DIR)/qm seed

.PHONY: openapi
openapi: build ## Write the API's OpenAPI document to docs/openapi.json
	$(BIN_DIR)/qm openapi > docs/openapi.json

.PHONY: %-up
%-up: ## Start the services of env/<env>.env in the background (make staging-up)
	@$(MAKE) --no-print-directory env-file ENV=$*
	@$(MAKE) --no-print-directory build
	@mkdir -p .qm/run/$*
	@set -a && source env/$*.env && set +a && for service in $(SERVICES); do \
		$(BIN_DIR)/qm-$$service >> .qm/run/$*/$$service.log 2>&1 & echo $$! > .qm/run/$*/$$service.pid; \
		echo "started qm-$$service (pid $$!, log .qm/run/$*/$$service.log)"; done

.PHONY: %-down
%-down: ## Stop the services started by <env>-up (SIGTERM, then wait)
	@for pidfile in .qm/run/$*/*.pid; do \
		[ -f "$$pidfile" ] || continue; pid=$$(cat $$pidfile); \
		kill -TERM $$pid 2>/dev/null && echo "stopping $$(basename $$pidfile .pid) (pid $$pid)"; \
		for _ in $$(seq 1 100); do kill -0 $$pid 2>/dev/null || break; sleep 0.1; done; rm -f $$pidfile; done

.PHONY: clean
clean: ## Remove build output and the dev data directory
	$(CARGO) clean
	rm -rf .qm
