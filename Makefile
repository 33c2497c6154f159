# The front door: `make demo`, `make test`; `make check` before a commit.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test check fmt lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff format --check recorder engine tests
	$(BIN)/ruff check recorder engine tests
	$(BIN)/mypy

check: lint test

fmt: $(STAMP)
	$(BIN)/ruff format recorder engine tests
	$(BIN)/ruff check --fix recorder engine tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

.PHONY: bench
bench: $(STAMP)
	$(BIN)/python bench/recorder_flood.py --trades 500000
