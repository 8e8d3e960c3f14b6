"""What a run settles before it writes: the leftovers of earlier runs at its target
(temporary copies rolled forward or removed, unfinished stores removed; docs/format.md)."""

from __future__ import annotations

import os
import shutil

from kquant.io import uri as uri_mod
from kquant.store.format import LEVELS_GROUP, STATUS_COMPLETE, STATUS_WRITING


def _group_status(doc) -> str | None:
    """``complete``/``writing`` for a kquant group document, ``""`` for a group without
    attributes (zarr writes it before the attributes), None for anything else."""
    if not isinstance(doc, dict):
        return None
    attrs = doc.get("attributes") or {}
    kq = attrs.get("kquant")
    if isinstance(kq, dict):
        return STATUS_COMPLETE if kq.get("status") == STATUS_COMPLETE else STATUS_WRITING
    return "" if not attrs and doc.get("node_type") == "group" else None


def _remote_state(fs, path: str) -> str:
    """What is at ``path`` on object storage: ``complete`` or ``writing`` (a kquant store),
    ``partial`` (a kquant store's objects without its final attributes: a write or a
    removal that stopped), ``absent``, or ``other`` (not kquant's)."""
    import json

    try:
        status = _group_status(json.loads(fs.cat(f"{path}/zarr.json")))
    except FileNotFoundError:
        status = ""
    except ValueError:
        return "other"
    if status:
        return status
    if status is None:
        return "other"
    names = [f[len(path) + 1 :] for f in fs.find(path) if f != f"{path}/zarr.json"]
    if not names:
        return "partial" if fs.exists(f"{path}/zarr.json") else "absent"
    entries = ("palette", "labels", LEVELS_GROUP)
    return "partial" if all(n.split("/", 1)[0] in entries for n in names) else "other"


def _remote_tmps(fs, path: str) -> list[str]:
    """The hidden temporary stores (``.NAME.kquant-tmp-*``) beside ``path``."""
    head, _, name = path.rpartition("/")
    prefix = f".{name}.kquant-tmp-"
    try:
        found = fs.find(head, prefix=prefix, withdirs=True)
    except TypeError:  # an fsspec implementation without prefix listings
        found = fs.glob(f"{head}/{prefix}*")
    roots = {f"{head}/{f[len(head) + 1 :].split('/', 1)[0]}" for f in found}
    return sorted(r for r in roots if r.rpartition("/")[2].startswith(prefix))


def _move_remote(fs, src: str, dst: str, check=None) -> None:
    """Put the complete store ``src`` at ``dst``: the objects at ``dst`` go first (its
    ``zarr.json`` first of all), then ``src``'s objects are copied, ``zarr.json`` last, then
    ``src`` goes. ``check()`` runs before each copy (a lost lock stops the move)."""
    _remove_remote(fs, dst)
    for f in sorted(f for f in fs.find(src) if f != f"{src}/zarr.json"):
        if check is not None:
            check()
        fs.copy(f, dst + f[len(src) :])
    if check is not None:
        check()
    fs.copy(f"{src}/zarr.json", f"{dst}/zarr.json")  # the group's attributes last
    _remove_remote(fs, src)


def _modified(fs, path: str) -> float:
    info = fs.info(path)
    value = info.get("LastModified") or info.get("mtime") or 0
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def recover(target: str, *, check=None) -> None:
    """Settle what runs that stopped left at ``target``; run by the holder of its lock.

    ``check()``, if given, is called before each object a roll-forward copies, and raises
    if the lock was lost meanwhile (:func:`kquant.store.locking.check`).

    A temporary store holding the only complete store of the target (an ``--overwrite``
    that stopped after the old store was removed) is put in place (rolled forward);
    every other temporary store beside the target is removed, and so is an unfinished
    store written in place (object storage). A complete store, or anything that is not
    kquant's, is never removed. The states are listed in ``docs/format.md``.

    Raises
    ------
    ObjectStoreError
        If the object store cannot be reached or refuses a request.
    """
    if uri_mod.is_remote(target):
        _recover_remote(target, check)
    else:
        _recover_local(target)


def _recover_remote(target: str, check) -> None:
    fs, path = uri_mod.filesystem(target)
    fs.invalidate_cache()
    tmps = _remote_tmps(fs, path)
    state = _remote_state(fs, path)
    if not tmps and state not in (STATUS_WRITING, "partial"):
        return
    states = {t: _remote_state(fs, t) for t in tmps}
    if state in (STATUS_WRITING, "partial", "absent"):
        done = [t for t in tmps if states[t] == STATUS_COMPLETE]
        if done:  # the only complete store of the target: roll forward
            newest = max(done, key=lambda t: _modified(fs, f"{t}/zarr.json"))
            _move_remote(fs, newest, path, check=check)
            tmps.remove(newest)
            state = STATUS_COMPLETE
        elif state != "absent":
            _remove_remote(fs, path)
    for t in tmps:
        if states[t] == STATUS_COMPLETE and state != STATUS_COMPLETE:
            continue  # the target is not kquant's: keep the complete copy
        _remove_remote(fs, t)


def _local_status(root: str) -> str | None:
    import json

    try:
        with open(os.path.join(root, "zarr.json"), "rb") as fh:
            return _group_status(json.loads(fh.read()))
    except (OSError, ValueError):
        return None


def _recover_local(target: str) -> None:
    import glob

    head, name = os.path.split(target)
    pattern = f"{glob.escape(head)}/.{glob.escape(name)}.kquant-"
    tmps = [
        t
        for t in sorted(glob.glob(pattern + "tmp-*"))
        if os.path.isdir(t) and not os.path.islink(t)
    ]
    olds = [
        t
        for t in sorted(glob.glob(pattern + "old-*"))
        if os.path.isdir(t) and not os.path.islink(t)
    ]
    if not os.path.lexists(target):  # stopped between the two renames of a commit
        done = [t for t in tmps if _local_status(t) == STATUS_COMPLETE]
        if done:
            newest = max(done, key=lambda t: os.stat(os.path.join(t, "zarr.json")).st_mtime_ns)
            os.rename(newest, target)
            tmps.remove(newest)
    if not os.path.lexists(target):
        olds = []  # the replaced store is all there is: keep it
    for t in tmps + olds:
        shutil.rmtree(t, ignore_errors=True)


def _remove_remote(fs, path: str) -> None:
    if fs.exists(f"{path}/zarr.json"):  # first, so nothing complete-looking is left
        fs.rm(f"{path}/zarr.json")
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.invalidate_cache(path)
