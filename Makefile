# qsdk: every target creates the virtualenv on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
QSDK   := $(VENV)/bin/qsdk
STAMP  := $(VENV)/.installed
ARGS   ?=
FLOWS  := $(shell sed -n 's/^  \([a-z_][a-z0-9_]*\):$$/\1/p' pipelines/*.yaml 2>/dev/null)

.PHONY: install lock test test-fast test-reliability test-cluster lint bench lab clean flow-% mlflow-ui mlflow-server s3-server snapshot dvc-sync \
        qsdk check dvc-dag dvc-repro

UV      = $(VENV)/bin/uv
UV_PIN := $(shell sed -n 's/^uv==//p' requirements.lock)

## the venv holds exactly requirements.lock (uv pip sync) plus qsdk itself, editable and without deps
$(STAMP): requirements.lock pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet 'uv==$(UV_PIN)'
	$(UV) pip sync --quiet --python $(PY) --link-mode copy --compile-bytecode requirements.lock
	$(UV) pip install --quiet --python $(PY) --link-mode copy --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## make lock: re-resolve pyproject.toml's dependencies (with the dev extra) into requirements.lock;
## commit both. The lock is for Linux x86_64 and Python 3.11 (the CI machine).
lock: $(STAMP)
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock' \
		--quiet --upgrade -o requirements.lock

## make flow-NAME ARGS="-p key=value ...": run any flow of the registry
flow-%: $(STAMP)
	$(QSDK) run $* $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

## make test-fast: the unit tests only (no kernel, no Ray, no MLflow server), for the inner loop
test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

## make test-reliability: tests/reliability, then its long variants (more and wider races, a bigger
## full disk; needs root for the tmpfs, as `make test` does)
test-reliability: $(STAMP)
	$(PY) -m pytest -q tests/reliability $(PYTEST_ARGS)
	$(PY) -m pytest -q -m reliability_long tests/reliability $(PYTEST_ARGS)

## make test-cluster: tests/cluster, a Ray cluster on loopback whose second node runs in its own mount
## namespace (unshare --mount: needs root), with the S3 test server and an MLflow server
test-cluster: $(STAMP)
	$(PY) -m pytest -q -m cluster tests/cluster $(PYTEST_ARGS)

## make lint: ruff, the layering contracts ([tool.importlinter] in pyproject.toml), mypy on qsdk/
lint: $(STAMP)
	$(VENV)/bin/ruff check qsdk tests bench notebooks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy qsdk

bench: $(STAMP)
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

## make lab: JupyterLab on 127.0.0.1 with the project's kernel (the venv's python3, preferred over
## user kernelspecs); token auth always on (a fresh token, or LAB_TOKEN=...): open the printed URL
LAB_TOKEN ?= $(shell $(PYTHON) -c 'import secrets; print(secrets.token_hex(24))')
lab: $(STAMP)
	JUPYTER_PREFER_ENV_PATH=1 $(VENV)/bin/jupyter lab --no-browser --ServerApp.ip=127.0.0.1 \
		--ServerApp.root_dir=$(CURDIR) --IdentityProvider.token=$(LAB_TOKEN) \
		$(if $(filter 0,$(shell id -u)),--allow-root)

## make mlflow-ui [MLFLOW_PORT=5000]: the MLflow UI on localhost over the project's tracking store
MLFLOW_PORT ?= 5000
mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port $(MLFLOW_PORT) \
		--backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root $(CURDIR)/mlartifacts

## make mlflow-server [MLFLOW_PORT=5000]: an MLflow tracking server on 127.0.0.1 that also serves the
## artifacts (--serve-artifacts), its runs and artifacts under $(MLFLOW_SERVER_DIR); point every
## process of a run at it with MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT). Its store is its
## own: the embedded mlflow.db records artifact folders on this machine, which a cluster cannot reach.
MLFLOW_SERVER_DIR ?= $(CURDIR)/.mlflow-server
mlflow-server: $(STAMP)
	mkdir -p $(MLFLOW_SERVER_DIR)
	$(VENV)/bin/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1 \
		--backend-store-uri sqlite:///$(MLFLOW_SERVER_DIR)/mlflow.db \
		--serve-artifacts --artifacts-destination $(MLFLOW_SERVER_DIR)/artifacts

## make s3-server [S3_PORT=9000]: a loopback S3-compatible server for trying the object-store lakehouse
## (tests/services/s3server.py: moto, in memory, gone when stopped); then, e.g.:
##   AWS_ENDPOINT_URL=http://127.0.0.1:9000 AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=dev \
##   AWS_SECRET_ACCESS_KEY=dev AWS_REGION=us-east-1 QSDK_LAKEHOUSE=s3://qsdk/lake make flow-backfill
S3_PORT ?= 9000
s3-server: $(STAMP)
	$(PY) -m tests.services.s3server --port $(S3_PORT) --bucket qsdk

## make snapshot NAME=gold [TABLES="silver.prices ..."]: freeze tables into a DVC-tracked golden
## snapshot (snapshots/NAME.dvc) and push it to the default DVC remote (.dvc/config: qsdk-local)
snapshot: $(STAMP)
	@test -n "$(NAME)" || { echo 'usage: make snapshot NAME=... [TABLES="layer.table ..."]' >&2; exit 2; }
	$(QSDK) snapshot create $(NAME) $(TABLES)

## make qsdk ARGS="list": any qsdk command without activating the venv (or: source .venv/bin/activate)
qsdk: $(STAMP)
	$(QSDK) $(ARGS)

## make check: every problem of the registry and its notebooks (exit 1 if any; for CI and pre-commit)
check: $(STAMP)
	$(QSDK) check

## make dvc-dag / make dvc-repro: DVC's view of the same pipeline (its stages call the venv's qsdk)
dvc-dag: $(STAMP)
	$(VENV)/bin/dvc dag $(ARGS)

dvc-repro: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro $(ARGS)

## make dvc-sync: regenerate dvc.yaml (and seed params.yaml) from pipelines/ after a registry change
dvc-sync: $(STAMP)
	$(QSDK) dvc sync

clean:
	rm -rf runs lakehouse lakehouse-repro mlflow.db mlartifacts .mlflow-server .pytest_cache .mypy_cache .import_linter_cache

## re-execute the notebooks under notebooks/ and save their outputs (after an intended change)
regen-notebooks: $(STAMP)
	-QSDK_REGEN_NOTEBOOKS=1 $(PY) -m pytest -q -m notebooks tests/integration/test_notebooks.py
	$(PY) -m pytest -q -m notebooks tests/integration/test_notebooks.py
