"""Helpers for the browser tests: Debian's Chromium, and a headless JupyterLab server.

Playwright's own browser downloads are not used (no network beyond Debian's mirrors): the
tests drive ``/usr/bin/chromium`` from the ``chromium`` package, installed on first use.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def ensure_chromium() -> str:
    """``/usr/bin/chromium``, installing Debian's package first if needed (``apt-get update``
    too when the package lists are stale); ``RuntimeError`` saying what to do if impossible."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise RuntimeError(f"{CHROMIUM} is missing and cannot be installed here (needs apt-get as root): "
                           "run `apt-get install -y chromium` as root, then re-run the tests")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "chromium"]
    log = ""
    for attempt in ([install], [[apt, "update"], install]):  # the package lists may be stale or absent
        for cmd in attempt:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            log = (done.stdout + done.stderr)[-2000:]
            if done.returncode != 0:
                break
        if Path(CHROMIUM).exists():
            return CHROMIUM
    raise RuntimeError(f"installing Debian's chromium failed (apt-get update + install -y chromium); "
                       f"output:\n{log}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    process: subprocess.Popen
    log: list[str] = field(default_factory=list)

    def page_url(self, path: str) -> str:
        return f"{self.url}/lab/tree/{path}?token={self.token}"


@contextmanager
def jupyterlab(root: Path, *, env: Mapping[str, str], work: Path, start_timeout: float = 240) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 (a free port, a random token) serving ``root``; stopped on exit.

    Lab settings and workspaces live under ``work`` so the user's own never leak in, and the
    news/update checks (network) are off.
    """
    settings = work / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = free_port(), secrets.token_hex(16)
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={work / 'lab-settings'}", f"--LabApp.workspaces_dir={work / 'workspaces'}",
        *(["--allow-root"] if os.geteuid() == 0 else []),  # CI containers run as root
    ]
    server_env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(work / "runtime"), **env}
    proc = subprocess.Popen(cmd, cwd=root, env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    lab = Lab(url, token, root, proc)
    ready, serving = threading.Event(), threading.Event()

    def pump() -> None:  # the server announces its URL on stderr once it listens
        for line in proc.stderr:
            lab.log.append(line)
            if f"{url}/" in line:
                serving.set()
                ready.set()
        ready.set()  # the server exited: stop waiting

    threading.Thread(target=pump, daemon=True).start()
    try:
        if not ready.wait(start_timeout) or not serving.is_set():
            raise RuntimeError(f"JupyterLab did not start within {start_timeout} s:\n{''.join(lab.log[-40:])}")
        yield lab
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # our own session: the server and its kernels
                proc.wait(timeout=30)
