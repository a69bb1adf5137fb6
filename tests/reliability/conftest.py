"""Helpers of the reliability suite: table state, and a loopback rendezvous with a notebook.

A notebook that must be caught mid-cell (to be killed from outside, or to keep its kernel
alive while the test inspects sockets) connects to a :class:`Rendezvous` the test listens on,
sends its pid, and blocks until the test answers: an event, not a sleep.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest

from qsdk.lakehouse.tables import Lakehouse


@dataclass(frozen=True)
class TableState:
    version: int | None
    rows: int | None


def state(lake: Lakehouse, table: str) -> TableState:
    info = lake.info(table)
    return TableState(info.version, info.rows)


# Pasted into a notebook cell: connects to the test, sends this kernel's pid, waits for "go".
NOTEBOOK_RENDEZVOUS = """import os, socket
with socket.create_connection(("127.0.0.1", port), timeout=120) as _conn:
    _conn.sendall(str(os.getpid()).encode() + b"\\n")
    _answer = _conn.makefile().readline()  # blocks until the test answers (or kills us)
"""


class Rendezvous:
    """A loopback listener: :meth:`wait` returns ``(connection, pid)`` of the notebook that called."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._conns: list[socket.socket] = []

    def wait(self, *, timeout: float = 120.0) -> tuple[socket.socket, int]:
        self._server.settimeout(timeout)
        conn, _ = self._server.accept()
        self._conns.append(conn)
        conn.settimeout(timeout)
        pid = int(conn.makefile().readline())
        return conn, pid

    @staticmethod
    def release(conn: socket.socket) -> None:
        conn.sendall(b"go\n")

    def close(self) -> None:
        for conn in self._conns:
            conn.close()
        self._server.close()


@pytest.fixture
def rendezvous():
    r = Rendezvous()
    yield r
    r.close()
