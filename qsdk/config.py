"""Where things live: project root, lakehouse root, runs folder. One place, env overrides.

Resolution order for each setting: explicit argument > environment variable > default
relative to the project root. ``QSDK_LAKEHOUSE`` may be ``s3://bucket/prefix`` (see
:mod:`qsdk.storage` for the variables an object store reads). The project root is ``QSDK_PROJECT`` or the nearest folder at
or above the current directory that has a ``pipelines/`` folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from qsdk.errors import ConfigError
from qsdk.storage import Location, ObjectPath, location

ENV_PROJECT = "QSDK_PROJECT"
ENV_LAKEHOUSE = "QSDK_LAKEHOUSE"
ENV_RUNS = "QSDK_RUNS"
ENV_TRACKING = "MLFLOW_TRACKING_URI"

# The executor every front-end and the SDK use when none is named (`qsdk run`, run_pipeline, the
# launcher, reproduce): "local", one notebook at a time in this process. An embedded Ray costs
# about 8 s to start and 1.5 s to stop on every `qsdk run`, more than most everyday runs (a
# daily session, one stage, a cached re-run) take; a long backfill gains from Ray's partitions
# in parallel: `--executor ray`. Change it here, in one place (README: "Execution on Ray").
DEFAULT_EXECUTOR = "local"


def find_project_root(start: Path | None = None) -> Path:
    if env := os.environ.get(ENV_PROJECT):
        root = Path(env).expanduser().resolve()
        if not (root / "pipelines").is_dir():
            raise ConfigError(f"{ENV_PROJECT}={env} has no pipelines/ folder; point it at a qsdk project")
        return root
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pipelines").is_dir():
            return candidate
    raise ConfigError(
        f"no qsdk project found at or above {here}: run from a folder with pipelines/, "
        f"or set {ENV_PROJECT}"
    )


def absolute_tracking_uri(uri: str) -> str:
    """``uri`` with a relative SQLite file or store folder made absolute (from the current folder):
    the tracking agent and Ray workers run elsewhere, and must reach the same store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri.removeprefix("sqlite:///")
        if path and not path.startswith(":memory:"):
            return f"sqlite:///{Path(path).resolve()}"
    elif uri.startswith("file:") and not uri.startswith("file:/"):
        return Path(uri.removeprefix("file:")).resolve().as_uri()
    elif "://" not in uri and uri not in ("databricks", "databricks-uc", "uc"):
        return Path(uri).resolve().as_uri()  # a plain folder: MLflow's file store
    return uri


@dataclass(frozen=True)
class Config:
    project_root: Path
    lakehouse_root: Location  # a folder, or an ObjectPath (s3://bucket/prefix)
    runs_dir: Path
    # MLflow store: MLFLOW_TRACKING_URI (e.g. a tracking server), else a SQLite file in the project
    tracking_uri: str = ""

    def __post_init__(self) -> None:
        uri = self.tracking_uri or os.environ.get(ENV_TRACKING) or f"sqlite:///{self.project_root / 'mlflow.db'}"
        object.__setattr__(self, "tracking_uri", absolute_tracking_uri(uri))

    @property
    def pipelines_dir(self) -> Path:
        return self.project_root / "pipelines"

    @classmethod
    def load(
        cls,
        project_root: str | Path | None = None,
        *,
        lakehouse_root: str | Path | ObjectPath | None = None,
        runs_dir: str | Path | None = None,
    ) -> Config:
        root = Path(project_root).resolve() if project_root else find_project_root()
        lake = lakehouse_root or os.environ.get(ENV_LAKEHOUSE) or root / "lakehouse"
        runs = runs_dir or os.environ.get(ENV_RUNS) or root / "runs"
        return cls(project_root=root, lakehouse_root=location(lake, base=root), runs_dir=_abs(runs, root))

    def with_lakehouse(self, lakehouse_root: str | Path | ObjectPath) -> Config:
        return replace(self, lakehouse_root=location(lakehouse_root, base=self.project_root))


def _abs(path: str | Path, root: Path) -> Path:
    p = Path(path).expanduser()
    return (p if p.is_absolute() else root / p).resolve()
