"""The one place qsdk calls DVC: its command line, in a subprocess, with this interpreter.

DVC's documented Python API (``dvc.api``) only reads; ``dvc.repo.Repo``'s methods are
internals that change between releases and keep process-wide state (locks, logging). The
command line is DVC's stable interface, so qsdk runs ``python -m dvc ...`` with the same
interpreter (the venv's DVC, whatever is on ``PATH``) and wraps a failure once, here, as
:class:`~qsdk.errors.VersioningError` with DVC's own last words.

qsdk never runs ``dvc init``: a project uses DVC once someone initialised it. This repository
commits DVC's project files (``.dvc/config``, ``.dvcignore``), with the local default remote
``qsdk-local`` at ``~/.cache/qsdk/dvc-remote``, so a fresh clone is a DVC project already.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from qsdk.errors import ConfigError, VersioningError

ENV_REMOTE = "QSDK_DVC_REMOTE"
DEFAULT_REMOTE_NAME = "qsdk-local"
DEFAULT_REMOTE_URL = "~/.cache/qsdk/dvc-remote"
_TIMEOUT = 3600.0


def find_root(start: Path) -> Path | None:
    """The DVC repository (a folder with ``.dvc/``) at or above ``start``, if any."""
    start = start.resolve()
    return next((p for p in (start, *start.parents) if (p / ".dvc").is_dir()), None)


def require_root(project_root: Path) -> Path:
    root = find_root(project_root)
    if root is None:
        raise ConfigError(
            f"{project_root} is not inside a DVC repository: run `dvc init` at the root of its git "
            "repository once (and commit .dvc/), then retry; qsdk never initialises DVC for you",
            project_root=str(project_root),
        )
    return root


def run(*args: str, cwd: Path, check: bool = True, timeout: float = _TIMEOUT) -> subprocess.CompletedProcess:
    """``dvc ARGS`` in ``cwd``; a non-zero exit raises :class:`VersioningError` when ``check``."""
    cmd = [sys.executable, "-m", "dvc", *args]
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "DVC_IGNORE_ISATTY": "1"}, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VersioningError(f"`dvc {' '.join(args)}` could not run in {cwd}: {exc}") from exc
    if check and proc.returncode != 0:
        raise VersioningError(
            f"`dvc {' '.join(args)}` failed in {cwd} (exit {proc.returncode}): {last_words(proc)}",
            command=["dvc", *args], returncode=proc.returncode, stderr=proc.stderr,
        )
    return proc


def last_words(proc: subprocess.CompletedProcess, lines: int = 6) -> str:
    text = (proc.stderr or "").strip() or (proc.stdout or "").strip()
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip()) or "(no output)"


def default_remote(cwd: Path) -> str | None:
    proc = run("remote", "default", cwd=cwd, check=False)
    name = proc.stdout.strip()
    return name if proc.returncode == 0 and name else None


def ensure_remote(cwd: Path) -> str:
    """The name of the default DVC remote; configure a local folder remote when there is none.

    The automatic remote, ``qsdk-local`` (committed in this repository's ``.dvc/config``, or
    added to ``.dvc/config.local``, never committed), is the folder ``$QSDK_DVC_REMOTE`` or
    ``~/.cache/qsdk/dvc-remote``, shared by every project of this user (DVC stores content by
    hash, so sharing is safe); ``$QSDK_DVC_REMOTE`` overrides its folder in ``config.local``.
    To use another remote, configure it the DVC way (``dvc remote add -d NAME URL``); qsdk then
    pushes there.

    ``$QSDK_DVC_REMOTE`` may be ``s3://bucket/prefix`` (the object store a cluster's lakehouse is
    on): its endpoint and region come from ``AWS_ENDPOINT_URL`` and ``AWS_REGION``, written into
    ``config.local`` beside the URL; the credentials stay in the environment (dvc-s3 reads
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` itself) and never reach a file.
    """
    name = default_remote(cwd)
    if name and (name != DEFAULT_REMOTE_NAME or not os.environ.get(ENV_REMOTE)):
        return name
    url = os.environ.get(ENV_REMOTE) or DEFAULT_REMOTE_URL
    if "://" not in url:
        url = str(Path(url).expanduser().resolve())
        Path(url).mkdir(parents=True, exist_ok=True)
    run("remote", "add", "--local", "--force", "--default", DEFAULT_REMOTE_NAME, url, cwd=cwd)
    if url.startswith("s3://"):
        for option, variable in (("endpointurl", "AWS_ENDPOINT_URL"), ("region", "AWS_REGION")):
            if value := os.environ.get(variable):
                run("remote", "modify", "--local", DEFAULT_REMOTE_NAME, option, value, cwd=cwd)
    return DEFAULT_REMOTE_NAME


def cache_dir(cwd: Path) -> Path:
    return Path(run("cache", "dir", cwd=cwd).stdout.strip())


def cache_file(cache: Path, md5: str) -> Path:
    """Where DVC 3 keeps the object with hash ``md5`` in cache folder ``cache``."""
    return cache / "files" / "md5" / md5[:2] / md5[2:]
