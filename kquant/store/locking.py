"""One writer per target: a lock beside the store, naming its holder.

``TARGET`` is locked by creating ``.TARGET-NAME.kquant-lock`` next to it, a JSON record of
the holder: host, pid (and pid namespace), start time, a random token. A second run fails
at once with a message naming the holder. The lock is re-entrant within a process, so the
pipeline can hold it for a whole run while the store writer takes it again.

On a local disk the record is written to a private file that is then hard-linked to the
lock's name (atomic, refused if the lock exists; ``O_CREAT | O_EXCL`` where hard links are
not supported), so a crash or a full disk never leaves an empty lock. A lock left by a
process that died (same host and pid namespace, pid gone) is broken and taken over. Local
locks carry no lease (on a shared filesystem that would trust the hosts' clocks): a lock
of another host is respected, and the message says which file to delete if its run is gone.

On object storage the lock object is created with a conditional PUT (``If-None-Match:
*``) and also records a lease (``KQUANT_LOCK_LEASE_SECONDS``, default 300): while it is
held, a background thread rewrites it every ``KQUANT_LOCK_HEARTBEAT_SECONDS`` (default a
tenth of the lease). It is stale once it is older than its lease by the store's own clock
(the object's ``LastModified`` against the ``Date`` of the response that read it: no
host's clock is trusted; on fsspec stores other than S3, its modification time against
this host's clock), whichever host wrote it, or at once when its holder is a dead process
of this host. A stale lock is taken over with a PUT conditional on its ETag
(``If-Match``): of several runs racing, exactly one wins and the others fail as if the lock
were held. A holder that could not renew its lock for ``lease - heartbeat - 1`` seconds,
or finds it taken over, stops writing (:class:`~kquant.errors.LockLostError`) before anyone
may take it over. Renewals and the release are conditional on the holder's own ETag, so
they never touch a lock another run has taken.

Whoever takes a lock (on object storage: every run; locally: a run taking over a dead
holder's lock) settles what earlier runs left at the target first
(:func:`kquant.store.recover`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from kquant.errors import LockLostError, NoSpaceError, ParameterError, TargetLockedError
from kquant.io import uri as uri_mod

#: Seconds a lock on object storage stays valid without a renewal (``KQUANT_LOCK_LEASE_SECONDS``).
DEFAULT_LEASE = 300.0
#: Renewals per lease when ``KQUANT_LOCK_HEARTBEAT_SECONDS`` is not set.
BEATS_PER_LEASE = 10


@dataclasses.dataclass
class _Hold:
    count: int
    remote: bool
    record: dict
    etag: str | None = None
    lease: float = DEFAULT_LEASE
    heartbeat: float = DEFAULT_LEASE / BEATS_PER_LEASE
    renewed: float = dataclasses.field(default_factory=time.monotonic)
    lost: str | None = None
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    mutex: threading.Lock = dataclasses.field(default_factory=threading.Lock)


_held: dict[str, _Hold] = {}
_held_lock = threading.Lock()


def lock_path(target: str) -> str:
    head, _, name = target.rstrip("/").rpartition("/")
    return f"{head}/.{name}.kquant-lock"


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ParameterError(f"{name} must be a positive number of seconds, got {text!r}")
    return value


def lease_seconds() -> float:
    """The lease of a lock on object storage (``KQUANT_LOCK_LEASE_SECONDS``, default 300).

    Raises
    ------
    ParameterError
        If the variable is not a positive number.
    """
    return _seconds("KQUANT_LOCK_LEASE_SECONDS", DEFAULT_LEASE)


def heartbeat_seconds(lease: float | None = None) -> float:
    """Seconds between renewals (``KQUANT_LOCK_HEARTBEAT_SECONDS``, default lease / 10).

    Raises
    ------
    ParameterError
        If the variable is not a positive number below half the lease.
    """
    lease = lease_seconds() if lease is None else lease
    beat = _seconds("KQUANT_LOCK_HEARTBEAT_SECONDS", lease / BEATS_PER_LEASE)
    if beat * 2 > lease:
        raise ParameterError(
            f"KQUANT_LOCK_HEARTBEAT_SECONDS ({beat:g}) must be at most half the lease ({lease:g} s)"
        )
    return beat


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _dead_here(holder: dict, host: str) -> bool:
    """The holder is a process of this host (and pid namespace) that is gone."""
    if holder.get("host") != host or not isinstance(holder.get("pid"), int):
        return False
    ns = _pid_namespace()
    if holder.get("pidns") and ns and holder["pidns"] != ns:
        return False  # another container on this host: its pids are not ours to test
    return not _pid_alive(holder["pid"])


def _stale(holder: dict, age: float | None, host: str) -> bool:
    """Whether a lock can be taken over: its holder died here, or (object storage) its
    lease ran out by the store's clock. A record without a lease (or unreadable) is
    judged by the configured lease."""
    if _dead_here(holder, host):
        return True
    if age is None:
        return False
    lease = holder.get("lease")
    if not isinstance(lease, (int, float)) or isinstance(lease, bool) or lease <= 0:
        if holder.get("pid") is not None:
            return False  # a record of a kquant without leases: only the pid rule
        lease = lease_seconds()
    return age > lease


def _describe(info: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    text = f"pid {info.get('pid')} on {info.get('host')} since {started}"
    if isinstance(info.get("lease"), (int, float)):
        text += f", lease {info['lease']:g} s"
    return text


def _record(target: str, *, lease: float | None = None, heartbeat: float | None = None) -> dict:
    info = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pidns": _pid_namespace(),
        "started": time.time(),
        "target": target,
        "token": uuid.uuid4().hex,
    }
    if lease is not None:
        info.update(lease=lease, heartbeat_every=heartbeat, heartbeat=time.time())
    return info


# --------------------------------------------------------------------------- local files


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
            raise NoSpaceError(
                f"no space left on the device of {path} to take the lock ({os.strerror(exc.errno)})"
            ) from None
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


def _read_local(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read() or b"{}")
    except (OSError, ValueError):
        return {}


def _remove_local(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _bury(path: str, host: str) -> bool:
    """Remove a stale local lock so that exactly one of several racing runs does it.

    The lock is renamed to a unique name first (atomic: one renamer wins); if what was
    renamed turns out to belong to a live process (a run that took over in between), it is
    linked back and the caller does not take over. Returns True when the stale lock is gone
    and the caller may create its own.
    """
    grave = f"{path}.stale-{os.getpid()}-{time.monotonic_ns()}"
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return False  # someone else buried it; try to create ours
    if not _dead_here(_read_local(grave), host):  # we displaced a fresh lock: put it back
        with contextlib.suppress(FileExistsError):
            os.link(grave, path)
        _remove_local(grave)
        return False
    _remove_local(grave)
    return True


def _acquire_local(target: str, path: str) -> tuple[_Hold, bool]:
    info = _record(target)
    payload = json.dumps(info).encode()
    took_over = False
    for _ in range(2):
        if _create_local(path, payload):
            return _Hold(count=1, remote=False, record=info), took_over
        holder = _read_local(path)
        if not _dead_here(holder, info["host"]):
            raise TargetLockedError(
                f"{target} is being written by another run "
                f"({_describe(holder) if holder else 'unknown holder'}); "
                f"if that run is gone, delete {path}"
            )
        if _bury(path, info["host"]):
            took_over = True
    raise TargetLockedError(f"{target} is locked ({path})")


# --------------------------------------------------------------------------- object storage


def _client_error_code(exc: BaseException) -> str | None:
    for e in uri_mod._causes(exc):
        response = getattr(e, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            return str(response["Error"].get("Code"))
    return None


#: Codes of a conditional request that lost to another writer (412; 409 is what S3 answers
#: when two conditional writes to one key overlap).
_LOST_RACE = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def _server_age(response: dict) -> float | None:
    """Seconds since the object was last written, by the store's clock: ``Date`` of this
    response minus the object's ``LastModified``."""
    modified = response.get("LastModified")
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if modified is None or not date:
        return None
    try:
        now = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return None
    return (now - modified).total_seconds()


def _s3_split(fs, p: str) -> tuple[str, str]:
    bucket, key, _ = fs.split_path(p)
    return bucket, key


def _remote_create(fs, p: str, payload: bytes) -> str | None | bool:
    """Create the lock object unless it exists: its ETag (True where the store gives none),
    or None if it exists."""
    if hasattr(fs, "call_s3"):
        bucket, key = _s3_split(fs, p)
        try:
            out = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=payload, IfNoneMatch="*")
        except FileExistsError:
            return None
        except OSError as exc:
            if _client_error_code(exc) in _LOST_RACE:
                return None
            raise
        fs.invalidate_cache(p)
        return out.get("ETag") or True
    try:
        with fs.open(p, "xb") as fh:  # exclusive create where supported
            fh.write(payload)
        return True
    except FileExistsError:
        return None
    except (ValueError, NotImplementedError):  # no exclusive create: best effort
        if fs.exists(p):
            return None
        fs.pipe(p, payload)
        return True


def _remote_read(fs, p: str) -> tuple[dict, str | None, float | None] | None:
    """``(record, etag, age in seconds)`` of the lock object, or None if there is none."""
    if hasattr(fs, "call_s3"):
        from fsspec.asyn import sync

        bucket, key = _s3_split(fs, p)
        try:
            out, data = sync(fs.loop, _get_object, fs, bucket, key)
        except FileNotFoundError:
            return None
        return _parse(data), out.get("ETag"), _server_age(out)
    try:
        data = fs.cat(p)
        info = fs.info(p)
    except FileNotFoundError:
        return None
    modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
    age = None
    if isinstance(modified, datetime):  # this host's clock: the store gives no other here
        age = (datetime.now(UTC) - modified).total_seconds()
    elif isinstance(modified, (int, float)):
        age = time.time() - float(modified)
    return _parse(data), str(info.get("ETag") or "") or None, age


async def _get_object(fs, bucket: str, key: str) -> tuple[dict, bytes]:
    """One GET: the response (ETag, LastModified, the ``Date`` header) and the body."""
    out = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    body = out["Body"]
    try:
        return out, await body.read()
    finally:
        body.close()


def _parse(data: bytes) -> dict:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _remote_replace(fs, p: str, payload: bytes, etag) -> str | bool | None:
    """Replace the lock object if it is still the version ``etag`` (a stale lock taken
    over, or this holder's renewal): the new ETag, or None when another run replaced or
    removed it first."""
    if hasattr(fs, "call_s3") and isinstance(etag, str):
        bucket, key = _s3_split(fs, p)
        try:
            out = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=payload, IfMatch=etag)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if _client_error_code(exc) in _LOST_RACE:
                return None
            raise
        fs.invalidate_cache(p)
        return out.get("ETag") or True
    # no conditional write here: remove, then create exclusively (one creator wins)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(p)
    return _remote_create(fs, p, payload)


def _remote_renew(fs, p: str, payload: bytes, hold: _Hold) -> str | bool | None:
    """Rewrite this holder's lock object: the new ETag, or None if it is not ours any more."""
    if hasattr(fs, "call_s3") and isinstance(hold.etag, str):
        return _remote_replace(fs, p, payload, hold.etag)
    current = _remote_read(fs, p)  # no conditional write: check the token, then write
    if current is None or current[0].get("token") != hold.record["token"]:
        return None
    fs.pipe(p, payload)
    return True


def _remote_delete(fs, p: str, hold: _Hold) -> None:
    """Delete the lock object if it is still this holder's."""
    if hasattr(fs, "call_s3") and isinstance(hold.etag, str):
        bucket, key = _s3_split(fs, p)
        for _ in range(2):
            try:
                fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=hold.etag)
                fs.invalidate_cache(p)
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if _client_error_code(exc) not in _LOST_RACE:
                    raise
            # not the ETag we know: a renewal landed after all, or another run holds it
            current = _remote_read(fs, p)
            if current is None or current[0].get("token") != hold.record["token"]:
                return
            hold.etag = current[1]
        return
    current = _remote_read(fs, p)
    if current is not None and current[0].get("token") == hold.record["token"]:
        fs.rm(p)


def _acquire_remote(target: str, path: str) -> tuple[_Hold, bool]:
    fs, p = uri_mod.filesystem(path)
    lease = lease_seconds()
    beat = heartbeat_seconds(lease)
    info = _record(target, lease=lease, heartbeat=beat)
    payload = json.dumps(info).encode()
    for _ in range(3):
        sent = time.monotonic()
        etag = _remote_create(fs, p, payload)
        if etag is not None:
            return _Hold(
                count=1,
                remote=True,
                record=info,
                etag=etag if isinstance(etag, str) else None,
                lease=lease,
                heartbeat=beat,
                renewed=sent,
            ), False
        current = _remote_read(fs, p)
        if current is None:
            continue  # released in between: create ours
        holder, stale_etag, age = current
        if not _stale(holder, age, info["host"]):
            state = _describe(holder) if holder.get("pid") is not None else "unknown holder"
            if age is not None:
                state += f", renewed {max(age, 0):.0f} s ago"
            raise TargetLockedError(
                f"{target} is being written by another run ({state}); "
                f"if that run is gone, delete {path}"
            )
        sent = time.monotonic()
        if _remote_replace(fs, p, payload, stale_etag) is None:
            continue  # another run took it over first: its lock is fresh now
        # read back: where a store ignores If-Match, the last of racing writers holds it
        time.sleep(0.2)
        back = _remote_read(fs, p)
        if back is None or back[0].get("token") != info["token"]:
            raise TargetLockedError(
                f"{target}: another run took over its stale lock first ({path})"
            )
        return _Hold(
            count=1,
            remote=True,
            record=info,
            etag=back[1],
            lease=lease,
            heartbeat=beat,
            renewed=sent,
        ), True
    raise TargetLockedError(f"{target} is locked ({path})")


def _heartbeat(path: str, hold: _Hold) -> None:
    """Renew ``hold`` every ``hold.heartbeat`` seconds until it is released or lost."""
    fs, p = uri_mod.filesystem(path)
    while not hold.stop.wait(hold.heartbeat):
        sent = time.monotonic()
        payload = json.dumps(dict(hold.record, heartbeat=time.time())).encode()
        try:
            etag = _remote_renew(fs, p, payload, hold)
        except Exception:  # unreachable for now: the next beat tries again, the lease decides
            continue
        with hold.mutex:
            if hold.stop.is_set() and etag is None:
                return
            if etag is None:
                hold.lost = "it was taken over by another run"
                return
            hold.etag = etag if isinstance(etag, str) else None
            hold.renewed = sent


# --------------------------------------------------------------------------- public API


def acquire(target: str) -> str:
    """Take the lock of ``target`` (re-entrant in this process); return the lock's path.

    A fresh hold settles what earlier runs left at the target (:func:`kquant.store.recover`)
    on object storage, and locally after taking over a dead holder's lock.

    Raises
    ------
    TargetLockedError
        If another live process holds it (or took it over first).
    ObjectStoreError
        If the object store cannot be reached or refuses the lock (naming target and cause).
    """
    from kquant.store import recovery

    path = lock_path(target)
    with _held_lock:
        hold = _held.get(path)
        if hold is not None:
            hold.count += 1
            return path
        remote = uri_mod.is_remote(path)
        with uri_mod.storage_errors(target):
            hold, took_over = (_acquire_remote if remote else _acquire_local)(target, path)
        _held[path] = hold
    if remote:
        hold.thread = threading.Thread(
            target=_heartbeat,
            args=(path, hold),
            daemon=True,
            name=f"kquant-lock-heartbeat {target}",
        )
        hold.thread.start()
    if remote or took_over:
        try:
            with uri_mod.storage_errors(target):
                recovery.recover(target, check=lambda: check(target))
        except BaseException:
            release(target)
            raise
    return path


def _fence(hold: _Hold) -> float:
    """Seconds without a renewal after which a holder stops writing: before anyone may
    take its lock over (a heartbeat, and 1 s of the store's clock resolution, earlier)."""
    return max(hold.lease - hold.heartbeat - 1.0, 2 * hold.heartbeat)


def check(target: str) -> None:
    """Raise unless this process still holds ``target``'s lock (object storage: renewed
    within the lease less a heartbeat and a second, and not taken over); a no-op for local
    locks and for targets this process does not lock.

    Raises
    ------
    LockLostError
        If the lock lapsed or was taken over: the caller must stop writing.
    """
    hold = _held.get(lock_path(target))
    if hold is None or not hold.remote:
        return
    with hold.mutex:
        if hold.lost is None:
            idle = time.monotonic() - hold.renewed
            if idle > _fence(hold):
                hold.lost = (
                    f"not renewed for {idle:.0f} s, lease {hold.lease:g} s; "
                    "another run may take it over"
                )
        if hold.lost is not None:
            raise LockLostError(
                f"{target}: this run lost its lock ({hold.lost}); it stopped writing"
            )


def lost(target: str) -> bool:
    """Whether this process held ``target``'s lock and lost it (see :func:`check`)."""
    try:
        check(target)
    except LockLostError:
        return True
    return False


def holder_alive(target: str) -> bool:
    """Whether ``target``'s lock is held by this process or by a live run elsewhere
    (a lock that is absent or stale says no).

    Raises
    ------
    ObjectStoreError
        If the object store cannot be reached or refuses the read.
    """
    path = lock_path(target)
    if path in _held:
        return True
    if not uri_mod.is_remote(path):
        holder = _read_local(path)
        return bool(holder) and not _dead_here(holder, socket.gethostname())
    with uri_mod.storage_errors(target):
        fs, p = uri_mod.filesystem(path)
        current = _remote_read(fs, p)
    if current is None:
        return False
    return not _stale(current[0], current[2], socket.gethostname())


def release(target: str) -> None:
    """Release one hold of ``target``'s lock; the lock goes with the last one.

    On object storage the heartbeat stops and the lock object is deleted only if it is
    still this holder's; if the store cannot be reached it stays, and becomes stale when
    its lease runs out (or at once for a rerun on this host, this process being gone).
    """
    path = lock_path(target)
    with _held_lock:
        hold = _held.get(path)
        if hold is None:
            return
        hold.count -= 1
        if hold.count > 0:
            return
        del _held[path]
    if not hold.remote:
        _remove_local(path)
        return
    with hold.mutex:
        hold.stop.set()
    if hold.thread is not None:
        hold.thread.join(timeout=1.0)
    if hold.lost is not None:
        return  # not ours any more
    with contextlib.suppress(Exception):  # unreachable: the lock goes stale by itself
        fs, p = uri_mod.filesystem(path)
        _remote_delete(fs, p, hold)


@contextlib.contextmanager
def hold(target: str):
    """Hold ``target``'s lock inside the block."""
    acquire(target)
    try:
        yield
    finally:
        release(target)
