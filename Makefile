# qsdk: every target creates the virtualenv on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
QSDK   := $(VENV)/bin/qsdk
STAMP  := $(VENV)/.installed
ARGS   ?=
FLOWS  := $(shell sed -n 's/^  \([a-z_][a-z0-9_]*\):$$/\1/p' pipelines/*.yaml 2>/dev/null)

.PHONY: install test test-fast lint bench lab clean flow-%

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make flow-NAME ARGS="-p key=value ...": run any flow of the registry
flow-%: $(STAMP)
	$(QSDK) run $* $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check qsdk tests bench

bench: $(STAMP)
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --no-browser

clean:
	rm -rf runs lakehouse .pytest_cache
