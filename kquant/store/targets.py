"""What a run may write or replace: store targets and output files, and whether a target
holds a store (``--overwrite`` replaces only what kquant wrote; docs/format.md)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from kquant.errors import KquantError, ParameterError, StoreError, TargetExistsError
from kquant.io import uri as uri_mod
from kquant.store.format import FORMAT, LEVELS_GROUP
from kquant.store.reader import read_meta
from kquant.store.recovery import _remote_state, _remove_remote


def _exists(uri: str) -> bool:
    if uri_mod.is_remote(uri):
        with uri_mod.storage_errors(uri):
            fs, path = uri_mod.filesystem(uri)
            if not (fs.exists(path) and (fs.isfile(path) or fs.ls(path))):
                return False
            return not _abandoned(fs, path, uri)
    return os.path.lexists(uri)


def _abandoned(fs, path: str, uri: str) -> bool:
    """An unfinished store written in place on object storage whose run is gone (no live
    lock holder): it counts as absent, and the next run's :func:`recover` removes it."""
    from kquant.store import locking

    if fs.isfile(path) or _remote_state(fs, path) not in ("writing", "partial"):
        return False
    return not locking.holder_alive(uri)


def _remove(uri: str) -> None:
    if uri_mod.is_remote(uri):
        fs, path = uri_mod.filesystem(uri)
        _remove_remote(fs, path)
    elif os.path.isdir(uri) and not os.path.islink(uri):
        shutil.rmtree(uri, ignore_errors=True)
    elif os.path.lexists(uri):
        os.unlink(uri)


def _sibling(uri: str, tag: str) -> str:
    head, _, name = uri.rstrip("/").rpartition("/")
    return f"{head}/.{name}.kquant-{tag}-{uuid.uuid4().hex[:12]}"


def check_target(target: str | os.PathLike, *, overwrite: bool, source=None) -> str:
    """Refuse a store target that may not be written; return its canonical URI
    (an absolute path, or a URL without repeated or trailing slashes).

    ``overwrite`` replaces only what kquant wrote: an existing kquant store, complete or
    not (a folder or prefix whose ``zarr.json`` holds kquant attributes and nothing
    besides the store's own entries), or an empty folder. Never the source, never a
    folder or prefix holding it, never a file or a folder that is not a kquant store.

    Parameters
    ----------
    target : str or path-like
        Local path, ``file://`` or fsspec URL of the store to write.
    overwrite : bool, keyword-only
        Allow replacing an existing kquant store.
    source : str, path-like or ImageSource, optional, keyword-only
        The image the store is written from: refused as, or inside, the target.

    Raises
    ------
    UnsafeTargetError
        If the target is or holds the source, or exists and is not a kquant store (with
        ``overwrite``); nothing is touched.
    TargetExistsError
        If the target exists and ``overwrite`` is false.
    StoreError
        If the parent folder of a local target does not exist.
    """
    from kquant.errors import UnsafeTargetError

    uri = uri_mod.normalise(target)
    if uri_mod.is_remote(uri):  # the prefix zarr writes: no repeated or trailing slashes
        uri = _remote_key(uri)
    if _exists(uri):
        if source is not None and _holds(uri, source):
            what = "is" if _holds(source, uri) else "holds"
            raise UnsafeTargetError(f"{uri} {what} the source {_uri_of(source)}: not replaced")
        if not overwrite:
            raise TargetExistsError(
                f"{uri} exists (use --overwrite, or overwrite=True, to replace it)"
            )
        reason = _not_replaceable(uri)
        if reason:
            raise UnsafeTargetError(f"{uri} {reason}: not replaced, even with --overwrite")
    if not uri_mod.is_remote(uri) and not os.path.isdir(os.path.dirname(uri)):
        raise StoreError(f"folder {os.path.dirname(uri)} does not exist")
    return uri


def check_output(out: str | os.PathLike, *, overwrite: bool, sources=(), stores=()) -> Path:
    """Refuse a local output file (decoded image, export, preview) that may not be written.

    ``overwrite`` replaces only a plain file (or a symbolic link: the link itself,
    never what it points to). The output is never a source, nor inside one, nor inside
    a store (the one read, or the one a run replaces).

    Parameters
    ----------
    out : str or path-like
        Local path or ``file://`` URL of the file.
    overwrite : bool, keyword-only
    sources : iterable of str, path-like or ImageSource, keyword-only
        What the output must not be nor lie in.
    stores : iterable of str or path-like, keyword-only
        Stores the output must not be nor lie in.

    Returns
    -------
    Path
        The absolute path of the output.

    Raises
    ------
    UnsafeTargetError
        If the output is a source, lies inside a store or a source, or is a folder or
        another non-regular file (with ``overwrite``).
    TargetExistsError
        If the output exists and ``overwrite`` is false.
    ParameterError
        If the output is an object-store URL.
    StoreError
        If the output's folder does not exist.
    """
    from kquant.errors import UnsafeTargetError

    text = os.fspath(out)
    if uri_mod.is_remote(text):
        raise ParameterError(f"{text}: this output is written to a local file, not an object store")
    path = uri_mod.local_path(text)
    for src in sources:
        if _holds(src, path, follow=False) or _same_file(path, _uri_of(src)):
            where = "is" if _holds(path, src) else "lies inside"
            raise UnsafeTargetError(f"{path} {where} the source {_uri_of(src)}: not written")
    for st in stores:
        if _holds(st, path, follow=False):
            raise UnsafeTargetError(
                f"{path} lies inside the store {uri_mod.normalise(st)}: not written"
            )
    if os.path.lexists(path):
        if not overwrite:
            raise TargetExistsError(f"{path} exists (use --overwrite to replace it)")
        if not path.is_symlink() and not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise UnsafeTargetError(f"{path} is {kind}: not replaced, even with --overwrite")
    if not path.parent.is_dir():
        raise StoreError(f"folder {path.parent} does not exist")
    return path


#: What a store folder or prefix holds (its locks and temporary copies are beside it).
_STORE_ENTRIES = frozenset({"zarr.json", "palette", "labels", LEVELS_GROUP})


def _uri_of(source) -> str:
    """The canonical URI of a source given as a path, URL or ImageSource."""
    return uri_mod.normalise(getattr(source, "uri", source))


def _remote_key(uri: str) -> str:
    """``scheme://bucket/key`` without repeated or trailing slashes (for comparisons)."""
    scheme, _, rest = uri.partition("://")
    return f"{scheme.lower()}://" + "/".join(p for p in rest.split("/") if p)


def _holds(container, item, *, follow: bool = True) -> bool:
    """True if ``item`` is ``container`` or lies inside it, compared as written and resolved
    (``follow=False``: ``item``'s own name is not resolved, only its folder)."""
    item, container = _uri_of(item), _uri_of(container)
    if uri_mod.is_remote(container) or uri_mod.is_remote(item):
        if uri_mod.is_remote(container) != uri_mod.is_remote(item):
            return False
        c, i = _remote_key(container), _remote_key(item)
        return i == c or i.startswith(c.rstrip("/") + "/")
    head, name = os.path.split(os.path.abspath(item))
    items = {
        os.path.abspath(item),
        os.path.realpath(item) if follow else os.path.join(os.path.realpath(head), name),
    }
    for c in {os.path.abspath(container), os.path.realpath(container)}:
        for i in items:
            if i == c or i.startswith(c.rstrip(os.sep) + os.sep):
                return True
    return follow and _same_file(Path(item), container)


def _same_file(a: Path, b: str) -> bool:
    """Local ``a`` (not followed if a link) and ``b`` are one file (hard link, case-folding)."""
    if uri_mod.is_remote(b):
        return False
    try:
        return os.path.samestat(os.lstat(a), os.stat(b))
    except OSError:
        return False


def _not_replaceable(uri: str) -> str | None:
    """Why ``overwrite`` may not replace the existing ``uri``, or None if it may.

    A kquant store (its ``zarr.json`` holds kquant attributes and there is nothing
    beside the store's own entries) or an empty folder may be replaced.
    """
    if uri_mod.is_remote(uri):
        fs, path = uri_mod.filesystem(uri)
        if fs.isfile(path):
            return "is an object, not a kquant store"
        names = {
            p.rstrip("/").rpartition("/")[2]
            for p in fs.ls(path, detail=False)
            if p.rstrip("/") != path.rstrip("/")
        }  # not a folder marker object
        read = lambda: fs.cat_file(f"{path}/zarr.json")  # noqa: E731
    else:
        if not os.path.isdir(uri):  # follows a link: a link to a store may be replaced
            kind = (
                "a symbolic link to nothing"
                if os.path.islink(uri) and not os.path.exists(uri)
                else "a file"
                if os.path.isfile(uri)
                else "not a folder"
            )
            return f"is {kind}, not a kquant store"
        names = set(os.listdir(uri))
        read = lambda: Path(uri, "zarr.json").read_bytes()  # noqa: E731
    if not names:
        return None  # an empty folder: nothing to lose
    if "zarr.json" not in names or not _has_kquant_attributes(read):
        return "is not a kquant store"
    foreign = sorted(names - _STORE_ENTRIES)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        return f"holds files kquant did not write ({shown})"
    return None


def _has_kquant_attributes(read) -> bool:
    import json

    try:
        doc = json.loads(read())
    except (OSError, ValueError):
        return False
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    kq = attrs.get("kquant") if isinstance(attrs, dict) else None
    return isinstance(kq, dict) and kq.get("format") == FORMAT


def exists(uri: str | os.PathLike) -> bool:
    """Whether anything is at ``uri`` (a file, a folder, a non-empty prefix), seen afresh."""
    uri = uri_mod.normalise(uri)
    if uri_mod.is_remote(uri):
        fs, path = uri_mod.filesystem(uri)
        fs.invalidate_cache(path)
    return _exists(uri)


def remove(uri: str | os.PathLike) -> None:
    """Delete a store (its ``zarr.json`` first: nothing complete-looking is left meanwhile)."""
    _remove(uri_mod.normalise(uri))


def status(uri: str | os.PathLike) -> str:
    """``"missing"``, ``"complete"`` (a complete kquant store) or ``"other"``."""
    if not exists(uri):
        return "missing"
    try:
        return "complete" if read_meta(uri).complete else "other"
    except KquantError:
        return "other"
