# PolyglotMicro — everything a developer runs goes through these targets.
#   make up      run the whole mesh natively (background), wait until healthy
#   make down    stop it
#   make test    run the test suite (starts its own mesh on free ports; needs Node/npm)
#   make lock    re-pin the whole environment (requirements.lock) after editing pyproject.toml
#   make check   the static checks CI runs (lint, types, codegen drift, Envoy config, alert rules)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BUF    := node_modules/.bin/buf
# Every package of the environment, transitive ones too, pinned with hashes; and
# the same pins for the services' runtime alone (no extras), which the image installs.
LOCK   := requirements.lock
RUNTIME_LOCK := requirements.runtime.lock
PIP_TOOLS := pip-tools==7.6.2
PIP    := pip==26.3

.PHONY: up down status token keys test test-outage lock check generate docs mongo-ui lint typecheck lint-proto lock-check breaking drift envoy-validate prometheus-check compose-check k8s-check bench bench-smoke clean

## Environments ------------------------------------------------------------

$(BIN)/.installed: pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "PolyglotMicro needs Python 3.11 or newer (found: $$($(PYTHON) --version)). Set PYTHON=python3.X."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade $(PIP)  # Debian's pip 23 builds sdists the legacy way
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# After changing a pin in pyproject.toml: re-resolve the whole environment, from
# PyPI, keeping every other pin (LOCK_ARGS="--upgrade-package NAME" to move one).
# The runtime lock starts from the full one, so pip-compile keeps its versions.
PIP_COMPILE := PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock" \
  .run/pip-tools/bin/pip-compile --quiet --generate-hashes --strip-extras \
  --unsafe-package polyglotmicro --no-emit-index-url --no-emit-find-links
lock:
	$(PYTHON) -m venv .run/pip-tools
	.run/pip-tools/bin/pip install --quiet $(PIP_TOOLS)
	$(PIP_COMPILE) --extra dev $(LOCK_ARGS) --output-file $(LOCK) pyproject.toml
	cp $(LOCK) $(RUNTIME_LOCK)
	$(PIP_COMPILE) --output-file $(RUNTIME_LOCK) pyproject.toml

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

venv: $(BIN)/.installed
tools: node_modules/.installed

## Running -----------------------------------------------------------------

up: venv
	$(BIN)/python -m devtools.launcher up

down: venv
	$(BIN)/python -m devtools.launcher down

status: venv
	$(BIN)/python -m devtools.launcher status

# A development bearer token for Envoy: all scopes by default, SCOPES="orders:write"
# (space- or comma-separated) narrows it, SUBJECT="alice" names the caller. Signed
# with the key pair under .run/auth/ (created once; `make up` gives Envoy its JWKS).
# Use it as TOKEN=$$(make -s token).
token: venv
	@$(BIN)/python -m devtools.tokens

# Only the key pair and the JWKS file (.run/auth/), e.g. before `docker compose up`.
keys: venv
	@$(BIN)/python -m devtools.tokens --keys-only

# Mongo Express (npm, fetched on first use; not a build dependency) on
# http://localhost:8081 (admin/pass, loopback only) for the MongoDB of `make up`,
# or MONGO_URL; in the foreground, Ctrl-C stops it.
mongo-ui:
	ME_CONFIG_MONGODB_URL='$(or $(MONGO_URL),mongodb://127.0.0.1:27017)' \
	  ME_CONFIG_MONGODB_ENABLE_ADMIN=true PORT=8081 \
	  ME_CONFIG_BASICAUTH_USERNAME=admin ME_CONFIG_BASICAUTH_PASSWORD=pass \
	  npm exec --yes --package=mongo-express@1.0.0 -- mongo-express

## Benchmarks (need pgbench and wrk: sudo apt-get install -y postgresql-client wrk) ---

# The full run (≈ 15 min, then ≈ 3 min of tracing cost, ≈ 8 min of whole mesh) rewrites BENCHMARKS.md; BENCH_ARGS passes options,
# e.g. BENCH_ARGS="--clients 32 --service-env WORKERS=2".
bench: venv
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.run --only tracing $(BENCH_ARGS)
	$(BIN)/python -m bench.run --only mesh $(BENCH_ARGS)

# A few minutes (every section once, tiny): proves the harness works (CI); report in test-artifacts/.
bench-smoke: venv
	$(BIN)/python -m bench.run --smoke
	$(BIN)/python -m bench.run --smoke --only tracing
	$(BIN)/python -m bench.run --smoke --only mesh
	$(BIN)/python -m bench.floors --seconds 1 --rounds 1 --messages 200

## Tests and checks --------------------------------------------------------

# First checks PostgreSQL and RabbitMQ (reachable, login, rights) and says what to fix.
# Needs the npm tools too: newman replays the Postman collection, whose JSON schema
# comes from node_modules (tests/e2e/test_postman_newman.py, tests/unit/test_postman_collection.py).
test: venv tools
	@$(BIN)/python -m devtools.preflight
	$(BIN)/pytest $(PYTEST_ARGS)

# Opt-in: a real RabbitMQ outage (rabbitmqctl stop_app, root): stops the broker
# for everyone on this machine, a `make up` mesh included.
test-outage: venv
	@$(BIN)/python -m devtools.preflight
	$(BIN)/pytest -m broker_outage $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy, strict on the product code (configuration: [tool.mypy] in pyproject.toml).
typecheck: venv
	$(BIN)/mypy

lint-proto: tools
	$(BUF) lint

# Compare the contracts with the previous commit of main (BREAKING_AGAINST overrides).
BREAKING_AGAINST ?= .git\#branch=main,ref=HEAD~1
breaking: tools
	$(BUF) breaking --against '$(BREAKING_AGAINST)'

# Regenerate everything derived from the contracts and the code: messages,
# descriptor set, AsyncAPI document, docs site, Envoy config, Prometheus config.
generate: venv tools
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BUF) generate
	rm -rf gen/python/google gen/python/__init__.py
	$(BUF) build --as-file-descriptor-set -o gen/python/polyglot/mesh.binpb
	$(BIN)/faststream docs gen devtools.asyncapi:docs --yaml --out docs/asyncapi.yaml >/dev/null
	@$(MAKE) --no-print-directory docs
	$(BIN)/python -m blueprint.prometheus

# The docs site (docs/site, served by Envoy at /docs/) from the descriptor set,
# docs/asyncapi.yaml and node_modules; then Envoy's config, which lists its files.
docs: venv tools
	$(BIN)/python -m devtools.docs_site
	$(BIN)/python -m blueprint.edge

# Fails when the committed generated files differ from a fresh `make generate`.
drift: generate
	@git add -N gen envoy docs deploy/k8s/base/envoy deploy/k8s/overlays/prod/envoy prometheus/prometheus.compose.yml >/dev/null 2>&1 || true
	@git diff --exit-code --stat -- gen envoy docs deploy/k8s/base/envoy deploy/k8s/overlays/prod/envoy prometheus/prometheus.compose.yml || \
	  { echo "Generated files are stale: run 'make generate' and commit the result."; exit 1; }

# The compose config names other hosts and container paths; it is checked
# statically (structure) here, and by compose-check against compose.yaml.
# The native config reads the development JWKS, which `make keys` creates.
envoy-validate: venv keys
	$(BIN)/envoy --mode validate -c envoy/envoy.yaml --disable-hot-restart --log-level warn

# Prometheus's compose config and the alert rules, with their unit tests
# (prometheus/alerts.test.yml); promtool comes with Debian's prometheus package.
PROMTOOL ?= promtool
prometheus-check:
	@command -v $(PROMTOOL) >/dev/null || \
	  { echo "promtool is missing: sudo apt-get install -y prometheus"; exit 1; }
	$(PROMTOOL) check config prometheus/prometheus.compose.yml
	$(PROMTOOL) check rules prometheus/alerts.yml
	$(PROMTOOL) test rules prometheus/alerts.test.yml

# compose.yaml, the Dockerfile and Envoy's compose config, checked without a Docker
# engine (schema, references, envoy --mode validate, hadolint): tests in
# tests/deploy/test_compose.py (checks in tests/support/compose_check.py), also part of make test.
compose-check: venv
	$(BIN)/pytest -q tests/deploy/test_compose.py

# deploy/k8s, checked without a cluster: both overlays rendered by kubectl's
# kustomize, Kubernetes and CRD schemas, cross-references, NetworkPolicy paths,
# Envoy's config: tests in tests/deploy/test_k8s.py (checks in tests/support/k8s_check.py,
# the NetworkPolicy paths in k8s_network.py), also part of make test.
k8s-check: venv
	$(BIN)/pytest -q tests/deploy/test_k8s.py

# Both locks still meet every pin of pyproject.toml (offline; `make lock` fixes it).
lock-check: venv
	$(BIN)/pytest -q tests/unit/test_lock.py

check: lint typecheck lint-proto lock-check drift envoy-validate prometheus-check compose-check k8s-check

clean: down
	rm -rf .run
