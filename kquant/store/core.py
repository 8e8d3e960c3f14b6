"""The kquant store: a zarr v3 group holding a palette and bit-packed labels.

Layout (see ``docs/format.md``)::

    STORE/                 zarr v3 group, attributes {"kquant": StoreMeta}
      palette              (n, 3) uint8, one chunk
      labels               (H, ceil(W * bits / 8)) uint8, packed rows, zstd (level 17 up to 16 Mpx, else 3)

A store is written under a hidden sibling name and moved into place by one
rename after every chunk and the final attributes (``status: "complete"`` and
a checksum of every packed chunk) are written. Readers refuse a store whose
status is not ``complete``.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from kquant.label import packing
from kquant.io import uri as uri_mod
from kquant.errors import (IncompleteStoreError, KquantError, NoSpaceError, ParameterError,
                     StorageUnreachableError, StoreError, TargetExistsError)

FORMAT = "kquant-store"
FORMAT_VERSION = 2
#: Format versions this kquant reads: 1 packs ceil(log2 n) bits per pixel, 2 packs
#: 1, 2, 4 or 8 (see :func:`kquant.packing.storage_bits`); everything else is the same.
READABLE_VERSIONS = (1, 2)
PACKING = "row-major; each row packed MSB-first at `bits` bits per pixel and padded to a whole byte"
STATUS_WRITING = "writing"
STATUS_COMPLETE = "complete"
ZSTD_LEVEL = 3
#: zstd level of images up to :data:`ZSTD_SMALL_PIXELS` pixels: 17 uses zstd's
#: optimal parsing ("btultra") and makes the labels 8-12 % smaller than level 3
#: (smaller than pngquant's PNGs, bench/quality) at ~7 MB/s of packed labels;
#: larger images keep level 3 (~300 MB/s), where writing time matters more.
ZSTD_LEVEL_SMALL = 17
ZSTD_SMALL_PIXELS = 1 << 24


def zstd_level(n_pixels: int) -> int:
    """zstd level of the labels of an image of ``n_pixels`` pixels (readers need not know it)."""
    return ZSTD_LEVEL_SMALL if n_pixels <= ZSTD_SMALL_PIXELS else ZSTD_LEVEL


def _version() -> str:
    from kquant import __version__

    return __version__


@dataclasses.dataclass(frozen=True)
class StoreMeta:
    """The store's attributes (``attrs["kquant"]``); validated, round-trips to JSON.

    Raises
    ------
    StoreError
        From :meth:`from_json` when the attributes are missing or malformed.
    """

    height: int
    width: int
    k: int
    n_colors: int
    bits: int
    chunk_rows: int
    chunk_cols: int
    status: str = STATUS_WRITING
    source: dict = dataclasses.field(default_factory=dict)
    params: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)
    checksum: str | None = None
    shard_rows: int | None = None
    shard_cols: int | None = None
    library_version: str = dataclasses.field(default_factory=_version)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    packing: str = PACKING

    def __post_init__(self) -> None:
        for name in ("height", "width", "k", "n_colors", "bits", "chunk_rows", "chunk_cols"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise StoreError(f"store attribute {name} must be a positive integer, got {v!r}")
        if self.format != FORMAT:
            raise StoreError(f"not a kquant store (format {self.format!r})")
        if self.format_version > FORMAT_VERSION:
            raise StoreError(f"store format version {self.format_version} is newer than this "
                             f"kquant ({FORMAT_VERSION}); upgrade kquant")
        if self.status not in (STATUS_WRITING, STATUS_COMPLETE):
            raise StoreError(f"unknown store status {self.status!r}")
        if self.format_version not in READABLE_VERSIONS:
            raise StoreError(f"unknown store format version {self.format_version!r}")
        expected = (packing.bits_for(self.n_colors) if self.format_version == 1
                    else packing.storage_bits(self.n_colors))
        if self.bits != expected:
            raise StoreError(f"store bits {self.bits} do not match {self.n_colors} colours "
                             f"(format {self.format_version})")
        if self.chunk_cols % packing.PIXEL_ALIGN and self.chunk_cols < self.width:
            raise StoreError(f"chunk width {self.chunk_cols} is not a multiple of {packing.PIXEL_ALIGN}")
        if (self.shard_rows is None) != (self.shard_cols is None):
            raise StoreError("shard_rows and shard_cols must be given together")
        if self.shard_rows is not None:
            if (self.shard_rows % self.chunk_rows
                    or (self.shard_cols % self.chunk_cols and self.chunk_cols < self.width)):
                raise StoreError(f"shard {self.shard_rows}x{self.shard_cols} is not a whole number "
                                 f"of chunks {self.chunk_rows}x{self.chunk_cols}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE

    def _packed(self, rows: int, cols: int) -> tuple[int, int]:
        if self.chunk_cols >= self.width:  # one chunk (and shard) spans every row
            return rows, packing.packed_width(self.width, self.bits)
        return rows, cols * self.bits // 8

    @property
    def packed_chunks(self) -> tuple[int, int]:
        """Chunk shape of the packed labels array (rows, bytes)."""
        return self._packed(self.chunk_rows, self.chunk_cols)

    @property
    def packed_shards(self) -> tuple[int, int] | None:
        """Shard shape of the packed labels array (rows, bytes), or None if unsharded."""
        if self.shard_rows is None:
            return None
        return self._packed(self.shard_rows, self.shard_cols)

    @property
    def block(self) -> tuple[int, int]:
        """Pixels (rows, cols) written by one task: a shard if sharded, else a chunk."""
        if self.shard_rows is None:
            return self.chunk_rows, self.chunk_cols
        return self.shard_rows, self.shard_cols

    @property
    def packed_block(self) -> tuple[int, int]:
        """Packed shape of one write block (a whole shard, or a chunk)."""
        return self.packed_shards or self.packed_chunks

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "StoreMeta":
        if not isinstance(data, dict):
            raise StoreError("not a kquant store (no kquant attributes)")
        fields = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in fields})
        except TypeError as exc:
            raise StoreError(f"malformed kquant attributes: {exc}") from None

    def replace(self, **changes) -> "StoreMeta":
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- paths

def local_path(uri: str | os.PathLike) -> Path:
    """The local path of a plain path or ``file://`` URL."""
    return uri_mod.local_path(uri)


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


def _remove_remote(fs, path: str) -> None:
    if fs.exists(f"{path}/zarr.json"):  # first, so nothing complete-looking is left
        fs.rm(f"{path}/zarr.json")
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.invalidate_cache(path)


# --------------------------------------------------------------------------- recovery

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
    names = [f[len(path) + 1:] for f in fs.find(path) if f != f"{path}/zarr.json"]
    if not names:
        return "partial" if fs.exists(f"{path}/zarr.json") else "absent"
    return "partial" if all(n.split("/", 1)[0] in ("palette", "labels") for n in names) else "other"


def _remote_tmps(fs, path: str) -> list[str]:
    """The hidden temporary stores (``.NAME.kquant-tmp-*``) beside ``path``."""
    head, _, name = path.rpartition("/")
    prefix = f".{name}.kquant-tmp-"
    try:
        found = fs.find(head, prefix=prefix, withdirs=True)
    except TypeError:  # an fsspec implementation without prefix listings
        found = fs.glob(f"{head}/{prefix}*")
    roots = {f"{head}/{f[len(head) + 1:].split('/', 1)[0]}" for f in found}
    return sorted(r for r in roots if r.rpartition("/")[2].startswith(prefix))


def _move_remote(fs, src: str, dst: str, check=None) -> None:
    """Put the complete store ``src`` at ``dst``: the objects at ``dst`` go first (its
    ``zarr.json`` first of all), then ``src``'s objects are copied, ``zarr.json`` last, then
    ``src`` goes. ``check()`` runs before each copy (a lost lock stops the move)."""
    _remove_remote(fs, dst)
    for f in sorted(f for f in fs.find(src) if f != f"{src}/zarr.json"):
        if check is not None:
            check()
        fs.copy(f, dst + f[len(src):])
    if check is not None:
        check()
    fs.copy(f"{src}/zarr.json", f"{dst}/zarr.json")  # the group's attributes last
    _remove_remote(fs, src)


def _modified(fs, path: str) -> float:
    info = fs.info(path)
    value = info.get("LastModified") or info.get("mtime") or 0
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def recover(target: str) -> None:
    """Settle what runs that stopped left at ``target``; run by the holder of its lock.

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
        _recover_remote(target)
    else:
        _recover_local(target)


def _recover_remote(target: str) -> None:
    from kquant.store import locking

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
            _move_remote(fs, newest, path, check=lambda: locking.check(target))
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
    tmps = [t for t in sorted(glob.glob(pattern + "tmp-*"))
            if os.path.isdir(t) and not os.path.islink(t)]
    olds = [t for t in sorted(glob.glob(pattern + "old-*"))
            if os.path.isdir(t) and not os.path.islink(t)]
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
            raise TargetExistsError(f"{uri} exists (use --overwrite, or overwrite=True, to replace it)")
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
            raise UnsafeTargetError(f"{path} lies inside the store {uri_mod.normalise(st)}: "
                                    "not written")
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
_STORE_ENTRIES = frozenset({"zarr.json", "palette", "labels"})


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
    items = {os.path.abspath(item),
             os.path.realpath(item) if follow else os.path.join(os.path.realpath(head), name)}
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
        names = {p.rstrip("/").rpartition("/")[2] for p in fs.ls(path, detail=False)
                 if p.rstrip("/") != path.rstrip("/")}  # not a folder marker object
        read = lambda: fs.cat_file(f"{path}/zarr.json")  # noqa: E731
    else:
        if not os.path.isdir(uri):  # follows a link: a link to a store may be replaced
            kind = "a symbolic link to nothing" if os.path.islink(uri) and not os.path.exists(uri) \
                else "a file" if os.path.isfile(uri) else "not a folder"
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


# --------------------------------------------------------------------------- writing

@functools.lru_cache(maxsize=16)
def _labels_array(root: str):
    import zarr

    return zarr.open_array(store=uri_mod.zarr_store(root), path="labels", mode="r+")


class _Gate:
    """Lets chunk writes into a store being written in this process in, until it is aborted.

    ``close`` refuses new writes and waits for those in flight, so that after an abort
    (an error, Ctrl-C) no task still running in a dask thread writes into (and so
    re-creates) the temporary store that the abort removed.
    """

    def __init__(self, target: str | None = None) -> None:
        self.target = target  # an object-store target: its lock is checked before each write
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False

    def enter(self) -> bool:
        with self._cond:
            if self._closed:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def close(self, timeout: float = 120.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.wait_for(lambda: self._active == 0, timeout=timeout)


_gates: dict[str, _Gate] = {}


def write_packed_chunk(root: str, packed: np.ndarray, row0: int, byte0: int,
                       chunk: tuple[int, int]) -> None:
    """Write one packed block into ``root/labels``: exactly one zarr chunk, or one shard.

    A write into a store whose writer (in this process) has aborted is skipped.

    Raises
    ------
    StoreError
        If the write is not aligned to the array's chunk (or shard) grid: a
        partial write from concurrent tasks could lose data (for shards, zarr
        rewrites the whole shard).
    LockLostError
        If the store is on object storage and this process lost its lock.
    """
    gate = _gates.get(root)
    if gate is not None and not gate.enter():
        return
    try:
        if gate is not None and gate.target is not None:
            from kquant.store import locking

            locking.check(gate.target)  # a run that lost its lock writes nothing more
        layout = _direct_layout(root)
        if layout is not None:
            shape, grid, level = layout
            sharded = False
        else:
            arr = _labels_array(root)
            shape, grid, sharded = arr.shape, arr.shards or arr.chunks, arr.shards is not None
        rows, cols = grid
        h, w = packed.shape
        end_r, end_c = row0 + h, byte0 + w
        aligned = (row0 % rows == 0 and byte0 % cols == 0
                   and (h == rows or end_r == shape[0]) and (w == cols or end_c == shape[1]))
        if not aligned or (rows, cols) != tuple(chunk):
            raise StoreError(f"write of {packed.shape} at ({row0}, {byte0}) is not aligned to "
                             f"zarr {'shards' if sharded else 'chunks'} {(rows, cols)}")
        if layout is None:
            arr[row0:end_r, byte0:end_c] = packed
            return
        from kquant.store import direct

        full = packed
        if (h, w) != (rows, cols):  # an edge chunk is stored whole, padded with the fill value
            full = np.zeros((rows, cols), np.uint8)
            full[:h, :w] = packed
        direct.write_chunk(Path(root) / "labels", (row0 // rows, byte0 // cols), full,
                               zstd_level=level)
    finally:
        if gate is not None:
            gate.leave()


def _direct_layout(root: str) -> tuple[tuple[int, int], tuple[int, int], int] | None:
    """``(shape, chunks, zstd level)`` of ``root/labels`` when its chunks are written as files
    directly (:mod:`kquant.storefiles`, the bytes zarr writes), else None (remote or sharded
    stores, any other codecs: zarr writes them).

    Measured on a 1 Gpx write pass: 1.2-2 s less than through zarr's event loop.
    """
    import json

    if not DIRECT_CHUNK_WRITES or uri_mod.is_remote(root):
        return None
    doc = json.loads((Path(root) / "labels" / "zarr.json").read_bytes())
    codecs = doc.get("codecs", [])
    if ([c.get("name") for c in codecs] != ["bytes", "zstd"] or codecs[0].get("configuration")
            or codecs[1].get("configuration", {}).get("checksum") is not False
            or doc.get("chunk_key_encoding") != {"name": "default",
                                                 "configuration": {"separator": "/"}}
            or doc.get("fill_value") != 0 or doc.get("data_type") != "uint8"
            or doc.get("chunk_grid", {}).get("name") != "regular"):
        return None
    chunks = tuple(doc["chunk_grid"]["configuration"]["chunk_shape"])
    return tuple(doc["shape"]), chunks, int(codecs[1]["configuration"]["level"])


#: Label chunks of local unsharded stores are written as files by kquant.storefiles
#: (False: always through zarr; the tests compare both).
DIRECT_CHUNK_WRITES = True


def chunk_digest(packed: np.ndarray) -> str:
    """Digest of one packed chunk's bytes (uncompressed)."""
    return hashlib.blake2b(np.ascontiguousarray(packed).tobytes(), digest_size=16).hexdigest()


def combine_digests(digests: dict[tuple[int, int], str]) -> str:
    """One checksum over every chunk's digest, in chunk order."""
    h = hashlib.sha256()
    for key in sorted(digests):
        h.update(f"{key[0]},{key[1]}:{digests[key]}\n".encode())
    return "sha256:" + h.hexdigest()


def _dir_bytes(uri: str) -> int:
    if uri_mod.is_remote(uri):
        fs, path = uri_mod.filesystem(uri)
        return int(fs.du(path, total=True))
    return sum(p.stat().st_size for p in Path(uri).rglob("*") if p.is_file())


class StoreWriter:
    """Writes a store under a hidden temporary name and moves it into place on commit.

    Use as a context manager: leaving it with an exception removes the
    temporary store, so nothing half-written is left behind.

    On a local disk the final step is one ``rename``. On an object store (no
    rename) a new target is written in place and its attributes turn
    ``complete`` last; an existing target (with ``overwrite``) is replaced only
    after the new store is complete under a temporary prefix: its
    ``zarr.json`` is deleted first, then its objects, then the new store is
    copied in with ``zarr.json`` last, so a reader sees either the old store,
    no store, or the new one -- never a complete-looking mixture. What a run
    that stopped half-way leaves is settled by the next one (:func:`recover`).

    Parameters
    ----------
    target : str or path-like
        Final location of the store.
    meta : StoreMeta
        Initial attributes (status ``writing``).
    palette : ndarray of uint8, shape (n, 3)
    overwrite : bool, keyword-only
        Replace an existing target (only once the new store is complete).
    """

    def __init__(self, target, meta: StoreMeta, palette: np.ndarray, *, overwrite: bool = False):
        self.target = check_target(target, overwrite=overwrite)
        self.overwrite = overwrite
        palette = np.asarray(palette, np.uint8)
        if palette.shape != (meta.n_colors, 3):
            raise ParameterError(f"palette shape {palette.shape} does not match {meta.n_colors} colours")
        self.meta = meta.replace(status=STATUS_WRITING)
        self.palette = palette
        self.remote = uri_mod.is_remote(self.target)
        in_place = self.remote and not _exists(self.target)
        self.root = self.target if in_place else _sibling(self.target, "tmp")
        self._moving = False

    def __enter__(self) -> "StoreWriter":
        from kquant.store import locking

        locking.acquire(self.target)
        _gates[self.root] = _Gate(self.target if self.remote else None)
        try:
            with uri_mod.storage_errors(self.target):
                self._create()
        except BaseException as exc:
            self._abort(remove=not isinstance(exc, StorageUnreachableError))
            locking.release(self.target)
            self._raise_if_no_space(exc)
            raise
        return self

    def _raise_if_no_space(self, exc: BaseException | None) -> None:
        """A full disk (or quota) becomes one clear line instead of an unexpected OSError."""
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(f"no space left on the device of {self.target} "
                               f"({os.strerror(exc.errno)}); the partial store was removed") from exc

    def _create(self) -> None:
        import zarr

        with zarr.config.set({"json_indent": None}):  # compact metadata: ~1 KB less a store
            self._create_arrays()

    def _create_arrays(self) -> None:
        import zarr
        from zarr.codecs import ZstdCodec

        if not self.overwrite and _exists(self.target):  # appeared since check_target
            raise TargetExistsError(f"{self.target} exists (use --overwrite, or overwrite=True, to replace it)")
        group = zarr.open_group(store=uri_mod.zarr_store(self.root), mode="w-", zarr_format=3)
        group.attrs["kquant"] = self.meta.to_json()
        pal = group.create_array("palette", shape=self.palette.shape, dtype="uint8",
                                 chunks=self.palette.shape, compressors=None)
        pal[...] = self.palette
        group.create_array(
            "labels",
            shape=(self.meta.height, packing.packed_width(self.meta.width, self.meta.bits)),
            dtype="uint8", chunks=self.meta.packed_chunks, shards=self.meta.packed_shards,
            fill_value=0,
            compressors=ZstdCodec(level=zstd_level(self.meta.height * self.meta.width)),
            dimension_names=("y", "packed_x"))

    def __exit__(self, exc_type, exc, tb) -> None:
        from kquant.store import locking

        _labels_array.cache_clear()
        try:
            if exc_type is not None:
                err = None
                if self.remote and isinstance(exc, Exception) and not isinstance(exc, KquantError):
                    err = uri_mod.storage_error(exc, self.target, self.meta.source.get("uri"))
                # an unreachable store is not waited for again: the next run cleans up
                self._abort(remove=not isinstance(err or exc, StorageUnreachableError))
                self._raise_if_no_space(exc)
                if err is not None:
                    raise err from exc
        finally:
            locking.release(self.target)

    def abort(self) -> None:
        """Remove the unfinished store. On object storage a store that cannot be reached
        now, whose lock this run lost, or that was being copied over the old store (then
        the only complete one) is left to the next run (:func:`recover`)."""
        self._abort(remove=True)

    def _abort(self, *, remove: bool) -> None:
        from kquant.store import locking

        gate = _gates.get(self.root)  # stays registered, closed: late tasks skip their write
        if gate is not None:
            gate.close()  # no write lands after this
        if not self.remote:
            _remove(self.root)
        elif remove and not self._moving and not locking.lost(self.target):
            try:
                _remove(self.root)
            except Exception:  # unreachable: the next run for this target removes it
                pass

    def commit(self, *, metrics: dict, checksum: str) -> StoreMeta:
        """Record metrics and checksum, mark complete, and move the store into place.

        Raises
        ------
        TargetExistsError
            If the target appeared during the run and ``overwrite`` is false.
        LockLostError
            If the target is on object storage and this run lost its lock.
        ObjectStoreError
            If the object store cannot be reached or refuses a request.
        """
        with uri_mod.storage_errors(self.target):
            return self._commit(metrics=metrics, checksum=checksum)

    def _commit(self, *, metrics: dict, checksum: str) -> StoreMeta:
        from kquant.store import locking

        _gates.pop(self.root, None)  # every block is written
        n_pixels = self.meta.height * self.meta.width
        data_bytes = _dir_bytes(self.root)
        metrics = dict(metrics, store_bytes=data_bytes,
                       store_bits_per_pixel=8.0 * data_bytes / n_pixels,
                       label_bits_per_pixel=self.meta.bits)
        final = self.meta.replace(status=STATUS_COMPLETE, metrics=metrics, checksum=checksum)
        locking.check(self.target)
        self._write_attributes(final)
        if self.root != self.target:
            if _exists(self.target) and not self.overwrite:  # appeared while we worked
                raise TargetExistsError(f"{self.target} appeared during the run; not replaced")
            if self.remote:
                self._moving = True  # from here the temporary store may be the only complete one
                self._replace_remote()
            else:
                trash = None
                if os.path.lexists(self.target):
                    trash = _sibling(self.target, "old")
                    os.rename(self.target, trash)
                os.rename(self.root, self.target)
                if trash is not None:
                    _remove(trash)
        self.root = self.target
        self.meta = final
        return final

    def _write_attributes(self, meta: StoreMeta) -> None:
        import zarr

        with zarr.config.set({"json_indent": None}):
            group = zarr.open_group(store=uri_mod.zarr_store(self.root), mode="r+")
            group.attrs["kquant"] = meta.to_json()

    def _replace_remote(self) -> None:
        from kquant.store import locking

        fs, src = uri_mod.filesystem(self.root)
        _, dst = uri_mod.filesystem(self.target)
        _move_remote(fs, src, dst, check=lambda: locking.check(self.target))


class DirectStoreWriter(StoreWriter):
    """A :class:`StoreWriter` of a local, unsharded store of one chunk that does not use zarr.

    The files are written by :mod:`kquant.storefiles`, byte for byte those zarr-python
    writes; the protocol (lock, hidden temporary store, ``writing`` then ``complete``
    attributes, rename, removal on error) is :class:`StoreWriter`'s. Importing zarr costs
    ~0.3 s, more than quantizing a small image.

    Raises
    ------
    ParameterError
        If the target is remote, or the store is sharded or has more than one chunk.
    """

    def __init__(self, target, meta: StoreMeta, palette: np.ndarray, *, overwrite: bool = False):
        super().__init__(target, meta, palette, overwrite=overwrite)
        if self.remote or meta.shard_rows is not None or meta.packed_chunks != (
                meta.height, packing.packed_width(meta.width, meta.bits)):
            raise ParameterError("a direct store write needs a local, unsharded store of one chunk")

    def _create(self) -> None:
        from kquant.store import direct

        if not self.overwrite and _exists(self.target):  # appeared since check_target
            raise TargetExistsError(f"{self.target} exists (use --overwrite, or overwrite=True, "
                                    "to replace it)")
        root = Path(self.root)
        root.mkdir()
        self._write_attributes(self.meta)
        (root / "palette").mkdir()
        (root / "palette" / direct.ZARR_JSON).write_bytes(
            direct.array_document(self.palette.shape, self.palette.shape))
        self._write_chunk("palette", self.palette, None)
        (root / "labels").mkdir()
        (root / "labels" / direct.ZARR_JSON).write_bytes(direct.array_document(
            self.meta.packed_chunks, self.meta.packed_chunks,
            zstd_level=zstd_level(self.meta.height * self.meta.width),
            dimension_names=("y", "packed_x")))

    def _write_chunk(self, array: str, data: np.ndarray, level: int | None) -> None:
        from kquant.store import direct

        direct.write_chunk(Path(self.root) / array, (0,) * data.ndim, data, zstd_level=level)

    def write_labels(self, packed: np.ndarray) -> None:
        """Write the packed labels (the whole array: its one chunk)."""
        if packed.shape != self.meta.packed_chunks:
            raise StoreError(f"packed labels of shape {packed.shape} are not the store's one "
                             f"chunk {self.meta.packed_chunks}")
        gate = _gates.get(self.root)
        if gate is not None and not gate.enter():
            return
        try:
            self._write_chunk("labels", packed, zstd_level(self.meta.height * self.meta.width))
        finally:
            if gate is not None:
                gate.leave()

    def _write_attributes(self, meta: StoreMeta) -> None:
        from kquant.store import direct

        (Path(self.root) / direct.ZARR_JSON).write_bytes(
            direct.group_document({"kquant": meta.to_json()}))


# --------------------------------------------------------------------------- reading

class KquantStore:
    """A complete kquant store opened for reading.

    Attributes
    ----------
    meta : StoreMeta
    palette : ndarray of uint8, shape (n, 3)
    packed : dask array of the packed labels
    labels : dask array (H, W) uint8, decoded lazily chunk by chunk
    rgb : dask array (H, W, 3) uint8, reconstructed lazily
    """

    def __init__(self, root: str, meta: StoreMeta, palette: np.ndarray):
        import dask.array as da

        from kquant.label import reconstruct

        self.root, self.meta, self.palette = root, meta, palette
        # blocks of whole shards (from_zarr would pick the inner chunks), the unit of the checksum
        self.packed = da.from_zarr(uri_mod.zarr_store(root, read_only=True), component="labels",
                                   chunks=meta.packed_block)
        cols = meta.block[1]
        widths = tuple(min(cols, meta.width - x) for x in range(0, meta.width, cols))
        bits = meta.bits

        def unpack(block, block_info=None):
            j = block_info[0]["chunk-location"][1]
            return packing.unpack_rows(block, bits, widths[j])

        self.labels = self.packed.map_blocks(unpack, dtype=np.uint8,
                                             chunks=(self.packed.chunks[0], widths))
        self.rgb = reconstruct.reconstruct(self.labels, palette)

    @property
    def shape(self) -> tuple[int, int]:
        return self.meta.shape

    def window(self, y0: int, y1: int, x0: int, x1: int):
        """Lazy RGB of rows y0:y1 and columns x0:x1 (reads only the chunks it covers)."""
        return self.rgb[y0:y1, x0:x1]

    def verify(self) -> None:
        """Recompute every chunk's digest and compare with the stored checksum.

        Raises
        ------
        StoreError
            If the labels do not match the checksum recorded at completion.
        """
        import dask

        blocks = self.packed.to_delayed()
        keys = list(np.ndindex(*blocks.shape))
        digests = dask.compute(*[dask.delayed(chunk_digest)(blocks[k]) for k in keys])
        if combine_digests(dict(zip(keys, digests))) != self.meta.checksum:
            raise StoreError(f"{self.root}: labels do not match the store's checksum")


def read_meta(uri: str | os.PathLike) -> StoreMeta:
    """The attributes of a kquant store, complete or not.

    Raises
    ------
    StoreError
        If the path is not a zarr group with kquant attributes.
    ObjectStoreError
        If the object store cannot be reached or refuses the read.
    """
    import zarr

    root = uri_mod.normalise(uri)
    if uri_mod.is_remote(root):
        with uri_mod.storage_errors(root):
            fs, path = uri_mod.filesystem(root)
            has_group = fs.exists(f"{path}/zarr.json")
            if not has_group:  # a missing bucket is said so
                try:
                    fs.info(path)
                except FileNotFoundError as exc:
                    err = uri_mod.storage_error(exc, root)
                    if err is not None:
                        raise err from None
    else:
        has_group = os.path.isfile(os.path.join(root, "zarr.json"))
    if not has_group:
        raise StoreError(f"{root} is not a kquant store (no zarr group)")
    try:
        group = zarr.open_group(store=uri_mod.zarr_store(root, read_only=True), mode="r")
        attrs = group.attrs.asdict()
    except Exception as exc:
        raise StoreError(f"{root} is not a readable zarr group: {exc}") from None
    if "kquant" not in attrs:
        raise StoreError(f"{root} is not a kquant store (no kquant attributes)")
    return StoreMeta.from_json(attrs["kquant"])


def open_store(uri: str | os.PathLike) -> KquantStore:
    """Open a complete kquant store: palette, lazy labels and lazy RGB.

    Parameters
    ----------
    uri : str or path-like
        Local path, ``file://`` or fsspec URL (``s3://bucket/prefix``).

    Raises
    ------
    StoreError
        If the path is not a kquant store.
    IncompleteStoreError
        If the store was never completed (a crashed or running write).
    """
    import zarr

    root = uri_mod.normalise(uri)
    meta = read_meta(root)
    if not meta.complete:
        raise IncompleteStoreError(f"{root} is incomplete (status {meta.status!r}): "
                                   "its run crashed or is still writing")
    palette = np.asarray(zarr.open_array(store=uri_mod.zarr_store(root, read_only=True),
                                         path="palette", mode="r")[...])
    if palette.shape != (meta.n_colors, 3) or palette.dtype != np.uint8:
        raise StoreError(f"{root}: palette of shape {palette.shape} does not match the attributes")
    return KquantStore(root, meta, palette)


# --------------------------------------------------------------------------- targets

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
