# PolyglotMicro — everything a developer runs goes through these targets.
#   make up      run the whole mesh natively (background), wait until healthy
#   make down    stop it
#   make test    run the test suite (starts its own mesh on free ports)
#   make check   the static checks CI runs (lint, codegen drift, Envoy config)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BUF    := node_modules/.bin/buf

.PHONY: up down status test check generate lint lint-proto breaking drift envoy-validate clean

## Environments ------------------------------------------------------------

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "PolyglotMicro needs Python 3.11 or newer (found: $$($(PYTHON) --version)). Set PYTHON=python3.X."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

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

## Tests and checks --------------------------------------------------------

test: venv
	$(BIN)/pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

lint-proto: tools
	$(BUF) lint

# Compare the contracts with the previous commit of main (BREAKING_AGAINST overrides).
BREAKING_AGAINST ?= .git\#branch=main,ref=HEAD~1
breaking: tools
	$(BUF) breaking --against '$(BREAKING_AGAINST)'

# Regenerate everything derived from the contracts and the code: messages,
# descriptor set, Envoy config, AsyncAPI document.
generate: venv tools
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BUF) generate
	rm -rf gen/python/google gen/python/__init__.py
	$(BUF) build --as-file-descriptor-set -o gen/python/polyglot/mesh.binpb
	$(BIN)/python -m devtools.envoy_config
	$(BIN)/faststream docs gen devtools.asyncapi:docs --yaml --out docs/asyncapi.yaml >/dev/null

# Fails when the committed generated files differ from a fresh `make generate`.
drift: generate
	@git add -N gen envoy docs >/dev/null 2>&1 || true
	@git diff --exit-code --stat -- gen envoy docs || \
	  { echo "Generated files are stale: run 'make generate' and commit the result."; exit 1; }

# The compose config names other hosts and container paths; it is checked
# statically (structure) here, and by compose-check against compose.yaml.
envoy-validate: venv
	$(BIN)/envoy --mode validate -c envoy/envoy.yaml --disable-hot-restart --log-level warn

check: lint lint-proto drift envoy-validate

clean: down
	rm -rf .run
