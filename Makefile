# The two commands of the README. Both set up .venv (Python 3.11, torch from this machine's disk) first.
PYTHON ?= python3.11
VENV := .venv

.PHONY: demo test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

## demo: set up, then materialize every asset on the CPU tiny profile and print a summary
demo: $(VENV)/.installed
	$(VENV)/bin/firm run main

## test: set up, then lint and run the whole test suite
test: $(VENV)/.installed lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
