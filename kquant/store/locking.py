"""One writer per target: a lock file beside the store, naming its holder.

``TARGET`` is locked by creating ``.TARGET-NAME.kquant-lock`` next to it: the holder's
host, pid and start time are written to a private file that is then hard-linked to that
name (atomic, and refused if the lock exists; ``O_CREAT | O_EXCL`` where hard links are
not supported), so a crash or a full disk never leaves an empty lock. A second run fails
at once with a message naming the holder. A lock left by a process that died (same host,
pid gone) is broken and taken over, and the temporary stores that process left beside
the target are removed. The lock is re-entrant within a process, so the pipeline can hold
it for a whole run while the store writer takes it again.

On object storage the lock object is created with a conditional PUT
(``If-None-Match: *``) where the fsspec implementation supports exclusive creation.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time

from kquant.io import uri as uri_mod
from kquant.errors import NoSpaceError, TargetLockedError

_held: dict[str, int] = {}
_held_lock = threading.Lock()


def lock_path(target: str) -> str:
    head, _, name = target.rstrip("/").rpartition("/")
    return f"{head}/.{name}.kquant-lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(info: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} since {started}"


def _create_local(path: str, payload: bytes) -> bool:
    # the holder's record is written to a private file first, then hard-linked into place
    # (atomic, fails if the lock exists): a crash or a full disk never leaves an empty lock
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:  # no hard links here: exclusive create of the lock itself
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            return _create_exclusive(path, payload)
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(f"no space left on the device of {path} to take the lock "
                               f"({os.strerror(exc.errno)})") from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _create_exclusive(path: str, payload: bytes) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
    except BaseException:
        os.unlink(path)
        raise
    return True


def _create_remote(path: str, payload: bytes) -> bool:
    fs, p = uri_mod.filesystem(path)
    try:
        with fs.open(p, "xb") as fh:  # exclusive create where supported
            fh.write(payload)
        return True
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError):  # no exclusive create: best effort
        if fs.exists(p):
            return False
        fs.pipe(p, payload)
        return True


def _read(path: str) -> dict:
    try:
        if uri_mod.is_remote(path):
            fs, p = uri_mod.filesystem(path)
            return json.loads(fs.cat(p))
        with open(path, "rb") as fh:
            return json.loads(fh.read() or b"{}")
    except (OSError, ValueError):
        return {}


def _remove(path: str) -> None:
    try:
        if uri_mod.is_remote(path):
            fs, p = uri_mod.filesystem(path)
            fs.rm(p)
        else:
            os.unlink(path)
    except (OSError, FileNotFoundError):
        pass


def _remove_leftovers(target: str) -> None:
    """Remove the temporary stores a dead holder left beside a local ``target``.

    Called only when a stale lock is taken over: a temporary store is written only under
    the lock, so any left beside the target belongs to a run that died. Never complete.
    """
    if uri_mod.is_remote(target):
        return
    import glob
    import shutil

    head, _, name = target.rstrip("/").rpartition("/")
    for tmp in glob.glob(f"{glob.escape(head)}/.{glob.escape(name)}.kquant-tmp-*"):
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _bury(path: str, host: str) -> bool:
    """Remove a stale lock so that exactly one of several racing runs does it.

    Locally the lock is renamed to a unique name first (atomic: one renamer wins); if what
    was renamed turns out to belong to a live process (a run that took over in between),
    it is linked back and the caller does not take over. Returns True when the stale lock
    is gone and the caller may create its own.
    """
    if uri_mod.is_remote(path):
        _remove(path)
        return True
    grave = f"{path}.stale-{os.getpid()}-{time.monotonic_ns()}"
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return False  # someone else buried it; try to create ours
    holder = _read(grave)
    alive = not (holder.get("host") == host and isinstance(holder.get("pid"), int)
                 and not _pid_alive(holder["pid"]))
    if alive:  # we displaced a fresh lock: put it back (never over another one)
        try:
            os.link(grave, path)
        except FileExistsError:
            pass
        _remove(grave)
        return False
    _remove(grave)
    return True


def acquire(target: str) -> str:
    """Take the lock of ``target`` (re-entrant in this process); return the lock's path.

    Raises
    ------
    TargetLockedError
        If another live process holds it.
    """
    path = lock_path(target)
    with _held_lock:
        if path in _held:
            _held[path] += 1
            return path
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                "target": target}
        payload = json.dumps(info).encode()
        create = _create_remote if uri_mod.is_remote(path) else _create_local
        for _ in range(2):
            if create(path, payload):
                _held[path] = 1
                return path
            holder = _read(path)
            stale = (holder.get("host") == info["host"] and isinstance(holder.get("pid"), int)
                     and not _pid_alive(holder["pid"]))
            if not stale:
                raise TargetLockedError(f"{target} is being written by another run "
                                        f"({_describe(holder) if holder else 'unknown holder'}); "
                                        f"if that run is gone, delete {path}")
            if not _bury(path, info["host"]):  # another run took it over first
                continue
            _remove_leftovers(target)
        raise TargetLockedError(f"{target} is locked ({path})")


def release(target: str) -> None:
    """Release one hold of ``target``'s lock; the file goes with the last one."""
    path = lock_path(target)
    with _held_lock:
        if path not in _held:
            return
        _held[path] -= 1
        if _held[path] == 0:
            del _held[path]
            _remove(path)


@contextlib.contextmanager
def hold(target: str):
    """Hold ``target``'s lock inside the block."""
    acquire(target)
    try:
        yield
    finally:
        release(target)
