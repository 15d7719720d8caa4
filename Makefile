# ssmscope — `make demo` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU wheel that lies on this project's machines; any torch >= 2.4 works.
TORCH ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

# setuptools prints an information-only note ("Editable installation … be careful with folders named like
# your package") on every editable install of a package-dir layout like ours (ssmscope.* ← ssm/, runs/, …);
# tests/test_architecture.py checks that nothing shadows the namespace, so the note is filtered here.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install -q "$(TORCH)" -e ".[dev]"
	touch $@

# The main job: a smoke sweep into the default store, its slope table in the terminal, the reproduction
# report (one HTML file that opens offline), then the dashboard on it (http://127.0.0.1:8501 until Ctrl-C).
demo: setup
	$(BIN)/ssmscope sweep smoke --workers 2
	$(BIN)/ssmscope slopes --format table
	$(BIN)/ssmscope report --out ssmscope-data/report.html
	@echo "The report: $(CURDIR)/ssmscope-data/report.html (open it in a browser; it needs no network)"
	$(BIN)/ssmscope app

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/scan_cpu.py

clean:
	rm -rf $(VENV) ssmscope-data .pytest_cache
