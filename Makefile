# Vigil — two commands: `make run` (set up and serve the demo) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DO_NOT_TRACK := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run setup system-deps test lint format bench reliability constraints clean-data clean help

help:
	@echo "make run    - set up (venv, install, migrate, demo data) and serve http://localhost:8501"
	@echo "make test   - set up and run the whole test suite"
	@echo "make lint   - ruff check, ruff format --check, mypy"
	@echo "make bench  - run the benchmarks and write BENCHMARKS.md"
	@echo "make reliability - run the fault-injection suite and write RELIABILITY.md"
	@echo "make clean-data - delete the demo store and files (data/)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Debian packages: chromium (browser tests, PDF reports) and poppler-utils (pdftotext in tests).
# Installed from Debian only; nothing downloads a browser of its own.
SYSTEM_TOOLS := chromium pdftotext
system-deps:
	@missing=0; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "Installing Debian packages: chromium poppler-utils"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium poppler-utils; \
	fi

setup: $(STAMP) system-deps

run: setup
	$(BIN)/vigil bootstrap
	$(BIN)/vigil serve

# One test worker per core (pytest-xdist), a whole file per worker so module fixtures build
# once; VIGIL_TEST_WORKERS=0 runs in this process. The 25 slowest tests are listed at the end
# (where CI time goes).
test: setup
	$(BIN)/python -m pytest -n $${VIGIL_TEST_WORKERS:-auto} --dist loadfile --durations=25

# PostgreSQL figures run when a server answers on 127.0.0.1:5432 (or VIGIL_BENCH_POSTGRES_URL is set).
bench: setup
	VIGIL_BENCH_POSTGRES_URL="$${VIGIL_BENCH_POSTGRES_URL:-$$(pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && echo postgresql+psycopg://postgres@127.0.0.1:5432/test)}" \
	  $(BIN)/vigil bench

# The fault-injection suite (also part of `make test`), then RELIABILITY.md from its records.
reliability: setup
	rm -f artifacts/reliability.json
	@status=0; VIGIL_TEST_POSTGRES_URL="$${VIGIL_TEST_POSTGRES_URL:-$$(pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && echo postgresql+psycopg://postgres@127.0.0.1:5432/test)}" \
	  $(BIN)/python -m pytest tests/reliability -q || status=$$?; \
	$(BIN)/python -m tests.reliability.report && exit $$status

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

constraints: setup
	{ echo "# Exact versions tested with Vigil (pip install -c constraints.txt). Regenerate with 'make constraints'."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -i -E "^(pip|setuptools|wheel)==" | sort -f; } > constraints.txt

clean-data:
	rm -rf data

clean: clean-data
	rm -rf $(VENV)
