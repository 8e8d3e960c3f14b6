"""The batch's inbox and outbox: which files are new images, where their stores go, and
whether a store already there is this run's result."""

from __future__ import annotations

import os
import time

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
