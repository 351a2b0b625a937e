# Confab — two commands do everything on a fresh Debian machine:
#   make up     run Redis, the gateway (serving the web client at /) and every worker role
#   make test   formatting, lints and every test (Rust, web unit tests, browser end to end)
# Replicas: make up GATEWAYS=2 PERSISTENCE=3 CLEANUP=1 COMPLETION=2
# Redis Cluster on this machine: make up REDIS_NODES=3 (3 primaries, one replica each)

SHELL := /bin/bash
.DEFAULT_GOAL := help

GATEWAYS ?= 1
PERSISTENCE ?= 1
CLEANUP ?= 1
COMPLETION ?= 1
REDIS_NODES ?= 0
WEB := gateway/web
WEB_SOURCES := $(shell find $(WEB)/src $(WEB)/public -type f 2>/dev/null) $(WEB)/index.html $(WEB)/package.json $(WEB)/vite.config.ts
CARGO ?= cargo
APT_UPDATED := .run/.apt-updated
VENV := .run/venv
PY_REQS := infra/requirements-test.txt

.PHONY: help up test bench soak rest writes fanout hold assistant cluster chaos web build build-release deps-run deps-test deps-node deps-py deps-ops check-rust fmt lint deny rust-test web-test e2e ops-test api-test clean

help:
	@echo "make up      run everything (Redis, gateway at http://127.0.0.1:3000/, workers)"
	@echo "make test    fmt check, clippy -D warnings, all Rust tests, web unit tests, browser e2e"
	@echo "make bench   load-test a local stack (REST, WebSocket fan-out, assistant streaming)"
	@echo "make bench soak   the 10-minute churn soak (500 connects+closes/s, 2,000 messages/s)"
	@echo "make chaos   60 s of mixed load while processes and Redis are SIGKILLed, then a ledger check"

# ---------------------------------------------------------------- dependencies
# Installs Debian packages when missing (as root), otherwise says exactly what to install.
define apt_install
	@if ! command -v $(1) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo ">> installing Debian package $(2)"; \
	    mkdir -p .run; [ -f $(APT_UPDATED) ] || { apt-get update -qq && touch $(APT_UPDATED); }; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	  else \
	    echo "!! $(1) is missing: run 'sudo apt-get install $(2)' (Debian/Ubuntu) and retry"; exit 1; \
	  fi; \
	fi
endef

check-rust:
	@command -v $(CARGO) >/dev/null || { echo "!! cargo is missing: install Rust from https://rustup.rs"; exit 1; }

deps-run: check-rust
	$(call apt_install,redis-server,redis-server)

deps-node:
	@command -v node >/dev/null && command -v npm >/dev/null || { echo "!! node and npm are missing: install Node.js 20.19+ (e.g. 'sudo apt-get install nodejs npm' on a recent Debian, or from nodejs.org)"; exit 1; }
	@[ -d $(WEB)/node_modules ] && [ $(WEB)/node_modules/.package-lock.json -nt $(WEB)/package-lock.json ] || { \
	  cd $(WEB) && for try in 1 2 3; do \
	    npm ci --no-audit --no-fund --fetch-retries=5 && exit 0; \
	    echo ">> npm ci failed (try $$try of 3); retrying in $$((try * 10)) s"; sleep $$((try * 10)); \
	  done; \
	  echo "!! npm ci failed three times: check that https://registry.npmjs.org is reachable (npm config get registry)"; exit 1; }

deps-test: deps-run deps-node
	$(call apt_install,chromium,chromium)

# A virtualenv (.run/venv) with the pinned PyPI test tools (Schemathesis, kubernetes-validate).
deps-py:
	$(call apt_install,python3,python3)
	@/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo ">> installing Debian package python3-venv"; \
	    mkdir -p .run; [ -f $(APT_UPDATED) ] || { apt-get update -qq && touch $(APT_UPDATED); }; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
	  else echo "!! python3-venv is missing: run 'sudo apt-get install python3-venv' and retry"; exit 1; fi; }
	@[ -x $(VENV)/bin/python ] && [ $(VENV)/.installed -nt $(PY_REQS) ] || { \
	  echo ">> creating $(VENV) from $(PY_REQS)"; \
	  /usr/bin/python3 -m venv $(VENV) && $(VENV)/bin/pip install -q --disable-pip-version-check -r $(PY_REQS) && touch $(VENV)/.installed; }

# The operations tools: promtool (Debian prometheus), docker-compose.
deps-ops: deps-py
	$(call apt_install,promtool,prometheus)
	$(call apt_install,docker-compose,docker-compose)

# ---------------------------------------------------------------- build
web: $(WEB)/dist/index.html

$(WEB)/dist/index.html: $(WEB_SOURCES) | deps-node
	cd $(WEB) && npm run build

build: check-rust
	$(CARGO) build --workspace --bins

build-release: check-rust
	$(CARGO) build --release --workspace --bins

# ---------------------------------------------------------------- run
up: deps-run deps-node web build-release
	target/release/confab-run --gateways $(GATEWAYS) --persistence $(PERSISTENCE) --cleanup $(CLEANUP) --completion $(COMPLETION) --redis-nodes $(REDIS_NODES)

# ---------------------------------------------------------------- test
fmt:
	$(CARGO) fmt --all --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Licenses, banned or duplicated crates and sources of the Rust dependency tree (deny.toml).
# cargo-deny is pinned (0.19.9 builds with rustc 1.88+) and installed from crates.io when
# missing. Advisories are not checked here: they need the RustSec database from GitHub.
CARGO_DENY_VERSION := 0.19.9
deny: check-rust
	@$(CARGO) deny --version 2>/dev/null | grep -qx 'cargo-deny $(CARGO_DENY_VERSION)' || { \
	  echo ">> installing cargo-deny $(CARGO_DENY_VERSION)"; \
	  $(CARGO) install --locked cargo-deny --version $(CARGO_DENY_VERSION); }
	$(CARGO) deny check licenses bans sources

rust-test: deps-run build
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi

web-test: deps-node
	cd $(WEB) && npm test

e2e: deps-test build web
	cd $(WEB) && npm run e2e

# Offline checks of what users deploy: alert rules, compose file, Kubernetes and KEDA manifests.
ops-test: deps-ops
	VENV=$(VENV) bash infra/ops/check.sh

# Schemathesis (pinned, in the venv) against a live gateway + persistence worker, driven by the
# served GET /openapi.json: no 5xx, only documented statuses, bodies match their schemas.
api-test: deps-py deps-run build
	VENV=$(VENV) bash infra/ops/schemathesis.sh

test: deps-test fmt lint deny rust-test web-test e2e ops-test api-test
	@echo "== all tests passed =="

# ---------------------------------------------------------------- bench
# `make bench` runs the default scenarios; `make bench soak` (or `make bench BENCH="writes hold"`)
# runs only the named ones: soak is 10 minutes (SOAK_DURATION) and never part of the default.
BENCH_GOALS := $(filter soak rest writes fanout hold assistant cluster,$(MAKECMDGOALS))
bench: deps-run build-release
	$(if $(BENCH_GOALS),BENCH="$(BENCH_GOALS)") bash infra/bench.sh
soak rest writes fanout hold assistant cluster:
	@$(if $(filter bench,$(MAKECMDGOALS)),:,echo "run it as: make bench $@"; exit 2)

# The chaos run (infra/e2e/tests/chaos.rs) for CHAOS_SECS (the test suite runs it for 15 s):
# mixed load while random processes are SIGKILLed and restarted and Redis restarts once, then
# the ledger check, printing the counts. CHAOS_SEED=<printed seed> replays a run's victims.
CHAOS_SECS ?= 60
chaos: deps-run check-rust
	$(CARGO) build -p confab-gateway -p confab-workers
	CHAOS_SECS=$(CHAOS_SECS) $(CARGO) test -p confab-e2e --test chaos -- --nocapture

clean:
	$(CARGO) clean
	rm -rf $(WEB)/dist .run
