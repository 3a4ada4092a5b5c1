# JCode Watcher — developer entry points. Every target calls a script in scripts/ or bench/;
# nothing needs a hand step. `make` alone prints this help.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTEST_ARGS ?=

.PHONY: help deps run stop test lint bench

help: ## show the targets
	@echo "JCode Watcher — make targets:"
	@grep -E '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  make %-8s %s\n", $$1, $$2}'

deps: ## install uv, the Debian packages and the Python workspace (idempotent)
	@bash scripts/install-deps.sh

run: ## start backend (SQLite, :3000) + filemon on a demo tree + procmon (as root) in the background; safe to repeat
	@bash scripts/run-local.sh

stop: ## stop what `make run` started (procmon, filemon, backend)
	@bash scripts/stop-local.sh

test: ## install deps, lint, run all tests (fails if none ran); PYTEST_ARGS="..." passes args
	@bash scripts/test.sh $(PYTEST_ARGS)

lint: deps ## ruff check + ruff format --check + mypy (strict) on the typed packages
	@bash scripts/lint.sh

bench: deps ## run the benchmarks and rewrite docs/benchmarks.md (numbers, not pass/fail)
	@bash bench/run_all.sh

# Container images (scripts/images.sh; needs a Docker engine). Build context: the repo root.
REGISTRY ?= harbor.jbnu.ac.kr/jinseok1006
TAG ?= 0.0.1
.PHONY: images push

images: ## build the three images <REGISTRY>/watcher-{backend,filemon,procmon}:<TAG>
	@REGISTRY='$(REGISTRY)' TAG='$(TAG)' bash scripts/images.sh build

push: ## push the three images (after `docker login <registry host>`)
	@REGISTRY='$(REGISTRY)' TAG='$(TAG)' bash scripts/images.sh push
