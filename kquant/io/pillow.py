"""Sources Pillow decodes (PNG, JPEG, BMP, GIF, WebP, PNM): the header read without decoding,
PNG chunk CRCs checked, the image decoded whole once per process and served in chunks."""

from __future__ import annotations

import functools
import threading

import numpy as np

from kquant.errors import ImageTooLargeError, InputError, OutOfMemoryError, reason
from kquant.io import convert
from kquant.io.source import (
    DEFAULT_MAX_PIXELS,
    ImageSource,
    _check_size,
    _open,
    _oriented,
    _stat,
)

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
            alpha = mode in ("LA", "RGBA", "PA") or (mode == "P" and "transparency" in im.info)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{path}: {reason(exc)}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path} is not a readable image: {reason(exc)}") from None
    if n_frames > 1:
        raise InputError(
            f"{path} is an animated or multi-frame {fmt} ({n_frames} frames); "
            "kquant reads single images"
        )
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
    return ImageSource(
        uri=path,
        format=fmt,
        height=oh,
        width=ow,
        raw_shape=(h, w),
        dtype="uint8",
        orientation=orientation,
        size_bytes=size,
        mtime_ns=mtime,
        mode=mode,
        etag=etag,
        alpha=alpha,
    )


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


def _decode_pillow(
    path: str,
    stamp: tuple[int, int],
    mode: str,
    max_pixels: int,
    background: tuple[int, int, int],
    mask: convert.MaskRule | None = None,
) -> np.ndarray:
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
        raise OutOfMemoryError(
            f"{path}: out of memory decoding the whole image "
            "(this format is decoded whole: convert it to a tiled TIFF)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path} cannot be decoded: {reason(exc)}") from None
    if arr.dtype.kind == "i" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)  # Pillow's 32-bit 'I' mode for 16-bit greys
    if mask is not None:
        return convert.to_rgb8_masked(arr, background=background, rule=mask)
    return convert.to_rgb8(arr, background=background)


class _DecodedImage:
    """Array-like over a whole-image decode, cached per process; pickles as a path."""

    def __init__(self, src: ImageSource, max_pixels: int, background, mask=None):
        self.src, self.max_pixels, self.background = src, max_pixels, tuple(background)
        self.mask = mask
        self.shape = (src.height, src.width, 3 if mask is None else 4)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key):
        with _decode_lock:
            arr = _decode_pillow(
                self.src.uri,
                (self.src.size_bytes, self.src.mtime_ns, self.src.etag),
                self.src.mode,
                self.max_pixels,
                self.background,
                self.mask,
            )
        if arr.shape != self.shape:
            raise InputError(f"{self.src.uri} decoded to {arr.shape}, header said {self.shape}")
        return arr[key]


def decode_whole(
    src: ImageSource,
    *,
    max_pixels: int | None = None,
    background: tuple[int, int, int] = convert.WHITE,
    mask: convert.MaskRule | None = None,
) -> np.ndarray:
    """The whole (H, W, 3) uint8 RGB of a source Pillow decodes (the array
    :func:`open_source` serves in chunks; decoded once per process); with ``mask``,
    (H, W, 4) with the validity channel of :func:`kquant.io.convert.to_rgb8_masked`."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    return _DecodedImage(src, limit, tuple(int(c) for c in background), mask)[...]
