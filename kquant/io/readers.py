"""Image readers: a source URI to a lazy, chunked ``(H, W, 3)`` uint8 dask array.

Three families of input are recognised by their content (magic bytes), not by
their file name:

* tiled or striped TIFF/BigTIFF: read lazily, one chunk at a time, through
  tifffile's zarr interface (the only place kquant touches that bridge);
* zarr arrays (v2 or v3) of shape (H, W) or (H, W, C): read lazily;
* everything Pillow decodes through imageio (PNG, JPEG, BMP, GIF, WebP, ...):
  decoded whole, once per process, then served in chunks.

Pixels are converted to RGB by :mod:`kquant.convert`; EXIF/TIFF orientation is
applied. The header is checked against a pixel limit before any pixel is
decoded.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading

import numpy as np

from kquant.io import convert
from kquant.io import uri as uri_mod
from kquant.errors import ImageTooLargeError, InputError, OutOfMemoryError, reason

#: Default limit on the pixels an image header may claim (about 4.3 gigapixels).
DEFAULT_MAX_PIXELS = 2**32
#: Default limit for formats that are decoded whole in memory (PNG, JPEG, ...): 2**28
#: pixels is 0.8 GB of RGB. Tiled TIFF and zarr are read tile by tile and have no such limit.
DEFAULT_MAX_DECODED_PIXELS = 2**28
#: Default chunk edge in pixels.
DEFAULT_CHUNK = 2048
#: Default budget, in bytes, for one decoded TIFF tile or strip or zarr chunk
#: (``KQUANT_MAX_TILE_BYTES``). A dask thread decodes whole tiles into its chunk (chunks
#: are made of whole tiles, :func:`normalise_chunk`), so each thread holds up to about
#: two decoded tiles at once: 256 MiB admits one-strip photos up to 85 Mpx (8-bit RGB)
#: while keeping a thread's decoding within about 0.5 GiB.
DEFAULT_MAX_TILE_BYTES = 256 << 20
#: Zarr arrays of at least this many chunks ...
MAX_SMALL_CHUNKS = 1 << 16
#: ... each of fewer than this many pixels are refused: zarr reads a chunk in about
#: 0.2 ms whatever its size (measured here on zarr 3.1.6, local files, chunks of 1x1 to
#: 32x32), the time of decoding and labelling ~25,000 pixels, so such an array costs
#: over 3x its pixels' work and at least ~13 s a pass (a 512x512 array of 1x1 chunks:
#: ~55 s a pass).
MIN_CHUNK_PIXELS = 8192

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PILLOW_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"BM": "BMP",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"RIFF": "WEBP",
    b"P6": "PPM",
    b"P5": "PGM",
    b"P3": "PPM",
    b"P2": "PGM",
}


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


def _sniff(path: str) -> str:
    try:
        with uri_mod.storage_errors(path):  # a missing bucket, denied access: said so
            if _isdir(path):
                if _has(path, "zarr.json") or _has(path, ".zarray"):
                    return "ZARR"
                raise InputError(f"{path} is a directory, not a zarr array")
            with _open(path) as fh:
                head = fh.read(16)
    except FileNotFoundError:
        raise InputError(f"no such file: {path}") from None
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or reason(exc)}") from None
    if not head:
        raise InputError(f"{path} is empty (0 bytes)")
    if head[:4] in _TIFF_MAGIC:
        return "TIFF"
    for magic, name in _PILLOW_MAGIC.items():
        if head.startswith(magic):
            if name == "WEBP" and head[8:12] != b"WEBP":
                continue
            return "PILLOW"
    raise InputError(f"{path} is not a recognised image (PNG, JPEG, BMP, GIF, WebP, PNM, TIFF or zarr)")


def tile_budget(max_tile_bytes: int | None = None) -> int:
    """Bytes one decoded tile, strip or zarr chunk may take: ``max_tile_bytes``, else
    ``$KQUANT_MAX_TILE_BYTES``, else :data:`DEFAULT_MAX_TILE_BYTES`.

    Raises
    ------
    ParameterError
        If the value is not a positive integer.
    """
    from kquant.errors import ParameterError

    value = max_tile_bytes
    if value is None:
        value = os.environ.get("KQUANT_MAX_TILE_BYTES") or DEFAULT_MAX_TILE_BYTES
    try:
        budget = int(value)
    except (TypeError, ValueError):
        budget = 0
    if budget <= 0 or isinstance(value, bool):
        raise ParameterError(f"the tile budget (KQUANT_MAX_TILE_BYTES) must be a positive "
                             f"number of bytes, got {value!r}")
    return budget


def _check_tile(path: str, kind: str, rows: int, cols: int, nbytes: int, budget: int) -> None:
    """Refuse, before decoding, tiles (strips, chunks) that decode to more than ``budget``."""
    from kquant.label.metrics import format_bytes

    if nbytes > budget:
        raise ImageTooLargeError(
            f"{path}: a {kind} of {rows}x{cols} pixels decodes to {format_bytes(nbytes)}, above "
            f"the budget of {format_bytes(budget)} per tile (KQUANT_MAX_TILE_BYTES); rewrite the "
            "image with smaller tiles (e.g. 512x512) or raise the budget")


def _check_size(path: str, height: int, width: int, max_pixels: int | None, *,
                whole: bool = False) -> None:
    if max_pixels is not None:
        limit = int(max_pixels)
    else:
        limit = DEFAULT_MAX_DECODED_PIXELS if whole else DEFAULT_MAX_PIXELS
    if height <= 0 or width <= 0:
        raise InputError(f"{path} has an empty image ({height}x{width})")
    if height * width > limit:
        hint = ("; this format is decoded whole in memory: convert it to a tiled TIFF"
                if whole and max_pixels is None else "")
        raise ImageTooLargeError(
            f"{path} claims {height}x{width} = {height * width} pixels, above the limit of "
            f"{limit} (raise it with --max-pixels / KQUANT_MAX_PIXELS){hint}"
        )


def _stat(path: str) -> tuple[int, int, str]:
    """Size, modification time (ns) and ETag (remote) of a file, or of a zarr's metadata."""
    if uri_mod.is_remote(path):
        fs, p = uri_mod.filesystem(path)
        if fs.isdir(p):
            p = next(f"{p.rstrip('/')}/{n}" for n in ("zarr.json", ".zarray")
                     if fs.exists(f"{p.rstrip('/')}/{n}"))
        info = fs.info(p)
        modified = info.get("LastModified") or info.get("mtime") or 0
        mtime = int(modified.timestamp() * 1e9) if hasattr(modified, "timestamp") else int(float(modified) * 1e9)
        return int(info.get("size") or 0), mtime, str(info.get("ETag") or "").strip('"')
    st = os.stat(path)
    if os.path.isdir(path):  # zarr: its metadata file
        meta = [os.path.join(path, n) for n in ("zarr.json", ".zarray")
                if os.path.exists(os.path.join(path, n))]
        st = os.stat(meta[0])
    return st.st_size, st.st_mtime_ns, ""


def _oriented(h: int, w: int, orientation: int) -> tuple[int, int]:
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


# --------------------------------------------------------------------------- Pillow via imageio

_PIL_DIRECT = {"1", "L", "LA", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I;16N", "P", "PA"}
_PIL_TO_RGB = {"CMYK", "YCbCr", "LAB", "HSV"}
#: Modes whose pixels are read as they are (see :func:`_decode_plain`).
_PIL_PLAIN = {"RGB", "RGBA", "L", "LA"}


#: PNG chunks after the pixels that can hold EXIF (or XMP) orientation.
_PNG_LATE_EXIF = frozenset({"eXIf", "tEXt", "zTXt", "iTXt"})


def _png_orientation(path: str) -> int:
    """EXIF orientation of a PNG whose metadata follows its pixels (Pillow decodes them)."""
    from PIL import Image

    try:
        with _open(path) as fh, Image.open(fh) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path} is not a readable image: {reason(exc)}") from None


def _check_png_chunks(path: str) -> set[str]:
    """Verify every PNG chunk's CRC (Pillow does not check IDAT's); stream, O(file size).

    Returns the names of the chunks that follow the first IDAT.

    Raises
    ------
    InputError
        On a bad CRC, or a file that ends inside a chunk.
    """
    import zlib

    late: set[str] = set()
    seen_idat = False
    with _open(path) as fh:
        fh.read(8)
        while True:
            head = fh.read(8)
            if len(head) < 8:
                raise InputError(f"{path} is truncated (no IEND chunk)")
            length = int.from_bytes(head[:4], "big")
            tag = head[4:]
            crc = zlib.crc32(tag)
            left = length
            while left:
                part = fh.read(min(left, 1 << 20))
                if not part:
                    raise InputError(f"{path} is truncated inside a {tag.decode('latin-1')} chunk")
                crc = zlib.crc32(part, crc)
                left -= len(part)
            stored = fh.read(4)
            if len(stored) < 4:
                raise InputError(f"{path} is truncated inside a {tag.decode('latin-1')} chunk")
            if int.from_bytes(stored, "big") != crc:
                raise InputError(f"{path} is corrupt: bad CRC in a {tag.decode('latin-1')} chunk")
            name = tag.decode("latin-1")
            if seen_idat:
                late.add(name)
            seen_idat = seen_idat or name == "IDAT"
            if tag == b"IEND":
                return late


def _inspect_pillow(path: str, max_pixels: int | None) -> ImageSource:
    from PIL import Image

    try:
        with _open(path) as fh, Image.open(fh) as im:
            # the header is parsed; no pixel has been decoded yet
            w, h = im.size
            _check_size(path, h, w, max_pixels, whole=True)
            mode, fmt = im.mode, im.format or "?"
            n_frames = getattr(im, "n_frames", 1)
            if fmt == "PNG" and "exif" not in im.info:
                # Pillow decodes every pixel to look for EXIF after the pixels; the chunk
                # walk below says whether there is any (then it is read as before)
                exif = Image.Image.getexif(im)
            else:
                exif = im.getexif()
            orientation = int(exif.get(0x0112, 1) or 1)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{path}: {reason(exc)}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path} is not a readable image: {reason(exc)}") from None
    if n_frames > 1:
        raise InputError(f"{path} is an animated or multi-frame {fmt} ({n_frames} frames); "
                         "kquant reads single images")
    if fmt == "PNG":
        try:
            late = _check_png_chunks(path)
        except InputError:
            _png_orientation(path)  # Pillow's reading error first, as when it decoded here
            raise
        if late & _PNG_LATE_EXIF:
            orientation = _png_orientation(path)
    if mode not in _PIL_DIRECT and mode not in _PIL_TO_RGB:
        raise InputError(f"{path}: unsupported {fmt} pixel mode {mode!r}")
    if orientation not in range(1, 9):
        orientation = 1
    size, mtime, etag = _stat(path)
    oh, ow = _oriented(h, w, orientation)
    return ImageSource(uri=path, format=fmt, height=oh, width=ow, raw_shape=(h, w),
                       dtype="uint8", orientation=orientation, size_bytes=size,
                       mtime_ns=mtime, mode=mode, etag=etag)


_decode_lock = threading.Lock()


@functools.lru_cache(maxsize=2)
def _decode_plain(data: bytes) -> np.ndarray | None:
    """The pixels of an image in a plain mode (RGB, RGBA, L, LA) without EXIF orientation,
    exactly as imageio's Pillow plugin returns them (``np.asarray`` of the image), without
    importing imageio (~20 ms of a small image's command line); None for other images."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.mode not in _PIL_PLAIN or 0x0112 in im.getexif():
            return None
        im.load()
        return np.array(im)


def _decode_pillow(path: str, stamp: tuple[int, int], mode: str, max_pixels: int,
                   background: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # the header was checked against our own limit
    try:
        pilmode = "RGB" if mode in _PIL_TO_RGB else None
        with _open(path) as fh:
            data = fh.read()
        arr = _decode_plain(data) if pilmode is None else None
        if arr is None:  # palettes, 16-bit, CMYK, ..., EXIF orientation: imageio's rules
            import imageio.v3 as iio

            arr = iio.imread(data, plugin="pillow", index=0, mode=pilmode, rotate=True)
    except MemoryError:
        raise OutOfMemoryError(f"{path}: out of memory decoding the whole image "
                               "(this format is decoded whole: convert it to a tiled TIFF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path} cannot be decoded: {reason(exc)}") from None
    if arr.dtype.kind == "i" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)  # Pillow's 32-bit 'I' mode for 16-bit greys
    return convert.to_rgb8(arr, background=background)


class _DecodedImage:
    """Array-like over a whole-image decode, cached per process; pickles as a path."""

    def __init__(self, src: ImageSource, max_pixels: int, background):
        self.src, self.max_pixels, self.background = src, max_pixels, tuple(background)
        self.shape = (src.height, src.width, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key):
        with _decode_lock:
            arr = _decode_pillow(self.src.uri, (self.src.size_bytes, self.src.mtime_ns, self.src.etag),
                                 self.src.mode, self.max_pixels, self.background)
        if arr.shape != self.shape:
            raise InputError(f"{self.src.uri} decoded to {arr.shape}, header said {self.shape}")
        return arr[key]


def decode_whole(src: ImageSource, *, max_pixels: int | None = None,
                 background: tuple[int, int, int] = convert.WHITE) -> np.ndarray:
    """The whole (H, W, 3) uint8 RGB of a source Pillow decodes (the array
    :func:`open_source` serves in chunks; decoded once per process)."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    return _DecodedImage(src, limit, tuple(int(c) for c in background))[...]


# --------------------------------------------------------------------------- TIFF via tifffile

def _inspect_tiff(path: str, max_pixels: int | None, budget: int) -> ImageSource:
    import tifffile

    try:
        with _open(path) as fh, tifffile.TiffFile(fh) as tf:
            if not tf.series:
                raise InputError(f"{path} holds no image")
            series = tf.series[0]
            page = series.levels[0].keyframe
            shape, axes = tuple(series.levels[0].shape), series.levels[0].axes
            extra = [a for a in axes if a not in "YXS"]
            if extra:
                raise InputError(f"{path} is a multi-page or multi-dimensional TIFF (axes {axes}, "
                                 f"shape {shape}); kquant reads single images")
            ydim, xdim = axes.index("Y"), axes.index("X")
            h, w = shape[ydim], shape[xdim]
            _check_size(path, h, w, max_pixels)
            photometric = int(page.photometric)
            if photometric not in (0, 1, 2, 3):  # WHITE/BLACK_IS_ZERO, RGB, PALETTE
                name = getattr(page.photometric, "name", str(photometric))
                raise InputError(f"{path}: unsupported TIFF photometric {name}; convert to RGB first")
            if page.compression != 1:
                try:
                    tifffile.TIFF.DECOMPRESSORS[page.compression]  # raises if unavailable
                except KeyError:
                    raise InputError(
                        f"{path}: TIFF compression {getattr(page.compression, 'name', page.compression)}"
                        " needs the imagecodecs package (pip install imagecodecs)") from None
            dtype = np.dtype(page.dtype)
            if photometric != 3:
                convert.check_dtype(dtype)
            tile = (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip or h, w)
            planar = "S" in axes and axes.index("S") < ydim
            samples = 1 if planar else int(page.samplesperpixel)
            seg_rows = tile[0] if page.is_tiled else min(tile[0], h)
            _check_tile(path, "TIFF tile" if page.is_tiled else "TIFF strip", seg_rows, tile[1],
                        seg_rows * tile[1] * samples * dtype.itemsize, budget)
            tag = page.tags.get("Orientation")
            orientation = int(tag.value) if tag is not None else 1
            mode = {0: "MINISWHITE", 1: "MINISBLACK", 2: "RGB", 3: "PALETTE"}[photometric]
            if planar:
                mode += ":planar"
    except InputError:
        raise
    except (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise InputError(f"{path} is not a readable TIFF: {reason(exc)}") from None
    if orientation not in range(1, 9):
        orientation = 1
    size, mtime, etag = _stat(path)
    oh, ow = _oriented(h, w, orientation)
    return ImageSource(uri=path, format="TIFF", height=oh, width=ow, raw_shape=shape,
                       dtype=str(dtype), orientation=orientation, tile=tile,
                       size_bytes=size, mtime_ns=mtime, mode=mode, etag=etag)


_tiff_lock = threading.Lock()


def _decode_threads() -> int:
    """Threads tifffile may decode tiles in.

    maxworkers > 1 makes tifffile decode tiles in threads (asyncio.to_thread) instead of on
    zarr's single event-loop thread, which all dask threads of a process share (tifffile
    itself picks 1 below 3 cores). Inside a dask worker, its thread count: the worker's
    share of the machine, so that N single-threaded workers use N cores, not N x cores.
    """
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return max(2, os.cpu_count() or 2)


@functools.lru_cache(maxsize=8)
def _tiff_zarr(path: str, stamp: tuple[int, int]):
    """The level-0 zarr array of a TIFF's first series (one open file per process)."""
    import tifffile
    import zarr

    fh = _open(path)  # kept open for the life of the process (one per file)
    store = tifffile.imread(fh, aszarr=True, series=0, level=0, maxworkers=_decode_threads())
    return zarr.open_array(store, mode="r")


@functools.lru_cache(maxsize=8)
def _tile_reader(path: str, stamp: tuple[int, int]):
    """Direct tile decoder of a TIFF (:mod:`kquant.tiff_tiles`), None if not usable."""
    from kquant.io import tiff_tiles

    return tiff_tiles.open_reader(path)


class _TiffArray:
    """Array-like over a TIFF's samples; opened lazily in each process, pickles as a path."""

    def __init__(self, src: ImageSource):
        self.src = src
        self.shape = tuple(src.raw_shape)
        self.dtype = np.dtype(src.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        stamp = (self.src.size_bytes, self.src.mtime_ns, self.src.etag)
        with _tiff_lock:
            tiles = _tile_reader(self.src.uri, stamp)
        if tiles is not None:
            return tiles[key]
        with _tiff_lock:
            z = _tiff_zarr(self.src.uri, stamp)
        try:
            return z[key]
        except MemoryError:
            raise OutOfMemoryError(f"{self.src.uri}: out of memory decoding the TIFF tiles of "
                                   f"{_region(key)} (tiles of {_tile_text(self.src)})") from None
        except Exception as exc:  # a damaged tile: name the file, keep one line
            raise InputError(f"{self.src.uri}: cannot decode TIFF data: {reason(exc)}") from None


def _region(key) -> str:
    """``rows y0-y1, cols x0-x1`` of a basic (slices) index."""
    key = key if isinstance(key, tuple) else (key,)
    parts = []
    for name, k in zip(("rows", "cols"), key):
        if isinstance(k, slice) and k.start is not None and k.stop is not None:
            parts.append(f"{name} {k.start}-{k.stop - 1}")
    return ", ".join(parts) or "the image"


def _tile_text(src: ImageSource) -> str:
    return f"{src.tile[0]}x{src.tile[1]} pixels" if src.tile else "unknown size"


def _tiff_colormap(path: str) -> np.ndarray:
    import tifffile

    with _open(path) as fh, tifffile.TiffFile(fh) as tf:
        cmap = tf.series[0].levels[0].keyframe.colormap
    if cmap is None:
        raise InputError(f"{path}: palette TIFF without a colormap")
    cmap = np.asarray(cmap)
    if cmap.dtype == np.uint16 or cmap.max() > 255:
        cmap = np.rint(cmap.astype(np.float64) / 257.0)
    return np.ascontiguousarray(cmap.T.astype(np.uint8))  # (N, 3)


# --------------------------------------------------------------------------- zarr arrays

def _inspect_zarr(path: str, max_pixels: int | None, budget: int) -> ImageSource:
    import zarr

    try:
        z = zarr.open_array(store=uri_mod.zarr_store(path, read_only=True), mode="r")
    except Exception as exc:
        raise InputError(f"{path} is not a readable zarr array: {reason(exc)}") from None
    convert.channel_layout(z.shape)
    convert.check_dtype(z.dtype)
    h, w = z.shape[:2]
    _check_size(path, h, w, max_pixels)
    chunks = tuple(int(c) for c in z.chunks)
    _check_tile(path, "zarr chunk", chunks[0], chunks[1],
                int(np.prod(chunks)) * np.dtype(z.dtype).itemsize, budget)
    n_chunks = int(np.prod([-(-n // c) for n, c in zip(z.shape, chunks)]))
    if n_chunks >= MAX_SMALL_CHUNKS and chunks[0] * chunks[1] < MIN_CHUNK_PIXELS:
        raise InputError(
            f"{path}: its {n_chunks} zarr chunks of {chunks[0]}x{chunks[1]} pixels are too small "
            f"to read in reasonable time ({MAX_SMALL_CHUNKS} or more chunks of under "
            f"{MIN_CHUNK_PIXELS} pixels are refused); rechunk it first, e.g. "
            f"dask.array.from_zarr(SRC, chunks=(2048, 2048, -1)).to_zarr(DST)")
    size, mtime, etag = _stat(path)
    return ImageSource(uri=path, format="ZARR", height=h, width=w,
                       raw_shape=tuple(z.shape), dtype=str(z.dtype),
                       tile=tuple(z.chunks[:2]), size_bytes=size, mtime_ns=mtime, etag=etag)


# --------------------------------------------------------------------------- public API

def inspect_image(uri: str | os.PathLike, *, max_pixels: int | None = None,
                  max_tile_bytes: int | None = None) -> ImageSource:
    """Read a source's header: format, size, sample type, orientation; no pixels.

    Parameters
    ----------
    uri : str or path-like
        Local path, ``file://`` URL or fsspec URL (``s3://bucket/key``) of an image
        file or zarr array.
    max_pixels : int, optional, keyword-only
        Largest pixel count accepted (default :data:`DEFAULT_MAX_PIXELS`, or the
        ``KQUANT_MAX_PIXELS`` environment variable).
    max_tile_bytes : int, optional, keyword-only
        Largest decoded size of one TIFF tile or strip or zarr chunk, in bytes (default
        :data:`DEFAULT_MAX_TILE_BYTES`, or ``KQUANT_MAX_TILE_BYTES``; see :func:`tile_budget`).

    Returns
    -------
    ImageSource

    Raises
    ------
    InputError
        If the source is missing, empty, not an image, damaged, or of an
        unsupported kind.
    ImageTooLargeError
        If the header claims more pixels than ``max_pixels``, or tiles (strips, chunks)
        larger than ``max_tile_bytes`` decoded.
    ParameterError
        If the tile budget is not a positive integer.
    """
    if max_pixels is None and os.environ.get("KQUANT_MAX_PIXELS"):
        max_pixels = int(os.environ["KQUANT_MAX_PIXELS"])
    budget = tile_budget(max_tile_bytes)
    path = uri_mod.normalise(uri)
    kind = _sniff(path)
    if kind == "TIFF":
        return _inspect_tiff(path, max_pixels, budget)
    if kind == "ZARR":
        return _inspect_zarr(path, max_pixels, budget)
    return _inspect_pillow(path, max_pixels)


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


def zarr_blocks(chunk: int | None, native: tuple[int, int] | None,
                width: int) -> tuple[int, int]:
    """Dask block (rows, cols) for reading a zarr array: the requested edge
    (:func:`normalise_chunk`) as whole native chunks, so that no chunk is decoded by two
    blocks, where that keeps the columns a multiple of 8 (or the whole width).

    Raises
    ------
    ParameterError
        If ``chunk`` is not a positive integer.
    """
    rows, cols = normalise_chunk(chunk)
    if not native:
        return rows, cols
    th, tw = native
    rows = max(th, rows // th * th)
    whole = max(tw, cols // tw * tw)
    if whole % 8 == 0 or whole >= width:
        cols = whole
    return rows, cols


def _orient(arr, orientation: int):
    """Apply an EXIF/TIFF orientation (1-8) to a lazy (H, W, C) array."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    t = arr.transpose(1, 0, 2) if orientation in (5, 6, 7, 8) else arr
    if orientation == 6:
        return t[:, ::-1]
    if orientation == 7:
        return t[::-1, ::-1]
    if orientation == 8:
        return t[::-1]
    return t


def open_image(uri: str | os.PathLike, *, chunks: int | None = None,
               max_pixels: int | None = None,
               background: tuple[int, int, int] = convert.WHITE,
               max_tile_bytes: int | None = None):
    """Open an image as a lazy ``(H, W, 3)`` uint8 dask array.

    Parameters
    ----------
    uri : str or path-like
        Image file (PNG, JPEG, BMP, GIF, WebP, PNM, TIFF/BigTIFF) or zarr array.
    chunks : int, optional, keyword-only
        Chunk edge in pixels (rounded up to a multiple of 8, and to whole TIFF
        tiles); default :data:`DEFAULT_CHUNK`.
    max_pixels : int, optional, keyword-only
        Largest pixel count accepted.
    background : tuple of 3 int, keyword-only
        Colour that transparent pixels are composited over (default white).
    max_tile_bytes : int, optional, keyword-only
        Largest decoded tile, strip or zarr chunk accepted (see :func:`inspect_image`).

    Returns
    -------
    dask.array.Array of uint8, shape (H, W, 3)

    Raises
    ------
    InputError, ImageTooLargeError, ParameterError
        See :func:`inspect_image` and :func:`normalise_chunk`.
    """
    return open_source(inspect_image(uri, max_pixels=max_pixels, max_tile_bytes=max_tile_bytes),
                       chunks=chunks, max_pixels=max_pixels, background=background)


def open_source(src: ImageSource, *, chunks: int | None = None, max_pixels: int | None = None,
                background: tuple[int, int, int] = convert.WHITE):
    """Lazy RGB array of an already inspected source (see :func:`open_image`)."""
    import dask.array as da

    background = tuple(int(c) for c in background)
    if src.format == "TIFF":
        raw_rows, raw_cols = normalise_chunk(chunks, src.tile)
        raw = _TiffArray(src)
        planar = src.mode.endswith(":planar")
        if planar:
            rc = (raw.shape[0], raw_rows, raw_cols)
        else:
            rc = (raw_rows, raw_cols) + tuple(raw.shape[2:])
        arr = da.from_array(raw, chunks=rc, lock=False, asarray=True, fancy=False,
                            name=f"tiff-{abs(hash(src.identity)):x}",
                            meta=np.empty((0,) * raw.ndim, raw.dtype))
        if planar:
            arr = arr.transpose(1, 2, 0)
        mode = src.mode.split(":")[0]
        if mode == "PALETTE":
            cmap = _tiff_colormap(src.uri)
            arr = arr.map_blocks(lambda b, c=cmap: c[b if b.ndim == 2 else b[..., 0]],
                                 dtype=np.uint8, chunks=arr.chunks[:2] + ((3,),),
                                 new_axis=2 if arr.ndim == 2 else None)
        elif mode == "MINISWHITE":
            top = 1.0 if arr.dtype.kind == "f" else (True if arr.dtype == bool else np.iinfo(arr.dtype).max)
            arr = (top - arr) if arr.dtype != bool else ~arr
    elif src.format == "ZARR":
        rows, cols = zarr_blocks(chunks, src.tile, src.width)
        rc = (rows, cols) + tuple(src.raw_shape[2:])
        arr = da.from_zarr(uri_mod.zarr_store(src.uri, read_only=True), chunks=rc)
    else:
        rows, cols = normalise_chunk(chunks)
        limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
        raw = _DecodedImage(src, limit, background)
        return da.from_array(raw, chunks=(rows, cols, 3), lock=False, asarray=True, fancy=False,
                             name=f"decoded-{abs(hash((src.identity, background))):x}",
                             meta=np.empty((0, 0, 0), np.uint8))
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if not (arr.dtype == np.uint8 and arr.shape[2] == 3):
        arr = arr.map_blocks(convert.to_rgb8, background=background, dtype=np.uint8,
                             chunks=arr.chunks[:2] + ((3,),))
    arr = _orient(arr, src.orientation)
    if src.orientation != 1:
        rows, cols = normalise_chunk(chunks, None)
        arr = arr.rechunk((rows, cols, 3))
    return arr
