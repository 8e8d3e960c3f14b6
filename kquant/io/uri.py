"""Where sources and stores live: local paths, ``file://`` URLs, or fsspec URLs (``s3://``).

Object-store credentials and endpoints come from the usual environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for S3-compatible
servers), or as fsspec storage options in JSON in ``KQUANT_STORAGE_OPTIONS``; the same
environment reaches dask workers started with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kquant.errors import KquantError


def is_remote(uri) -> bool:
    """True for URLs other than ``file://`` (``s3://bucket/key``, ``gs://``, ...)."""
    text = os.fspath(uri)
    return "://" in text and not text.startswith("file://")


def local_path(uri) -> Path:
    """Absolute local path of a plain path or ``file://`` URL."""
    text = os.fspath(uri)
    if text.startswith("file://"):
        text = text[len("file://"):]
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

    return FsspecStore.from_url(os.fspath(uri), storage_options=storage_options() or None,
                                read_only=read_only)


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
