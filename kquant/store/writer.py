"""Writing a store: under a hidden temporary name, moved into place by one rename after every
chunk and the final attributes (``status: "complete"`` and a checksum of every packed chunk)
are written; on object storage, in place with ``zarr.json`` last."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import threading
from pathlib import Path
from typing import Self

import numpy as np

from kquant.errors import (
    KquantError,
    NoSpaceError,
    ParameterError,
    StorageUnreachableError,
    StoreError,
    TargetExistsError,
)
from kquant.io import uri as uri_mod
from kquant.label import packing
from kquant.store.format import (
    LEVELS_GROUP,
    STATUS_COMPLETE,
    STATUS_WRITING,
    StoreMeta,
    level_path,
    zstd_level,
)
from kquant.store.recovery import _move_remote
from kquant.store.targets import _exists, _remove, _sibling, check_target


@functools.lru_cache(maxsize=64)
def _array(root: str, path: str):
    import zarr

    from kquant.store import codecs  # noqa: F401  (registers packbits)

    return zarr.open_array(store=uri_mod.zarr_store(root), path=path, mode="r+")


def _labels_array(root: str):
    return _array(root, "labels")


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


@contextlib.contextmanager
def _admitted(root: str):
    """Around a chunk write into ``root``: yields False when the store's writer in this
    process has aborted (the write is skipped), else True, and the write counts as in
    flight until the block ends (:class:`_Gate`).

    Raises
    ------
    LockLostError
        If the store is on object storage and this process lost its lock (a run that lost
        its lock writes nothing more).
    """
    gate = _gates.get(root)
    if gate is not None and not gate.enter():
        yield False
        return
    try:
        if gate is not None and gate.target is not None:
            from kquant.store import locking

            locking.check(gate.target)
        yield True
    finally:
        if gate is not None:
            gate.leave()


def write_packed_chunk(
    root: str, packed: np.ndarray, row0: int, byte0: int, chunk: tuple[int, int]
) -> None:
    """Write one packed block into ``root/labels``: exactly one zarr chunk, or one shard.

    ``packed`` is the block's labels packed MSB-first row by row
    (:func:`kquant.label.packing.pack_rows`), ``byte0`` its first column in bytes of packed
    rows and ``chunk`` the packed shape of a whole block (:attr:`StoreMeta.packed_block`),
    whatever the store's format: format-3 labels are written through the packbits codec.
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
    with _admitted(root) as admitted:
        if not admitted:
            return
        layout = _layout(root)
        if layout.packbits is not None:
            _write_labels_block(root, layout, packed, row0, byte0, tuple(chunk))
            return
        rows, cols = layout.grid
        h, w = packed.shape
        end_r, end_c = row0 + h, byte0 + w
        aligned = (
            row0 % rows == 0
            and byte0 % cols == 0
            and (h == rows or end_r == layout.shape[0])
            and (w == cols or end_c == layout.shape[1])
        )
        if not aligned or (rows, cols) != tuple(chunk):
            raise StoreError(
                f"write of {packed.shape} at ({row0}, {byte0}) is not aligned to "
                f"zarr {'shards' if layout.sharded else 'chunks'} {(rows, cols)}"
            )
        if not layout.direct:
            _labels_array(root)[row0:end_r, byte0:end_c] = packed
            return
        from kquant.store import direct

        full = packed
        if (h, w) != (rows, cols):  # an edge chunk is stored whole, padded with the fill value
            full = np.zeros((rows, cols), np.uint8)
            full[:h, :w] = packed
        direct.write_chunk(
            Path(root) / "labels", (row0 // rows, byte0 // cols), full, zstd_level=layout.level
        )


def _write_labels_block(
    root: str, layout: _Layout, packed: np.ndarray, row0: int, byte0: int, chunk: tuple
) -> None:
    """:func:`write_packed_chunk` into format-3 labels, an (H, W) array of the packbits codec:
    alignment is checked in pixels; local unsharded chunks are written as files (the packed
    rows, reordered, are the codec's bytes), others through zarr and the codec."""
    bits = layout.packbits
    assert bits is not None
    rows, cols = layout.grid  # pixels (a shard when sharded)
    height, width = layout.shape
    h, w = packed.shape
    col0 = byte0 * 8 // bits
    n_cols = min(cols, width - col0) if 0 <= col0 < width else 0
    aligned = (
        (byte0 * 8) % bits == 0
        and row0 % rows == 0
        and col0 % cols == 0
        and n_cols > 0
        and h == min(rows, height - row0)
        and w == packing.packed_width(n_cols, bits)
        and chunk[0] == rows
        # a block spanning the width is packed at the width (StoreMeta.packed_block)
        and chunk[1]
        in (cols * bits // 8, packing.packed_width(width, bits) if cols >= width else -1)
    )
    if not aligned:
        raise StoreError(
            f"write of {packed.shape} at ({row0}, {byte0}) is not aligned to "
            f"zarr {'shards' if layout.sharded else 'chunks'} {(rows, cols)} (pixels)"
        )
    if not layout.direct:
        labels = packing.unpack_rows(packed, bits, n_cols)
        _labels_array(root)[row0 : row0 + h, col0 : col0 + n_cols] = labels
        return
    from kquant.store import direct

    full = packed
    if (h, w) != (rows, cols * bits // 8):  # stored whole, padded with the fill value
        full = np.zeros((rows, cols * bits // 8), np.uint8)
        full[:h, :w] = packed
    direct.write_chunk(
        Path(root) / "labels",
        (row0 // rows, col0 // cols),
        full,
        zstd_level=layout.level,
        packbits=bits,
    )


def write_level_chunk(root: str, level: int, labels: np.ndarray, row0: int, col0: int) -> None:
    """Write one whole chunk of pyramid level ``level`` (>= 1) of a format-3 store being
    written: ``labels`` (h, w) at pixel ``(row0, col0)`` of that level. Skipped, as
    :func:`write_packed_chunk`, in a store whose writer has aborted.

    Raises
    ------
    StoreError
        If the write is not exactly one chunk of the level.
    LockLostError
        If the store is on object storage and this process lost its lock.
    """
    with _admitted(root) as admitted:
        if not admitted:
            return
        path = level_path(level)
        layout = _layout(root, path)
        bits = layout.packbits
        rows, cols = layout.grid
        height, width = layout.shape
        h, w = labels.shape
        if (
            bits is None
            or layout.sharded
            or row0 % rows
            or col0 % cols
            or not (0 <= row0 < height and 0 <= col0 < width)
            or (h, w) != (min(rows, height - row0), min(cols, width - col0))
        ):
            raise StoreError(
                f"write of {labels.shape} at ({row0}, {col0}) is not one chunk {(rows, cols)} "
                f"of {path}"
            )
        if not layout.direct:
            _array(root, path)[row0 : row0 + h, col0 : col0 + w] = labels
            return
        from kquant.store import direct

        full = np.zeros((rows, cols), np.uint8)  # stored whole, padded with the fill value
        full[:h, :w] = labels
        direct.write_encoded_chunk(
            Path(root) / path,
            (row0 // rows, col0 // cols),
            full,
            packing.packbits_encode(full, 0, bits - 1),
            zstd_level=int(layout.level or 0),
        )


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What a chunk write needs to know of ``root/labels``."""

    shape: tuple[int, int]
    grid: tuple[int, int]  # chunk, or shard when sharded (format 3: pixels; else bytes)
    sharded: bool
    direct: bool  # chunk files written by kquant.store.direct
    level: int | None = None  # zstd level of direct writes
    packbits: int | None = None  # format 3: bits per pixel of the packbits codec


def _layout(root: str, path: str = "labels") -> _Layout:
    doc = _array_document(root, path)
    codecs = doc.get("codecs", [])
    sharded = bool(codecs) and codecs[0].get("name") == "sharding_indexed"
    inner = codecs[0].get("configuration", {}).get("codecs", []) if sharded else codecs
    level = None
    if DIRECT_CHUNK_WRITES and not sharded and not uri_mod.is_remote(root):
        level = _direct_layout(doc)
    return _Layout(
        shape=tuple(doc["shape"]),
        grid=tuple(doc["chunk_grid"]["configuration"]["chunk_shape"]),
        sharded=sharded,
        direct=level is not None,
        level=level,
        packbits=_packbits_of(inner),
    )


def _packbits_of(codecs: list) -> int | None:
    """Bits per pixel of a packbits codec first in ``codecs`` (format-3 labels), else None."""
    if codecs and codecs[0].get("name") == "packbits":
        return int(codecs[0].get("configuration", {}).get("last_bit")) + 1
    return None


@functools.lru_cache(maxsize=64)
def _array_document(root: str, path: str = "labels") -> dict:
    """The metadata document of the array ``root/path`` (its ``zarr.json``)."""
    import json

    if uri_mod.is_remote(root):
        return _array(root, path).metadata.to_dict()
    return json.loads((Path(root) / path / "zarr.json").read_bytes())


def _direct_layout(doc: dict) -> int | None:
    """The zstd level when the chunks of the labels array ``doc`` describes are written as
    files directly (:mod:`kquant.store.direct`, the bytes zarr writes), else None (sharded
    stores, any other codecs: zarr writes them).

    Measured on a 1 Gpx write pass: 1.2-2 s less than through zarr's event loop.
    """
    codecs = doc.get("codecs", [])
    first = codecs[0] if codecs else {}
    plain = first.get("name") == "bytes" and not first.get("configuration")
    packed = first == {
        "name": "packbits",
        "configuration": {
            "padding_encoding": "none",
            "first_bit": 0,
            "last_bit": (_packbits_of(codecs) or 0) - 1,
        },
    } and _packbits_of(codecs) in (1, 2, 4, 8)
    if (
        len(codecs) != 2
        or not (plain or packed)
        or codecs[1].get("name") != "zstd"
        or codecs[1].get("configuration", {}).get("checksum") is not False
        or doc.get("chunk_key_encoding") != {"name": "default", "configuration": {"separator": "/"}}
        or doc.get("fill_value") != 0
        or doc.get("data_type") != "uint8"
        or doc.get("chunk_grid", {}).get("name") != "regular"
    ):
        return None
    return int(codecs[1]["configuration"]["level"])


#: Dimension names of the format-3 arrays (xarray, OME-NGFF).
LABEL_DIMS = ("y", "x")
PALETTE_DIMS = ("entry", "band")

#: Label chunks of local unsharded stores are written as files by kquant.store.direct
#: (False: always through zarr; the tests compare both).
DIRECT_CHUNK_WRITES = True


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
            raise ParameterError(
                f"palette shape {palette.shape} does not match {meta.n_colors} colours"
            )
        self.meta = meta.replace(status=STATUS_WRITING)
        self.palette = palette
        self.remote = uri_mod.is_remote(self.target)
        in_place = self.remote and not _exists(self.target)
        self.root = self.target if in_place else _sibling(self.target, "tmp")
        self._moving = False

    def __enter__(self) -> Self:
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
            raise NoSpaceError(
                f"no space left on the device of {self.target} "
                f"({os.strerror(exc.errno)}); the partial store was removed"
            ) from exc

    def _create(self) -> None:
        import zarr

        from kquant.store import codecs  # noqa: F401  (registers packbits)

        with zarr.config.set({"json_indent": None}):  # compact metadata: ~1 KB less a store
            self._create_arrays()

    def _create_arrays(self) -> None:
        import zarr
        from zarr.codecs import ZstdCodec

        from kquant.store import codecs  # noqa: F401  (registers packbits)

        if not self.overwrite and _exists(self.target):  # appeared since check_target
            raise TargetExistsError(
                f"{self.target} exists (use --overwrite, or overwrite=True, to replace it)"
            )
        group = zarr.open_group(store=uri_mod.zarr_store(self.root), mode="w-", zarr_format=3)
        group.attrs.update(self._group_attributes(self.meta))
        meta = self.meta
        pal = group.create_array(
            "palette",
            shape=self.palette.shape,
            dtype="uint8",
            chunks=self.palette.shape,
            compressors=None,
            dimension_names=PALETTE_DIMS if meta.packbits else None,
        )
        pal[...] = self.palette
        level = ZstdCodec(level=zstd_level(meta.height * meta.width))
        if not meta.packbits:  # formats 1 and 2: rows of packed bytes
            group.create_array(
                "labels",
                shape=(meta.height, packing.packed_width(meta.width, meta.bits)),
                dtype="uint8",
                chunks=meta.packed_chunks,
                shards=meta.packed_shards,
                fill_value=0,
                compressors=level,
                dimension_names=("y", "packed_x"),
            )
            return
        from kquant.store.codecs import PackBitsCodec

        group.create_array(
            "labels",
            shape=meta.shape,
            dtype="uint8",
            chunks=meta.label_chunks,
            shards=meta.label_shards,
            fill_value=0,
            serializer=PackBitsCodec(first_bit=0, last_bit=meta.bits - 1),
            compressors=level,
            dimension_names=LABEL_DIMS,
        )
        if meta.levels > 1:
            levels = group.create_group(LEVELS_GROUP)
            for n in range(1, meta.levels):
                levels.create_array(
                    str(n),
                    shape=meta.level_shape(n),
                    dtype="uint8",
                    chunks=meta.level_chunks,
                    fill_value=0,
                    serializer=PackBitsCodec(first_bit=0, last_bit=meta.bits - 1),
                    compressors=level,
                    dimension_names=LABEL_DIMS,
                )

    def _group_attributes(self, meta: StoreMeta) -> dict:
        """The group's attributes: ``kquant`` (:class:`StoreMeta`) and, in format 3, ``ome``
        (the store as an OME-NGFF label image, :mod:`kquant.store.ngff`, named after the
        source image)."""
        attrs: dict = {"kquant": meta.to_json()}
        if meta.geo:  # also where GeoZarr readers look: the group's own proj: and spatial:
            attrs.update(meta.geo)
        if meta.packbits:
            from kquant.store import ngff

            name = str(meta.source.get("uri") or "labels").rstrip("/").rpartition("/")[2]
            paths = [level_path(n) for n in range(meta.levels)]
            attrs["ome"] = ngff.label_image(name, paths, self.palette)
        return attrs

    def __exit__(self, exc_type, exc, tb) -> None:
        from kquant.store import locking

        _array.cache_clear()
        _array_document.cache_clear()
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
        metrics = dict(
            metrics,
            store_bytes=data_bytes,
            store_bits_per_pixel=8.0 * data_bytes / n_pixels,
            label_bits_per_pixel=self.meta.bits,
        )
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

        from kquant.store import codecs  # noqa: F401  (registers packbits)

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

    The files are written by :mod:`kquant.store.direct`, byte for byte those zarr-python
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
        if (
            self.remote
            or meta.shard_rows is not None
            or meta.packed_chunks != (meta.height, packing.packed_width(meta.width, meta.bits))
            or (meta.packbits and meta.bits not in (1, 2, 4, 8))
            or meta.levels > 1
        ):
            raise ParameterError("a direct store write needs a local, unsharded store of one chunk")

    def _create(self) -> None:
        from kquant.store import direct

        if not self.overwrite and _exists(self.target):  # appeared since check_target
            raise TargetExistsError(
                f"{self.target} exists (use --overwrite, or overwrite=True, to replace it)"
            )
        root = Path(self.root)
        root.mkdir()
        self._write_attributes(self.meta)
        meta = self.meta
        (root / "palette").mkdir()
        (root / "palette" / direct.ZARR_JSON).write_bytes(
            direct.array_document(
                self.palette.shape,
                self.palette.shape,
                dimension_names=PALETTE_DIMS if meta.packbits else None,
            )
        )
        self._write_chunk("palette", self.palette, None)
        (root / "labels").mkdir()
        level = zstd_level(meta.height * meta.width)
        if meta.packbits:
            doc = direct.array_document(
                meta.shape,
                meta.label_chunks,
                zstd_level=level,
                dimension_names=LABEL_DIMS,
                packbits=meta.bits,
            )
        else:
            doc = direct.array_document(
                meta.packed_chunks,
                meta.packed_chunks,
                zstd_level=level,
                dimension_names=("y", "packed_x"),
            )
        (root / "labels" / direct.ZARR_JSON).write_bytes(doc)

    def _write_chunk(
        self, array: str, data: np.ndarray, level: int | None, packbits: int | None = None
    ) -> None:
        from kquant.store import direct

        direct.write_chunk(
            Path(self.root) / array, (0,) * data.ndim, data, zstd_level=level, packbits=packbits
        )

    def write_labels(self, packed: np.ndarray) -> None:
        """Write the packed labels (the whole array: its one chunk)."""
        if packed.shape != self.meta.packed_chunks:
            raise StoreError(
                f"packed labels of shape {packed.shape} are not the store's one "
                f"chunk {self.meta.packed_chunks}"
            )
        gate = _gates.get(self.root)
        if gate is not None and not gate.enter():
            return
        try:
            meta = self.meta
            level = zstd_level(meta.height * meta.width)
            if not meta.packbits:
                self._write_chunk("labels", packed, level)
                return
            rows, cols = meta.label_chunks  # whole bytes a row: padded with the fill value
            full = np.zeros((rows, cols * meta.bits // 8), np.uint8)
            full[:, : packed.shape[1]] = packed
            self._write_chunk("labels", full, level, packbits=meta.bits)
        finally:
            if gate is not None:
                gate.leave()

    def _write_attributes(self, meta: StoreMeta) -> None:
        from kquant.store import direct

        (Path(self.root) / direct.ZARR_JSON).write_bytes(
            direct.group_document(self._group_attributes(meta))
        )
