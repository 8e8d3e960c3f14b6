"""The store's format: its attributes (:class:`StoreMeta`), versions and constants.

Layout of format 3 (see ``docs/format.md``)::

    STORE/                 zarr v3 group, attributes {"kquant": StoreMeta, "ome": OME-NGFF 0.5}
      palette              (n, 3) uint8, one chunk, dimensions (entry, band)
      labels               (H, W) uint8, dimensions (y, x): the packbits codec (bits per
                           pixel), then zstd (level 17 up to 16 Mpx, else 3)

Formats 1 and 2 store ``labels`` as (H, ceil(W * bits / 8)) bytes of packed rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

from kquant.errors import StoreError
from kquant.label import packing

FORMAT = "kquant-store"
FORMAT_VERSION = 3
#: Format versions this kquant reads: 1 packs ceil(log2 n) bits per pixel in rows of bytes,
#: 2 packs 1, 2, 4 or 8 (see :func:`kquant.label.packing.storage_bits`) the same way, 3 keeps
#: 2's widths in an (H, W) array encoded by the packbits codec (any zarr reader decodes it).
READABLE_VERSIONS = (1, 2, 3)
PACKING_ROWS = (
    "row-major; each row packed MSB-first at `bits` bits per pixel and padded to a whole byte"
)
#: The format new stores are written in (2 still can be, for comparisons: bench/README.md).
WRITE_VERSION = FORMAT_VERSION
PACKING = "zarr packbits codec, first_bit 0, last_bit bits-1, then zstd"
#: The packing recorded by each format version.
PACKINGS = {1: PACKING_ROWS, 2: PACKING_ROWS, 3: PACKING}
STATUS_WRITING = "writing"
STATUS_COMPLETE = "complete"
ZSTD_LEVEL = 3
#: zstd level of images up to ZSTD_SMALL_PIXELS pixels: 8-12 % smaller labels than level 3,
#: slower; larger images keep level 3 (bench/README.md, "Thresholds").
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
    format_version: int = dataclasses.field(default_factory=lambda: WRITE_VERSION)
    packing: str = ""  # the format version's (PACKINGS) when not given
    levels: int = 1
    #: georeferencing (GeoZarr names: kquant.io.geo.GeoInfo.to_json), or None
    geo: dict | None = None
    #: the masked pixels' reserved palette index and the rule that masked them, or None
    nodata: dict | None = None

    def __post_init__(self) -> None:
        for name in ("height", "width", "k", "n_colors", "bits", "chunk_rows", "chunk_cols"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise StoreError(f"store attribute {name} must be a positive integer, got {v!r}")
        if self.format != FORMAT:
            raise StoreError(f"not a kquant store (format {self.format!r})")
        if self.format_version > FORMAT_VERSION:
            raise StoreError(
                f"store format version {self.format_version} is newer than this "
                f"kquant ({FORMAT_VERSION}); upgrade kquant"
            )
        if self.status not in (STATUS_WRITING, STATUS_COMPLETE):
            raise StoreError(f"unknown store status {self.status!r}")
        if self.format_version not in READABLE_VERSIONS:
            raise StoreError(f"unknown store format version {self.format_version!r}")
        expected = (
            packing.bits_for(self.n_colors)
            if self.format_version == 1
            else packing.storage_bits(self.n_colors)
        )
        if self.bits != expected:
            raise StoreError(
                f"store bits {self.bits} do not match {self.n_colors} colours "
                f"(format {self.format_version})"
            )
        if self.chunk_cols % packing.PIXEL_ALIGN and self.chunk_cols < self.width:
            raise StoreError(
                f"chunk width {self.chunk_cols} is not a multiple of {packing.PIXEL_ALIGN}"
            )
        if not self.packing:
            object.__setattr__(self, "packing", PACKINGS[self.format_version])
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 1:
            raise StoreError(
                f"store attribute levels must be a positive integer, got {self.levels!r}"
            )
        if self.levels > 1 and self.format_version < 3:
            raise StoreError("pyramid levels need store format 3")
        if (self.shard_rows is None) != (self.shard_cols is None):
            raise StoreError("shard_rows and shard_cols must be given together")
        if self.shard_rows is not None and self.shard_cols is not None:
            if self.shard_rows % self.chunk_rows or (
                self.shard_cols % self.chunk_cols and self.chunk_cols < self.width
            ):
                raise StoreError(
                    f"shard {self.shard_rows}x{self.shard_cols} is not a whole number "
                    f"of chunks {self.chunk_rows}x{self.chunk_cols}"
                )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE

    def _packed(self, rows: int, cols: int) -> tuple[int, int]:
        """Packed shape (rows, bytes) of a block; a block that spans the width packs ``W``."""
        if self.chunk_cols >= self.width:  # one chunk (and shard) spans every row
            return rows, packing.packed_width(self.width, self.bits)
        return rows, cols * self.bits // 8

    @property
    def packbits(self) -> bool:
        """Labels are an (H, W) array of the packbits codec (format 3), not packed rows."""
        return self.format_version >= 3

    @property
    def label_chunks(self) -> tuple[int, int]:
        """Chunk shape (pixels) of the format-3 labels array: columns a multiple of 8, so
        each chunk row fills whole bytes at any width (a chunk may pass the image's edge)."""
        return self.chunk_rows, _round8(self.chunk_cols)

    @property
    def label_shards(self) -> tuple[int, int] | None:
        """Shard shape (pixels) of the format-3 labels array, or None if unsharded."""
        if self.shard_rows is None or self.shard_cols is None:
            return None
        return self.shard_rows, self.shard_cols // self.chunk_cols * _round8(self.chunk_cols)

    @property
    def packed_chunks(self) -> tuple[int, int]:
        """Chunk shape of the packed labels array (rows, bytes)."""
        return self._packed(self.chunk_rows, self.chunk_cols)

    @property
    def packed_shards(self) -> tuple[int, int] | None:
        """Shard shape of the packed labels array (rows, bytes), or None if unsharded."""
        if self.shard_rows is None or self.shard_cols is None:
            return None
        return self._packed(self.shard_rows, self.shard_cols)

    @property
    def block(self) -> tuple[int, int]:
        """Pixels (rows, cols) written by one task: a shard if sharded, else a chunk."""
        if self.shard_rows is None or self.shard_cols is None:
            return self.chunk_rows, self.chunk_cols
        return self.shard_rows, self.shard_cols

    @property
    def packed_block(self) -> tuple[int, int]:
        """Packed shape of one write block (a whole shard, or a chunk)."""
        return self.packed_shards or self.packed_chunks

    @property
    def level_chunks(self) -> tuple[int, int]:
        """Chunk shape (pixels) of pyramid levels 1, 2, ...: that of the labels (unsharded)."""
        return self.label_chunks

    def level_shape(self, level: int) -> tuple[int, int]:
        """Shape of pyramid level ``level`` (0 is the image): each level halves, rounding up."""
        f = 1 << int(level)
        return -(-self.height // f), -(-self.width // f)

    @property
    def georeferencing(self):
        """The store's :class:`kquant.io.geo.GeoInfo`, or None."""
        from kquant.io.geo import GeoInfo

        return GeoInfo.from_json(self.geo)

    @property
    def nodata_index(self) -> int | None:
        """The palette index of masked pixels, or None if the store has none."""
        return None if not self.nodata else int(self.nodata["index"])

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for name in ("geo", "nodata"):  # absent rather than null: older stores read the same
            if d[name] is None:
                del d[name]
        return d

    @classmethod
    def from_json(cls, data: Any) -> StoreMeta:
        if not isinstance(data, dict):
            raise StoreError("not a kquant store (no kquant attributes)")
        fields = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in fields})
        except TypeError as exc:
            raise StoreError(f"malformed kquant attributes: {exc}") from None

    def replace(self, **changes) -> StoreMeta:
        return dataclasses.replace(self, **changes)


def level_path(level: int) -> str:
    """Path in the store of the labels of pyramid level ``level`` (0: ``labels``)."""
    return "labels" if level == 0 else f"{LEVELS_GROUP}/{int(level)}"


#: The group of the pyramid's levels 1, 2, ... (a group of its own: xarray's view of the
#: store's root sees arrays of one size only).
LEVELS_GROUP = "levels"


def _round8(cols: int) -> int:
    return -(-int(cols) // packing.PIXEL_ALIGN) * packing.PIXEL_ALIGN


def levels_for(height: int, width: int, chunk_rows: int, chunk_cols: int) -> int:
    """Levels of a full pyramid: halving until a level fits in one chunk."""
    cols = _round8(chunk_cols)
    levels = 1
    while -(-height // (1 << (levels - 1))) > chunk_rows or -(-width // (1 << (levels - 1))) > cols:
        levels += 1
    return levels


def chunk_digest(packed: np.ndarray) -> str:
    """Digest of one packed chunk's bytes (uncompressed)."""
    return hashlib.blake2b(np.ascontiguousarray(packed).tobytes(), digest_size=16).hexdigest()


def combine_digests(digests: dict[tuple[int, int], str]) -> str:
    """One checksum over every chunk's digest, in chunk order."""
    h = hashlib.sha256()
    for key in sorted(digests):
        h.update(f"{key[0]},{key[1]}:{digests[key]}\n".encode())
    return "sha256:" + h.hexdigest()
