# One venv for everything; the stamp re-installs when pyproject.toml changes.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: run test test-faults bench lint clean chromium

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

run: $(STAMP)  ## the whole system on this machine, in the foreground
	$(PY) -m localrun

test: $(STAMP) chromium  ## lint, types, and every test (fault tests included)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shared services localrun cli
	$(VENV)/bin/pytest -q

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
	$(VENV)/bin/pytest -q -m faults

bench: $(STAMP)
	$(PY) -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf var .pytest_cache .mypy_cache .hypothesis
