"""What a source is (:class:`ImageSource`, read from its header) and the limits a source must
meet before any pixel is decoded: pixels claimed, bytes of one decoded tile."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from kquant.errors import ImageTooLargeError, InputError
from kquant.io import uri as uri_mod
from kquant.io.geo import GeoInfo

#: Default limit on the pixels an image header may claim (about 4.3 gigapixels).
DEFAULT_MAX_PIXELS = 2**32
#: Default limit for formats that are decoded whole in memory (PNG, JPEG, ...): 2**28
#: pixels is 0.8 GB of RGB. Tiled TIFF and zarr are read tile by tile and have no such limit.
DEFAULT_MAX_DECODED_PIXELS = 2**28
#: Default chunk edge in pixels.
#: Default budget, in bytes, for one decoded TIFF tile or strip or zarr chunk
#: (``KQUANT_MAX_TILE_BYTES``). A dask thread decodes whole tiles into its chunk (chunks
#: are made of whole tiles, :func:`normalise_chunk`), so each thread holds up to about
#: two decoded tiles at once: 256 MiB admits one-strip photos up to 85 Mpx (8-bit RGB)
#: while keeping a thread's decoding within about 0.5 GiB.
#: Default chunk edge in pixels.
DEFAULT_CHUNK = 2048
DEFAULT_MAX_TILE_BYTES = 256 << 20
#: Zarr arrays of at least this many chunks ...
MAX_SMALL_CHUNKS = 1 << 16
#: ... each of fewer than this many pixels are refused: zarr reads a chunk in about
#: 0.2 ms whatever its size (measured here on zarr 3.1.6, local files, chunks of 1x1 to
#: 32x32), the time of decoding and labelling ~25,000 pixels, so such an array costs
#: over 3x its pixels' work and at least ~13 s a pass (a 512x512 array of 1x1 chunks:
#: ~55 s a pass).
MIN_CHUNK_PIXELS = 8192


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """What the header of a source says, read without decoding pixels.

    Attributes
    ----------
    uri : str
        The source as given (absolute path for local files).
    format : str
        ``"TIFF"``, ``"ZARR"`` or the Pillow format name (``"PNG"``, ``"JPEG"``, ...).
    height, width : int
        Size after orientation is applied.
    raw_shape : tuple of int
        Shape of the decoded samples before conversion and orientation.
    dtype : str
        Sample type before conversion.
    orientation : int
        EXIF/TIFF orientation (1-8) that is applied.
    tile : tuple of int or None
        Native (rows, cols) block of the file (TIFF tile or strip, zarr chunk).
    size_bytes, mtime_ns : int
        Identity of the file (for caching).
    mode : str
        Pixel mode of the decoder (Pillow mode, TIFF photometric).
    etag : str
        Object-store ETag (remote sources), part of the identity.
    geo : GeoInfo or None
        Georeferencing of a GeoTIFF (read with rasterio: ``kquant[geo]``).
    nodata : float or None
        The file's nodata value (GDAL's ``GDAL_NODATA`` TIFF tag), if any.
    alpha : bool
        Whether the samples include an alpha channel.
    """

    uri: str
    format: str
    height: int
    width: int
    raw_shape: tuple[int, ...]
    dtype: str
    orientation: int = 1
    tile: tuple[int, int] | None = None
    size_bytes: int = 0
    mtime_ns: int = 0
    mode: str = ""
    etag: str = ""
    geo: GeoInfo | None = None
    nodata: float | None = None
    alpha: bool = False

    @property
    def n_pixels(self) -> int:
        return self.height * self.width

    @property
    def identity(self) -> str:
        """A string that changes whenever the file changes (URI, size, mtime, ETag)."""
        return f"{self.uri}:{self.size_bytes}:{self.mtime_ns}:{self.etag}"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["raw_shape"] = list(self.raw_shape)
        d["tile"] = list(self.tile) if self.tile else None
        return d

    @classmethod
    def from_json(cls, data: dict) -> ImageSource:
        """Inverse of :meth:`to_json`."""
        d = dict(data)
        d["raw_shape"] = tuple(d["raw_shape"])
        d["tile"] = tuple(d["tile"]) if d.get("tile") else None
        if d.get("geo"):
            d["geo"] = GeoInfo(
                wkt2=d["geo"]["wkt2"],
                code=d["geo"]["code"],
                transform=tuple(d["geo"]["transform"]),
            )
        return cls(**d)


def _open(uri: str):
    """A binary file object for a local path or an fsspec URL."""
    if uri_mod.is_remote(uri):
        fs, path = uri_mod.filesystem(uri)
        return fs.open(path, "rb")
    return open(uri, "rb")


def _isdir(uri: str) -> bool:
    if uri_mod.is_remote(uri):
        fs, path = uri_mod.filesystem(uri)
        return fs.isdir(path)
    return os.path.isdir(uri)


def _has(uri: str, name: str) -> bool:
    if uri_mod.is_remote(uri):
        fs, path = uri_mod.filesystem(uri)
        return fs.exists(f"{path.rstrip('/')}/{name}")
    return os.path.exists(os.path.join(uri, name))


def tile_budget(max_tile_bytes: int | None = None) -> int:
    """Bytes one decoded tile, strip or zarr chunk may take: ``max_tile_bytes``, else
    ``$KQUANT_MAX_TILE_BYTES``, else :data:`DEFAULT_MAX_TILE_BYTES`.

    Raises
    ------
    ParameterError
        If the value is not a positive integer.
    """
    from kquant.errors import ParameterError

    value: str | int | None = max_tile_bytes
    if value is None:
        value = os.environ.get("KQUANT_MAX_TILE_BYTES") or DEFAULT_MAX_TILE_BYTES
    try:
        budget = int(value)
    except (TypeError, ValueError):
        budget = 0
    if budget <= 0 or isinstance(value, bool):
        raise ParameterError(
            f"the tile budget (KQUANT_MAX_TILE_BYTES) must be a positive "
            f"number of bytes, got {value!r}"
        )
    return budget


def _check_tile(path: str, kind: str, rows: int, cols: int, nbytes: int, budget: int) -> None:
    """Refuse, before decoding, tiles (strips, chunks) that decode to more than ``budget``."""
    from kquant.label.metrics import format_bytes

    if nbytes > budget:
        raise ImageTooLargeError(
            f"{path}: a {kind} of {rows}x{cols} pixels decodes to {format_bytes(nbytes)}, above "
            f"the budget of {format_bytes(budget)} per tile (KQUANT_MAX_TILE_BYTES); rewrite the "
            "image with smaller tiles (e.g. 512x512) or raise the budget"
        )


def _check_size(
    path: str, height: int, width: int, max_pixels: int | None, *, whole: bool = False
) -> None:
    if max_pixels is not None:
        limit = int(max_pixels)
    else:
        limit = DEFAULT_MAX_DECODED_PIXELS if whole else DEFAULT_MAX_PIXELS
    if height <= 0 or width <= 0:
        raise InputError(f"{path} has an empty image ({height}x{width})")
    if height * width > limit:
        hint = (
            "; this format is decoded whole in memory: convert it to a tiled TIFF"
            if whole and max_pixels is None
            else ""
        )
        raise ImageTooLargeError(
            f"{path} claims {height}x{width} = {height * width} pixels, above the limit of "
            f"{limit} (raise it with --max-pixels / KQUANT_MAX_PIXELS){hint}"
        )


def _stat(path: str) -> tuple[int, int, str]:
    """Size, modification time (ns) and ETag (remote) of a file, or of a zarr's metadata."""
    if uri_mod.is_remote(path):
        fs, p = uri_mod.filesystem(path)
        if fs.isdir(p):
            p = next(
                f"{p.rstrip('/')}/{n}"
                for n in ("zarr.json", ".zarray")
                if fs.exists(f"{p.rstrip('/')}/{n}")
            )
        info = fs.info(p)
        modified = info.get("LastModified") or info.get("mtime") or 0
        mtime = (
            int(modified.timestamp() * 1e9)
            if hasattr(modified, "timestamp")
            else int(float(modified) * 1e9)
        )
        return int(info.get("size") or 0), mtime, str(info.get("ETag") or "").strip('"')
    st = os.stat(path)
    if os.path.isdir(path):  # zarr: its metadata file
        meta = [
            os.path.join(path, n)
            for n in ("zarr.json", ".zarray")
            if os.path.exists(os.path.join(path, n))
        ]
        st = os.stat(meta[0])
    return st.st_size, st.st_mtime_ns, ""


def _oriented(h: int, w: int, orientation: int) -> tuple[int, int]:
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def normalise_chunk(chunk: int | None, tile: tuple[int, int] | None = None) -> tuple[int, int]:
    """Chunk (rows, cols) for a requested edge: a multiple of 8 (and of the file's tiles).

    Raises
    ------
    ParameterError
        If ``chunk`` is not a positive integer.
    """
    from kquant.errors import ParameterError

    edge = DEFAULT_CHUNK if chunk is None else chunk
    if isinstance(edge, bool) or not isinstance(edge, (int, np.integer)) or edge <= 0:
        raise ParameterError(f"chunk must be a positive integer, got {chunk!r}")
    edge = -(-int(edge) // 8) * 8
    rows = cols = edge
    if tile:  # whole tiles (or strips) per chunk
        th, tw = tile
        rows, cols = max(th, (edge // th) * th), max(tw, (edge // tw) * tw)
    return rows, cols
