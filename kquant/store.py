"""The kquant store: a zarr v3 group holding a palette and bit-packed labels.

Layout (see ``docs/format.md``)::

    STORE/                 zarr v3 group, attributes {"kquant": StoreMeta}
      palette              (n, 3) uint8, one chunk
      labels               (H, ceil(W * bits / 8)) uint8, packed rows, zstd level 3

A store is written under a hidden sibling name and moved into place by one
rename after every chunk and the final attributes (``status: "complete"`` and
a checksum of every packed chunk) are written. Readers refuse a store whose
status is not ``complete``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from . import packing
from .errors import IncompleteStoreError, ParameterError, StoreError, TargetExistsError

FORMAT = "kquant-store"
FORMAT_VERSION = 1
PACKING = "row-major; each row packed MSB-first at `bits` bits per pixel and padded to a whole byte"
STATUS_WRITING = "writing"
STATUS_COMPLETE = "complete"
ZSTD_LEVEL = 3


def _version() -> str:
    from . import __version__

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
        if self.bits != packing.bits_for(self.n_colors):
            raise StoreError(f"store bits {self.bits} do not match {self.n_colors} colours")
        if self.chunk_cols % packing.PIXEL_ALIGN and self.chunk_cols < self.width:
            raise StoreError(f"chunk width {self.chunk_cols} is not a multiple of {packing.PIXEL_ALIGN}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE

    @property
    def packed_chunks(self) -> tuple[int, int]:
        """Chunk shape of the packed labels array (rows, bytes)."""
        return (self.chunk_rows, self.chunk_cols * self.bits // 8
                if self.chunk_cols < self.width else packing.packed_width(self.width, self.bits))

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
    """The local path of a store URI (plain path or ``file://``).

    Raises
    ------
    StoreError
        For URLs of other schemes.
    """
    text = os.fspath(uri)
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        raise StoreError(f"unsupported store URL {text!r} (local paths and file:// only)")
    return Path(text).expanduser().absolute()


def check_target(target: str | os.PathLike, *, overwrite: bool) -> Path:
    """Refuse an existing target unless ``overwrite``; return its path.

    Raises
    ------
    TargetExistsError
        If the target exists and ``overwrite`` is false.
    StoreError
        If its parent folder does not exist.
    """
    path = local_path(target)
    if path.exists() and not overwrite:
        raise TargetExistsError(f"{path} exists (use --overwrite to replace it)")
    if not path.parent.is_dir():
        raise StoreError(f"folder {path.parent} does not exist")
    return path


# --------------------------------------------------------------------------- writing

@functools.lru_cache(maxsize=16)
def _labels_array(root: str):
    import zarr

    return zarr.open_array(store=root, path="labels", mode="r+")


def write_packed_chunk(root: str, packed: np.ndarray, row0: int, byte0: int,
                       chunk: tuple[int, int]) -> None:
    """Write one packed chunk into ``root/labels``; it must cover whole zarr chunks.

    Raises
    ------
    StoreError
        If the write is not aligned to the array's chunk grid (a partial-chunk
        write from concurrent tasks could lose data).
    """
    arr = _labels_array(root)
    rows, cols = arr.chunks
    h, w = packed.shape
    end_r, end_c = row0 + h, byte0 + w
    aligned = (row0 % rows == 0 and byte0 % cols == 0
               and (h == rows or end_r == arr.shape[0]) and (w == cols or end_c == arr.shape[1]))
    if not aligned or (rows, cols) != tuple(chunk):
        raise StoreError(f"write of {packed.shape} at ({row0}, {byte0}) is not aligned to "
                         f"zarr chunks {arr.chunks}")
    arr[row0:end_r, byte0:end_c] = packed


def chunk_digest(packed: np.ndarray) -> str:
    """Digest of one packed chunk's bytes (uncompressed)."""
    return hashlib.blake2b(np.ascontiguousarray(packed).tobytes(), digest_size=16).hexdigest()


def combine_digests(digests: dict[tuple[int, int], str]) -> str:
    """One checksum over every chunk's digest, in chunk order."""
    h = hashlib.sha256()
    for key in sorted(digests):
        h.update(f"{key[0]},{key[1]}:{digests[key]}\n".encode())
    return "sha256:" + h.hexdigest()


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class StoreWriter:
    """Writes a store under a hidden temporary name and moves it into place on commit.

    Use as a context manager: leaving it with an exception removes the
    temporary store, so nothing half-written is left behind.

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
        self.tmp = self.target.parent / f".{self.target.name}.kquant-tmp-{uuid.uuid4().hex[:12]}"
        self.root = str(self.tmp)

    def __enter__(self) -> "StoreWriter":
        import zarr
        from zarr.codecs import ZstdCodec

        group = zarr.open_group(self.root, mode="w-", zarr_format=3)
        group.attrs["kquant"] = self.meta.to_json()
        pal = group.create_array("palette", shape=self.palette.shape, dtype="uint8",
                                 chunks=self.palette.shape, compressors=None)
        pal[...] = self.palette
        group.create_array(
            "labels",
            shape=(self.meta.height, packing.packed_width(self.meta.width, self.meta.bits)),
            dtype="uint8", chunks=self.meta.packed_chunks, fill_value=0,
            compressors=ZstdCodec(level=ZSTD_LEVEL), dimension_names=("y", "packed_x"))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        _labels_array.cache_clear()
        if exc_type is not None:
            self.abort()

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def commit(self, *, metrics: dict, checksum: str) -> StoreMeta:
        """Record metrics and checksum, mark complete, and move the store into place."""
        import zarr

        n_pixels = self.meta.height * self.meta.width
        data_bytes = _dir_bytes(self.tmp)
        metrics = dict(metrics, store_bytes=data_bytes,
                       store_bits_per_pixel=8.0 * data_bytes / n_pixels,
                       label_bits_per_pixel=self.meta.bits)
        final = self.meta.replace(status=STATUS_COMPLETE, metrics=metrics, checksum=checksum)
        group = zarr.open_group(self.root, mode="r+")
        group.attrs["kquant"] = final.to_json()
        trash = None
        if self.target.exists():
            if not self.overwrite:  # appeared while we worked
                raise TargetExistsError(f"{self.target} appeared during the run; not replaced")
            trash = self.target.parent / f".{self.target.name}.kquant-old-{uuid.uuid4().hex[:12]}"
            os.rename(self.target, trash)
        os.rename(self.tmp, self.target)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True) if trash.is_dir() else trash.unlink()
        self.meta = final
        return final


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

        from . import reconstruct

        self.root, self.meta, self.palette = root, meta, palette
        self.packed = da.from_zarr(root, component="labels")
        cols = meta.chunk_cols
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
    """
    import zarr

    path = local_path(uri)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path} is not a kquant store (no zarr group)")
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = group.attrs.asdict()
    except Exception as exc:
        raise StoreError(f"{path} is not a readable zarr group: {exc}") from None
    if "kquant" not in attrs:
        raise StoreError(f"{path} is not a kquant store (no kquant attributes)")
    return StoreMeta.from_json(attrs["kquant"])


def open_store(uri: str | os.PathLike) -> KquantStore:
    """Open a complete kquant store: palette, lazy labels and lazy RGB.

    Raises
    ------
    StoreError
        If the path is not a kquant store.
    IncompleteStoreError
        If the store was never completed (a crashed or running write).
    """
    import zarr

    path = local_path(uri)
    meta = read_meta(path)
    if not meta.complete:
        raise IncompleteStoreError(f"{path} is incomplete (status {meta.status!r}): "
                                   "its run crashed or is still writing")
    palette = np.asarray(zarr.open_array(store=str(path), path="palette", mode="r")[...])
    if palette.shape != (meta.n_colors, 3) or palette.dtype != np.uint8:
        raise StoreError(f"{path}: palette of shape {palette.shape} does not match the attributes")
    return KquantStore(str(path), meta, palette)
