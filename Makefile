# ssmscope — `make demo` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU wheel that lies on this project's machines; any torch >= 2.4 works.
TORCH ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" -e ".[dev]"
	touch $@

# The main job: a smoke sweep into the default store, its slope table, then the dashboard on it.
demo: setup
	$(BIN)/ssmscope sweep smoke --workers 2
	$(BIN)/ssmscope slopes --format md
	$(BIN)/ssmscope app

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/scan_cpu.py

clean:
	rm -rf $(VENV) ssmscope-data .pytest_cache
