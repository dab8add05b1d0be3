# ModelServeShim — the two newcomer commands are `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
MODEL   := .models/SmolLM2-135M-Instruct.Q4_1.gguf

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "Installing (llama-cpp-python compiles from source the first time: 3-8 minutes)..."
	$(BIN)/python -m pip install --quiet -e '.[dev,llama]'
	touch $(STAMP)

setup: $(STAMP) $(MODEL)

$(MODEL):
	PYTHON=$(BIN)/python scripts/get-smollm2.sh

## Deploy the real SmolLM2 model through the API on the local shimlet and chat with it.
demo: setup
	$(BIN)/python scripts/demo.py --model $(abspath $(MODEL))

## Lint, type-check, check the layers, run every test.
test: setup lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/k8s_requests.py
	$(BIN)/python bench/k8s_api_latency.py

clean:
	rm -rf $(VENV) .models .data
