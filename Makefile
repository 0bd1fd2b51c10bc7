# One venv for everything; the stamp re-installs when pyproject.toml changes.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: run test test-faults bench lint clean devtools asyncapi chromium

# Checkers from outside PyPI that the tests run (tests/devtools.py; kubectl comes with the machine).
DEVSHARE        := $(VENV)/share/imagepipe-dev
PROMTOOL        := $(VENV)/bin/promtool
ASYNCAPI_SCHEMA := $(DEVSHARE)/asyncapi-3.0.0.json
ASYNCAPI_SPECS  := 6.11.1

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

run: $(STAMP)  ## the whole system on this machine, in the foreground
	$(PY) -m localrun

test: $(STAMP) chromium  ## lint, types, and every test (fault tests included)
	-@$(MAKE) --no-print-directory devtools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shared services localrun tools cli
	$(VENV)/bin/pytest -q -n 3

devtools: $(PROMTOOL) $(ASYNCAPI_SCHEMA)

# promtool from Debian's prometheus package: only that binary is extracted, no daemon is installed.
$(PROMTOOL): | $(STAMP)
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && cd "$$tmp" \
	  && { apt-get download prometheus || { apt-get update -qq && apt-get download prometheus; }; } \
	  && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool \
	  && mv usr/bin/promtool "$(CURDIR)/$@"

# The official AsyncAPI 3 JSON schema, from npm's @asyncapi/specs.
$(ASYNCAPI_SCHEMA): | $(STAMP)
	mkdir -p $(@D)
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && cd "$$tmp" \
	  && npm pack --silent @asyncapi/specs@$(ASYNCAPI_SPECS) >/dev/null \
	  && tar -xzf asyncapi-specs-$(ASYNCAPI_SPECS).tgz package/schemas/3.0.0.json \
	  && mv package/schemas/3.0.0.json "$(CURDIR)/$@"

asyncapi: $(STAMP)  ## docs/asyncapi.yaml, generated from the code
	$(PY) -m tools.asyncapi

# The page and /docs tests drive Debian's Chromium through Playwright (which never downloads a browser).
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "The browser tests need $(CHROMIUM): sudo apt-get install chromium" >&2; exit 1; \
	  fi; \
	fi

test-faults: $(STAMP)
	$(VENV)/bin/pytest -q -n 3 -m faults

bench: $(STAMP)
	$(PY) -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf var .pytest_cache .mypy_cache .hypothesis
