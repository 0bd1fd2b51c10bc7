# One venv for everything; the stamp re-installs when pyproject.toml changes.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-faults bench lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

run: $(STAMP)  ## the whole system on this machine, in the foreground
	$(PY) -m localrun

test: $(STAMP)  ## lint, types, and every test (fault tests included)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shared services localrun
	$(VENV)/bin/pytest -q

test-faults: $(STAMP)
	$(VENV)/bin/pytest -q -m faults

bench: $(STAMP)
	$(PY) -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf var .pytest_cache .mypy_cache
