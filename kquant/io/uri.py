"""Where sources and stores live: local paths, ``file://`` URLs, or fsspec URLs (``s3://``).

Object-store credentials and endpoints come from the usual environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for S3-compatible
servers), or as fsspec storage options in JSON in ``KQUANT_STORAGE_OPTIONS``; the same
environment reaches dask workers started with it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from kquant.errors import KquantError, ObjectStoreError, StorageUnreachableError


def is_remote(uri) -> bool:
    """True for URLs other than ``file://`` (``s3://bucket/key``, ``gs://``, ...)."""
    text = os.fspath(uri)
    return "://" in text and not text.startswith("file://")


def local_path(uri) -> Path:
    """Absolute local path of a plain path or ``file://`` URL."""
    text = os.fspath(uri)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return Path(text).expanduser().absolute()


def normalise(uri) -> str:
    """The canonical text of a URI: an absolute path for local ones, the URL otherwise."""
    return os.fspath(uri) if is_remote(uri) else str(local_path(uri))


def storage_options() -> dict:
    """fsspec storage options from ``KQUANT_STORAGE_OPTIONS`` (JSON), else {}.

    Raises
    ------
    KquantError
        If the variable is not a JSON object.
    """
    text = os.environ.get("KQUANT_STORAGE_OPTIONS")
    if not text:
        return {}
    try:
        opts = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KquantError(f"KQUANT_STORAGE_OPTIONS is not valid JSON: {exc}") from None
    if not isinstance(opts, dict):
        raise KquantError("KQUANT_STORAGE_OPTIONS must be a JSON object")
    return opts


def filesystem(uri):
    """``(fs, path)`` of an fsspec URL.

    Raises
    ------
    KquantError
        If the URL's protocol has no installed fsspec implementation.
    """
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(os.fspath(uri), **storage_options())
    except (ImportError, ValueError) as exc:
        raise KquantError(f"cannot open {os.fspath(uri)}: {exc}") from None
    return fs, path


def zarr_store(uri, *, read_only: bool = False):
    """A zarr store for a local path or URL (for ``zarr.open_group``/``open_array``)."""
    if not is_remote(uri):
        return str(local_path(uri))
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(
        os.fspath(uri), storage_options=storage_options() or None, read_only=read_only
    )


def name(uri) -> str:
    """The last component of a path or URL (``s3://b/x/photo.png`` -> ``photo.png``)."""
    return normalise(uri).rstrip("/").rsplit("/", 1)[-1]


def display(uri) -> str:
    """A URI to show a person: ``file://`` URL of a local path, the URL itself otherwise."""
    text = normalise(uri)
    return text if is_remote(text) else local_path(text).as_uri()


def join(base, rel: str) -> str:
    """``base/rel`` for a folder path or an object-store prefix."""
    base = normalise(base)
    return f"{base.rstrip('/')}/{rel}" if is_remote(base) else str(local_path(base) / rel)


# --------------------------------------------------------------------------- errors

#: Error codes of an object store that mean the credentials may not do this.
_DENIED = {
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "InvalidSecurity",
    "RequestTimeTooSkewed",
    "403",
}
#: Exception classes (by name: botocore, aiohttp, fsspec, builtins) of an unreachable endpoint.
_UNREACHABLE = {
    "EndpointConnectionError": "connection refused or failed",
    "ConnectTimeoutError": "connect timeout",
    "ReadTimeoutError": "read timeout",
    "ConnectionClosedError": "connection closed",
    "ServerDisconnectedError": "connection closed",
    "ClientConnectorError": "connection refused or failed",
    "ClientOSError": "connection failed",
    "FSTimeoutError": "timeout",
    "ConnectionResetError": "connection reset",
    "ConnectionRefusedError": "connection refused",
    "TimeoutError": "timeout",
}
#: Codes that callers report better themselves (a missing object: "no such file", ...).
_NOT_FOUND = {"NoSuchKey", "404", "NoSuchUpload", "NoSuchVersion"}


def _causes(exc: BaseException | None):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 10:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _bucket(url: str) -> str:
    return urlsplit(url).netloc


def storage_error(exc: BaseException, *urls) -> ObjectStoreError | None:
    """The one-line :class:`ObjectStoreError` an object-store failure stands for, or None.

    ``exc`` is what fsspec (s3fs, botocore, aiohttp) raised; the message names the first
    remote URL of ``urls`` whose bucket the failure concerns (else the first remote one)
    and the cause: ``s3://b/out.kquant: bucket 'b' does not exist``, ``...: access denied
    (AccessDenied: ...)``, ``...: cannot reach the object store at http://host:port
    (connect timeout)``. Missing objects give None (callers say what was missing).
    """
    remote = [os.fspath(u) for u in urls if u is not None and is_remote(u)]
    for e in _causes(exc):
        response = getattr(e, "response", None)
        error = response.get("Error") if isinstance(response, dict) else None
        if isinstance(error, dict) and error.get("Code"):
            code, message = str(error["Code"]), " ".join(str(error.get("Message", "")).split())
            bucket = error.get("BucketName")
            url = next(
                (u for u in remote if bucket and _bucket(u) == bucket),
                remote[0] if remote else f"s3://{bucket or '?'}",
            )
            if code == "NoSuchBucket":
                return ObjectStoreError(f"{url}: bucket '{bucket or _bucket(url)}' does not exist")
            if code in _DENIED:
                return ObjectStoreError(f"{url}: access denied ({code}: {message or 'forbidden'})")
            if code in _NOT_FOUND:
                return None
            return ObjectStoreError(
                f"{url}: the object store refused the request ({code}: {message or 'no message'})"
            )
        names = [c.__name__ for c in type(e).__mro__]
        reason = next((_UNREACHABLE[n] for n in names if n in _UNREACHABLE), None)
        if reason is not None:
            kwargs = getattr(e, "kwargs", None) or {}
            request = str(kwargs.get("endpoint_url") or "")
            parts = urlsplit(request)
            path = parts.path.lstrip("/")
            url = next(
                (u for u in remote if path and path.startswith(_bucket(u) + "/")),
                remote[0] if remote else request or "the object store",
            )
            where = f" at {parts.scheme}://{parts.netloc}" if parts.netloc else ""
            return StorageUnreachableError(
                f"{url}: cannot reach the object store{where} ({reason})"
            )
    return None


@contextlib.contextmanager
def storage_errors(*urls):
    """Turn an object-store failure inside the block into its :func:`storage_error`.

    Raises
    ------
    ObjectStoreError
        For a missing bucket, denied access or another refusal naming the first remote URL
        of ``urls`` concerned; :class:`StorageUnreachableError` for an unreachable endpoint.
        Anything else (and everything when no URL is remote) is re-raised unchanged.
    """
    try:
        yield
    except KquantError:
        raise
    except Exception as exc:
        if not any(u is not None and is_remote(u) for u in urls):
            raise
        err = storage_error(exc, *urls)
        if err is None:
            raise
        raise err from exc
