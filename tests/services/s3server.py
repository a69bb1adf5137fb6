"""A loopback S3-compatible server for tests and local use: moto's S3 backend, served by werkzeug.

``python -m tests.services.s3server --port 0 [--bucket NAME]`` prints ``listening on http://127.0.0.1:PORT`` once it
accepts connections, and serves until it is terminated. ``make s3-server`` runs it on a fixed port.

Why not moto's own ``ThreadedMotoServer``: moto answers ``PutObject`` with ``If-None-Match: *``
(a conditional put, what delta-rs relies on so that two writers never both commit one version)
by checking for the key and then storing it, in two steps. Under a threaded server two racing
puts can both pass the check (rarely: the window is short), which real S3 never allows, and a
test of races must not pass by luck. Here every mutating request (PUT, POST,
DELETE) is served under one lock, so a conditional put is atomic as on S3; reads stay parallel.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

_MUTATING = frozenset({"PUT", "POST", "DELETE"})


class _AtomicWrites:
    """WSGI middleware: mutating requests one at a time (the whole request, body included)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in _MUTATING:
            return self.app(environ, start_response)
        with self.lock:
            return list(self.app(environ, start_response))  # consumed under the lock


def serve(host: str, port: int, *, buckets: list[str]) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = _AtomicWrites(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
    if buckets:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        for bucket in buckets:  # any access key maps to moto's default account
            s3_backends[DEFAULT_ACCOUNT_ID]["global"].create_bucket(bucket, "us-east-1")
    print(f"listening on http://{host}:{server.server_port}", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0: any free port (printed)")
    parser.add_argument("--bucket", action="append", default=[], help="a bucket to create (repeatable)")
    args = parser.parse_args(argv)
    try:
        serve(args.host, args.port, buckets=args.bucket)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
