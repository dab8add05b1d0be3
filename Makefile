# ModelServeShim — the two newcomer commands are `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
MODEL   := .models/SmolLM2-135M-Instruct.Q4_1.gguf
# llama.cpp's convert_hf_to_gguf.py (the quant pipeline's Hugging Face input), from the pinned llama-cpp-python's sdist
CONVERT := $(VENV)/share/modserv-shim/llama.cpp-convert/VERSION

.PHONY: setup demo test lint bench clean

# llama.cpp is compiled for any x86-64 with AVX2 (GGML_NATIVE=OFF), not for this CPU: a native
# build uses AMX tile instructions on CPUs that have them, and those crash (SIGSEGV in decode)
# where the kernel does not grant AMX state to the process, as in sandboxed VMs.  --no-cache-dir:
# pip's wheel cache does not key on CMAKE_ARGS and would hand back a native build made earlier.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "Installing (llama-cpp-python compiles from source the first time: 3-8 minutes)..."
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet --no-cache-dir -e '.[dev,llama,convert]'
	touch $(STAMP)

setup: $(STAMP) $(MODEL) $(CONVERT)

$(MODEL):
	PYTHON=$(BIN)/python scripts/get-smollm2.sh

$(CONVERT): $(STAMP)
	$(BIN)/python scripts/get-llama-convert.py
	touch $@

## Deploy the real SmolLM2 model through the API on the local shimlet and chat with it.
demo: setup
	$(BIN)/python scripts/demo.py --model $(abspath $(MODEL))

## Lint, type-check, check the layers, run every test.
test: setup lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts examples
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/k8s_requests.py
	$(BIN)/python bench/k8s_api_latency.py
	$(BIN)/python bench/docker_overhead.py && $(BIN)/python bench/docker_api_calls.py

clean:
	rm -rf $(VENV) .models .data
