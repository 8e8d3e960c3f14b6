"""The batch's inbox and outbox: which files are new images, where their stores go, and
whether a store already there is this run's result."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

from kquant import pipeline, store
from kquant.errors import InputError, KquantError
from kquant.io import uri as kuri
from kquant.params import QuantizeParams

#: Extensions the batch flow picks up from an inbox (case-insensitive).
IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".gif",
    ".webp",
    ".ppm",
    ".pgm",
    ".pnm",
    ".zarr",
)
#: Names of files still being copied in (left for the next run).
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".filepart")
#: ``<outbox>/<relative path of the image>.kquant``
STORE_SUFFIX = ".kquant"
#: ``<outbox>/<relative path of the image>.quarantined.json``: an image that cannot be read,
#: with its one-line reason, left out of later runs until the file changes.
QUARANTINE_SUFFIX = ".quarantined.json"


def preview_path(target: str | os.PathLike) -> str:
    """Where the preview picture of a store goes: ``X.kquant`` -> ``X-preview.png`` (as
    ``kquant demo``)."""
    target = kuri.normalise(target).rstrip("/")
    head, _, name = target.rpartition("/")
    stem = name[: -len(STORE_SUFFIX)] if name.endswith(STORE_SUFFIX) else name
    return f"{head}/{stem}-preview.png"


def target_of(outbox: str, rel: str) -> str:
    """The store of the image at ``rel`` (relative to the inbox) in ``outbox``."""
    return kuri.join(outbox, rel + STORE_SUFFIX)


def _mtime(info: dict) -> float:
    """Modification time (s since the epoch) from an fsspec info dict, 0 if unknown."""
    for key in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return 0.0


def _candidates(inbox: str, pattern: str) -> list[tuple[str, str, bool, float]]:
    """``(uri, relative path, is_dir, mtime)`` of everything matching ``pattern`` in the inbox."""
    if kuri.is_remote(inbox):
        fs, base = kuri.filesystem(inbox)
        base = base.rstrip("/")
        fs.invalidate_cache()  # a poll must see what arrived since the last listing
        protocol = inbox.split("://", 1)[0]
        out = []
        for path, info in sorted(fs.glob(f"{base}/{pattern}", detail=True).items()):
            rel = path[len(base) :].lstrip("/")
            if rel:
                out.append(
                    (f"{protocol}://{path}", rel, info.get("type") == "directory", _mtime(info))
                )
        return out
    root = kuri.local_path(inbox)
    if not root.is_dir():
        raise InputError(f"inbox {root} is not a folder")
    return [
        (str(p), p.relative_to(root).as_posix(), p.is_dir(), p.stat().st_mtime)
        for p in sorted(root.glob(pattern))
    ]


def list_images(
    inbox: str, pattern: str = "*", settle_seconds: float = 0.0, logger=None
) -> list[tuple[str, str]]:
    """``(URI, path relative to the inbox)`` of the images to consider, sorted.

    The inbox is a local folder (or ``file://`` URI) or an object-store prefix
    (``s3://bucket/prefix``). Hidden and partial files, names without an image
    extension and files modified less than ``settle_seconds`` ago are left out.

    Raises
    ------
    InputError
        If a local inbox is not a folder, or the inbox was not set.
    """
    if "{{" in str(inbox):
        raise InputError(
            f"inbox is not set ({inbox}): set KQUANT_INBOX when deploying, "
            "or pass --param inbox=FOLDER"
        )
    now = time.time()
    found, unsettled = [], []
    for uri, rel, is_dir, mtime in _candidates(kuri.normalise(inbox), pattern):
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        name = rel.rsplit("/", 1)[-1].lower()
        if name.endswith(PARTIAL_SUFFIXES) or not name.endswith(IMAGE_SUFFIXES):
            continue
        if is_dir != name.endswith(".zarr"):
            continue
        if settle_seconds and now - mtime < settle_seconds:
            unsettled.append(rel)
            continue
        found.append((uri, rel))
    if unsettled and logger is not None:
        logger.info(
            "left for the next run (modified less than %.0f s ago): %s",
            settle_seconds,
            ", ".join(unsettled),
        )
    return found


def existing_shared_palette(targets: list[str], params: dict):
    """The palette all the complete stores share, if they do and were made with these
    parameters, and the index they reserve for masked pixels: ``(palette, index)``."""
    palettes, reserved = [], set()
    for t in targets:
        try:
            st = store.open_store(t)
        except KquantError:
            return None
        if st.meta.params != params:
            return None
        palettes.append(st.palette.tolist())
        reserved.add(st.meta.nodata_index)
    if palettes and all(p == palettes[0] for p in palettes) and len(reserved) == 1:
        return palettes[0], reserved.pop()
    return None


def not_done_here(target: str, source: str, params: dict, imposed: dict | None) -> str | None:
    """Why the complete store at ``target`` is not this run's result for ``source`` (a
    one-line reason), or None when it is: the same file (URI, size, mtime, ETag), the same
    parameters and, with an imposed palette, that palette. A store that does not record
    its source's identity is taken as done."""
    try:
        meta = store.read_meta(target)
    except KquantError as exc:
        return str(exc)  # one line (KquantError)
    if "mtime_ns" not in meta.source:
        return None
    if (
        pipeline.finished_store(
            target,
            source,
            QuantizeParams.from_json(params),
            palette=imposed["palette"] if imposed else None,
        )
        is not None
    ):
        return None
    return (
        f"{target} exists, made from another version of the image or with other "
        "parameters; remove it to quantize the image again"
    )


# --------------------------------------------------------------------------- quarantine


def quarantine_path(outbox: str, rel: str) -> str:
    """Where the quarantine record of the image at ``rel`` goes in ``outbox``."""
    return kuri.join(outbox, rel + QUARANTINE_SUFFIX)


def file_stamp(uri: str) -> dict:
    """What tells one version of a file from another: size, modification time, ETag."""
    uri = kuri.normalise(uri)
    if not kuri.is_remote(uri):
        st = kuri.local_path(uri).stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    fs, path = kuri.filesystem(uri)
    info = fs.info(path)
    return {
        "size": info.get("size"),
        "mtime": _mtime(info),
        "etag": str(info.get("ETag") or info.get("etag") or ""),
    }


def _read_text(uri: str) -> str | None:
    try:
        if kuri.is_remote(uri):
            fs, path = kuri.filesystem(uri)
            return fs.cat_file(path).decode()
        return kuri.local_path(uri).read_text()
    except (FileNotFoundError, OSError):
        return None


def quarantined(outbox: str, source: str, rel: str) -> str | None:
    """The one-line reason the image at ``rel`` is in quarantine, or None: no record, or
    the file changed since (a new version is tried again)."""
    text = _read_text(quarantine_path(outbox, rel))
    if text is None:
        return None
    try:
        record = json.loads(text)
        if record["stamp"] == file_stamp(source):
            return str(record["reason"])
    except (ValueError, KeyError, TypeError, OSError):
        pass
    return None


def quarantine(outbox: str, source: str, rel: str, reason: str) -> str:
    """Record that the image at ``rel`` cannot be read (``reason``: one line); later runs
    leave it out until the file changes. Returns the record's URI."""
    record = {
        "source": kuri.normalise(source),
        "stamp": file_stamp(source),
        "reason": reason,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    where = quarantine_path(outbox, rel)
    data = json.dumps(record, indent=1) + "\n"
    if kuri.is_remote(where):
        fs, path = kuri.filesystem(where)
        fs.pipe_file(path, data.encode())
    else:
        path = kuri.local_path(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(data)
        os.replace(tmp, path)
    return where


def release(outbox: str, rel: str) -> None:
    """Drop the quarantine record of the image at ``rel``, if there is one."""
    where = quarantine_path(outbox, rel)
    try:
        if kuri.is_remote(where):
            fs, path = kuri.filesystem(where)
            if fs.exists(path):
                fs.rm_file(path)
        else:
            kuri.local_path(where).unlink(missing_ok=True)
    except OSError:
        pass
