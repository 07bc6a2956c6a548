# Everything a new machine needs is installed here: `make test` and `make run` work on a fresh
# clone with only Python 3.11+ present.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-at run lint bench schema clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

# The suite with the wall clock of every process moved: make test-at AT="2027-12-31 23:59:30"
test-at: $(STAMP)
	tools/test-at "$(AT)"

run: $(STAMP)
	METERLINE_ENV=$${METERLINE_ENV:-development} $(BIN)/meterline serve --demo

lint: $(STAMP)
	$(BIN)/ruff check meterline tests bench
	$(BIN)/ruff format --check meterline tests bench
	$(BIN)/mypy meterline

bench: $(STAMP)
	$(BIN)/python -m bench.suite
	$(BIN)/python -m bench.breakdown

schema: $(STAMP)
	$(BIN)/meterline schema > schema.graphql

clean:
	rm -rf $(VENV) .meterline .pytest_cache .mypy_cache .ruff_cache
