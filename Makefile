# The two commands of the README. Both set up .venv (Python 3.11, torch from this machine's disk) first.
PYTHON ?= python3.11
VENV := .venv

.PHONY: demo test lint chromium

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

## demo: set up, then materialize every asset on the CPU tiny profile and print a summary
demo: $(VENV)/.installed
	$(VENV)/bin/firm run main

# The browser test drives the system's Chromium (Debian's package; Playwright never downloads one).
# Installed only when missing; as root directly, otherwise through sudo.
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium; \
	fi

## test: set up (the venv and Chromium), then lint and run the whole test suite on TEST_WORKERS
## processes (pytest-xdist; one test file stays on one worker, so its module fixtures are built once)
TEST_WORKERS ?= 2
test: $(VENV)/.installed chromium lint
	$(VENV)/bin/pytest -q -p no:cacheprovider --durations=25 -n $(TEST_WORKERS) --dist loadfile

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
