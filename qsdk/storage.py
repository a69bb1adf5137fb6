"""Where the lakehouse lives: a local folder (the default) or an S3-compatible object store.

One seam for every file qsdk keeps beside its Delta tables (table listing, commit files read
directly, cache records): a :data:`Location` is a :class:`pathlib.Path` or an
:class:`ObjectPath` (``s3://bucket/prefix``), and the functions here read, write and list either.
Delta tables themselves are opened by deltalake with :func:`storage_options`.

Object-store settings are the standard variables deltalake and the AWS SDKs read:
``AWS_ENDPOINT_URL`` (an S3-compatible server; unset for AWS itself), ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` (default ``us-east-1``), and
``AWS_ALLOW_HTTP=true`` for a plain-http endpoint. qsdk adds no variable of its own.

Concurrent commits need the store to honour conditional puts (``If-None-Match: *``), as AWS S3,
MinIO and R2 do: deltalake (1.x) writes each commit file with one, so two writers never both
commit one version. This module is light at import; pyarrow is imported on first use.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from qsdk.errors import ConfigError

SCHEMES = ("s3", "s3a")
ENV_ENDPOINT = "AWS_ENDPOINT_URL"
ENV_ALLOW_HTTP = "AWS_ALLOW_HTTP"
# the variables an object-store lakehouse reads (what the workers of a cluster need too)
ENV_VARS = (ENV_ENDPOINT, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
            "AWS_REGION", "AWS_DEFAULT_REGION", ENV_ALLOW_HTTP, "AWS_PROFILE")
_CREDENTIAL_SOURCES = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                       "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")


@dataclass(frozen=True)
class ObjectPath:
    """``s3://bucket/key``: a path in an object store, with the few ``Path`` operations qsdk uses."""

    bucket: str
    key: str = ""
    scheme: str = "s3"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}".rstrip("/")

    def __truediv__(self, part: str) -> ObjectPath:
        key = "/".join(p for p in (self.key, str(part).strip("/")) if p)
        return ObjectPath(self.bucket, key, self.scheme)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.bucket, self.key.rpartition("/")[0], self.scheme)

    def is_relative_to(self, other: Location) -> bool:
        return isinstance(other, ObjectPath) and other.bucket == self.bucket and (
            not other.key or self.key == other.key or self.key.startswith(other.key + "/"))


Location = Path | ObjectPath


def is_uri(value: str | os.PathLike[str]) -> bool:
    return isinstance(value, str) and "://" in value


def location(value: str | os.PathLike[str] | ObjectPath, *, base: Path | None = None) -> Location:
    """A lakehouse root as given: ``s3://bucket/prefix``, or a folder (relative to ``base``)."""
    if isinstance(value, ObjectPath):
        return value
    if is_uri(value):
        url = urlparse(str(value))
        if url.scheme not in SCHEMES or not url.netloc:
            raise ConfigError(
                f"lakehouse location {value!r}: qsdk supports local folders and s3://bucket/prefix "
                f"(any S3-compatible store, with {ENV_ENDPOINT} set for one that is not AWS)")
        return ObjectPath(url.netloc, url.path.strip("/"), "s3")
    path = Path(value).expanduser()
    return (path if path.is_absolute() or base is None else base / path).resolve()


def is_remote(loc: Location | str) -> bool:
    return isinstance(loc, ObjectPath) or (isinstance(loc, str) and is_uri(loc))


def _env(name: str) -> str:
    return os.environ.get(name, "")


def check_settings() -> None:
    """Raise :class:`ConfigError` when the object-store variables cannot work, naming the fix."""
    endpoint = _env(ENV_ENDPOINT)
    if endpoint.startswith("http://") and _env(ENV_ALLOW_HTTP).lower() != "true":
        raise ConfigError(f"{ENV_ENDPOINT}={endpoint} is plain http: set {ENV_ALLOW_HTTP}=true "
                          "to allow it (only for a server on a trusted network, such as loopback)")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{ENV_ENDPOINT}={endpoint!r} must be a URL, e.g. http://127.0.0.1:9000")
    if not any(_env(name) for name in _CREDENTIAL_SOURCES):
        raise ConfigError(
            "the lakehouse is on an object store but no credentials are set: set AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL for a server that is "
            "not AWS S3")
    if _env("AWS_ACCESS_KEY_ID") and not _env("AWS_SECRET_ACCESS_KEY"):
        raise ConfigError("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set both")


def storage_options(loc: Location | str) -> dict[str, str] | None:
    """The ``storage_options`` deltalake gets for a table under ``loc`` (``None`` when local).

    deltalake reads the same variables itself; passing them makes a worker that was handed a
    different environment fail loudly rather than write elsewhere.
    """
    if not is_remote(loc):
        return None
    check_settings()
    options = {name: _env(name) for name in ENV_VARS if _env(name) and name != "AWS_DEFAULT_REGION"}
    options.setdefault("AWS_REGION", _env("AWS_DEFAULT_REGION") or "us-east-1")
    return options


# ------------------------------------------------------------------ small files, through pyarrow.fs
def _filesystem(loc: Location) -> tuple[Any, str]:
    from pyarrow import fs

    if isinstance(loc, Path):
        return fs.LocalFileSystem(), str(loc)
    check_settings()
    return _s3(*(_env(name) for name in ENV_VARS)), f"{loc.bucket}/{loc.key}".rstrip("/")


@functools.lru_cache(maxsize=4)
def _s3(endpoint: str, key: str, secret: str, token: str, region: str, default_region: str,
        allow_http: str, profile: str) -> Any:
    from pyarrow import fs

    url = urlparse(endpoint) if endpoint else None
    return fs.S3FileSystem(
        access_key=key or None, secret_key=secret or None, session_token=token or None,
        region=region or default_region or "us-east-1",
        endpoint_override=url.netloc if url else None, scheme=url.scheme if url else "https",
    )


def exists(loc: Location) -> bool:
    if isinstance(loc, Path):
        return loc.exists()
    filesystem, path = _filesystem(loc)
    return bool(filesystem.get_file_info(path).type.name != "NotFound")


def listdir(loc: Location) -> list[str]:
    """Names directly under folder ``loc`` (files and folders), sorted; ``[]`` if there is none."""
    if isinstance(loc, Path):
        try:
            with os.scandir(loc) as entries:
                return sorted(entry.name for entry in entries)
        except (FileNotFoundError, NotADirectoryError):
            return []
    from pyarrow import fs

    filesystem, path = _filesystem(loc)
    infos = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def object_tree(loc: ObjectPath, *, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, int]]:
    """``{key relative to loc: (mtime_ns, size)}`` of every object under ``loc`` (one recursive
    listing), leaving out the top-level folders named in ``skip``."""
    from pyarrow import fs

    filesystem, path = _filesystem(loc)
    infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True, allow_not_found=True))
    out: dict[str, tuple[int, int]] = {}
    for info in infos:
        if info.type != fs.FileType.File:
            continue
        rel = info.path[len(path):].lstrip("/")
        if rel.split("/", 1)[0] in skip:
            continue
        out[rel] = (info.mtime_ns or 0, info.size or 0)
    return out


def read_text(loc: Location) -> str | None:
    """The file's text; ``None`` when there is no such file."""
    if isinstance(loc, Path):
        try:
            return loc.read_text()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
    filesystem, path = _filesystem(loc)
    try:
        with filesystem.open_input_stream(path) as stream:
            return str(stream.read().decode())
    except FileNotFoundError:
        return None


def write_text(loc: Location, text: str) -> None:
    """Replace the file's content atomically: a reader sees the old text or the new, never half."""
    if isinstance(loc, Path):
        loc.parent.mkdir(parents=True, exist_ok=True)
        tmp = loc.with_name(f".{loc.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(loc)
        return
    filesystem, path = _filesystem(loc)  # one PUT: atomic on an object store
    with filesystem.open_output_stream(path) as stream:
        stream.write(text.encode())


def delete(loc: Location) -> None:
    """Remove the file if it is there."""
    if isinstance(loc, Path):
        loc.unlink(missing_ok=True)
        return
    filesystem, path = _filesystem(loc)
    try:
        filesystem.delete_file(path)
    except FileNotFoundError:
        pass
