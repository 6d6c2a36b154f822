# statekit: `make review` and `make test` are all a newcomer needs (Python 3.11 on PATH).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PROFILE   ?= data/profiles/support_agent.yaml
REDIS_URL ?= fakeredis://
OUT       ?= reports
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet

.PHONY: help review test check app lab workshop workshop-copies lint bench docs clean

help:
	@echo "make review   create .venv, install statekit, write the design review of $(PROFILE) to $(OUT)/"
	@echo "make test     run the whole test suite (real-Redis tests need redis-server on PATH)"
	@echo "make check    the import contracts and the quick tests: no server, no browser, nothing marked slow (about a minute)"
	@echo "make app      serve the live design review of $(PROFILE) on http://127.0.0.1:8866/ (Voila)"
	@echo "make lab      open JupyterLab on notebooks/"
	@echo "make docs     build the manual (MkDocs) into site/"
	@echo "make workshop the attendee's copy of the labs in workshop/, and JupyterLab on it (fakeredis, offline)"
	@echo "make lint     ruff, and the import contracts (lint-imports)"
	@echo "make bench    benchmarks against raw redis-py, langchain-community and LangGraph's savers (starts its own redis-server)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[workbook]'
	@touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[workbook,app,otel,hiredis,compress,langgraph,docs,dev]'
	@touch $@ $(VENV)/.core $(VENV)/.app

$(VENV)/.lab: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[workbook,langgraph,lab]'
	@touch $@ $(VENV)/.core

$(VENV)/.app: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[workbook,app]'
	@touch $@ $(VENV)/.core

app: $(VENV)/.app
	$(BIN)/statekit app $(PROFILE) --redis-url '$(REDIS_URL)'

review: $(VENV)/.core
	$(BIN)/statekit review $(PROFILE) --out $(OUT) --redis-url '$(REDIS_URL)'

# Four workers (pytest-xdist) on two cores: many tests wait on servers, kernels and a browser
# (on this 2-core machine: 485 s with four, 602 s with three).
# Tests that share a server or a cluster get them per worker; the browser tests share one worker.
WORKERS ?= 4
# Bytecode is cached even where the environment says not to (PYTHONDONTWRITEBYTECODE): each
# worker would otherwise compile and assertion-rewrite every test module again, and each of the
# suite's kernels and CLI runs compile statekit again.
test check: export PYTHONDONTWRITEBYTECODE :=
test: $(VENV)/.dev
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests -n $(WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The edit-test loop: no redis-server, no browser, no notebook, no wheel, none of the tests marked
# slow (over 3 CPU-seconds each); fewer examples of the property and fault-schedule tests. CI runs
# them all in `make test`. Three workers on two cores: 50 s of pytest here (57 s with four, 63 s
# with two).
check: $(VENV)/.dev
	$(BIN)/lint-imports
	STATEKIT_FAULT_EXAMPLES=10 STATEKIT_SAVER_EXAMPLES=6 STATEKIT_MODEL_EXAMPLES=15 STATEKIT_SAVER_TURNS=40 \
		$(BIN)/python -m pytest tests -n 3 \
		--dist loadgroup -m "not realredis and not browser and not notebook and not install and not slow" $(PYTEST_ARGS)

$(VENV)/.bench: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[workbook,hiredis,compress,langgraph,bench]'
	@touch $@ $(VENV)/.core

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/bench_store.py --iterations 5000
	$(BIN)/python benchmarks/bench_resilience.py --iterations 5000
	$(BIN)/python benchmarks/bench_aio.py --iterations 3000
	$(BIN)/python benchmarks/bench_consistency.py
	$(BIN)/python benchmarks/bench_migrate.py --sessions 100000
	$(BIN)/python benchmarks/bench_observe.py --sessions 100000
	$(BIN)/python benchmarks/bench_memory.py --sessions 1000 10000 100000
	$(BIN)/python benchmarks/bench_calibrate.py --seeds 100 --sessions 100000 --sample 2000
	$(BIN)/python benchmarks/bench_compress.py --sessions 10000 --threads 40 --steps 25 --iterations 5000

# The manual: docs/ and the API reference from the docstrings; tests/test_docs_site.py builds it
# with --strict and follows its links in Chromium.
docs: $(VENV)/.dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lab: $(VENV)/.lab
	$(BIN)/jupyter lab notebooks/

$(VENV)/.workshop: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[workshop]'
	@touch $@ $(VENV)/.core

# the attendee's copy (solutions stripped) of notebooks/labs/, on embedded fakeredis: no server, no network
workshop: $(VENV)/.workshop
	$(BIN)/statekit workshop workshop --trainer-notebooks notebooks/labs

# after editing notebooks/labs/: the attendee's copies that ship in the package (a test checks them)
workshop-copies: $(VENV)/.core
	$(BIN)/python -m statekit.workbook.labs.workshop notebooks/labs

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) $(OUT) site .pytest_cache workshop
