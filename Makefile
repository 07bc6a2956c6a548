# Everything a new machine needs is installed here: `make test` and `make run` work on a fresh
# clone with only Python 3.11+ present (and, for `make test`, apt-get as root or through sudo to
# install Chromium for the page tests: see `browser`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The browser the page tests drive: Debian's `chromium` (playwright's own `playwright install`
# downloads browsers from the internet, which CI does not have). Another one: CHROMIUM=/path.
CHROMIUM ?= $(or $(CHROMIUM_PATH),/usr/bin/chromium)

.PHONY: install browser test test-at run lint bench schema screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Installs Debian's chromium (as root, or through sudo) unless $(CHROMIUM) is already there.
browser:
	@if [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	fail() { echo "make browser: $$1. The browser tests need Chromium at $(CHROMIUM):" \
	    "install Debian's package (apt-get install --no-install-recommends chromium) or run" \
	    "with CHROMIUM=/path/to/chromium." >&2; exit 1; }; \
	[ "$(CHROMIUM)" = /usr/bin/chromium ] || fail "$(CHROMIUM) is missing"; \
	command -v apt-get >/dev/null 2>&1 || fail "no apt-get here to install it with"; \
	if [ "$$(id -u)" = 0 ]; then apt="env DEBIAN_FRONTEND=noninteractive apt-get"; \
	elif command -v sudo >/dev/null 2>&1; then apt="sudo DEBIAN_FRONTEND=noninteractive apt-get"; \
	else fail "not root and no sudo to run apt-get with"; fi; \
	echo "make browser: installing Debian's chromium ($$apt)" >&2; \
	$$apt update || echo "make browser: apt-get update failed; trying the install anyway" >&2; \
	$$apt install -y --no-install-recommends chromium || fail "apt-get install chromium failed"; \
	[ -x "$(CHROMIUM)" ] || fail "the chromium package installed no $(CHROMIUM)"

# The page tests find the browser through CHROMIUM_PATH (tests/browser_support.py).
test test-at: export CHROMIUM_PATH := $(CHROMIUM)

test: $(STAMP) browser
	$(BIN)/pytest -q

# The suite with the wall clock of every process moved: make test-at AT="2027-12-31 23:59:30"
test-at: $(STAMP) browser
	tools/test-at "$(AT)"

run: $(STAMP)
	METERLINE_ENV=$${METERLINE_ENV:-development} $(BIN)/meterline serve --demo

lint: $(STAMP)
	$(BIN)/ruff check meterline tests bench
	$(BIN)/ruff format --check meterline tests bench
	$(BIN)/mypy meterline

bench: export CHROMIUM_PATH := $(CHROMIUM)
bench: $(STAMP) browser
	$(BIN)/python -m bench.suite
	$(BIN)/python -m bench.breakdown
	$(BIN)/python -m bench.portal

schema: $(STAMP)
	$(BIN)/meterline schema > schema.graphql

# The README's pictures of the demo company's usage portal, from the page test that opens it.
screenshots: export CHROMIUM_PATH := $(CHROMIUM)
screenshots: $(STAMP) browser
	PORTAL_SCREENSHOTS=docs $(BIN)/pytest -q tests/test_portal_page.py -k demo_link

clean:
	rm -rf $(VENV) .meterline .pytest_cache .mypy_cache .ruff_cache
