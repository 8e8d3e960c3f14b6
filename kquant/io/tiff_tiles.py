"""Rectangles of a TIFF, decoded tile by tile (or strip by strip) straight into place.

For tiled and striped single-page TIFFs, local or on object storage: each tile's bytes are
read with ``os.pread`` (or one ranged request, ``fsspec``'s ``cat_file``) and decoded by
tifffile's own decoder for the page (compression, predictor, byte order), then copied into
the requested rectangle: no event loop, no per-tile coroutine, no intermediate chunk
(measurements: bench/README.md). tifffile's zarr interface stays the reader of planar and
unusual layouts (:mod:`kquant.io.tiff`). The decoder is thread-safe: dask threads call it
concurrently.
"""

from __future__ import annotations

import os

import numpy as np

from kquant.errors import InputError, OutOfMemoryError, reason


class TileReader:
    """Reads ``[y0:y1, x0:x1]`` rectangles of the first page of a local TIFF.

    Use :func:`open_reader`, which returns None for layouts this reader does not handle.
    """

    def __init__(self, path: str, tf, page, shape: tuple[int, ...], read_range=None):
        self.path = path
        self._tf = tf  # keeps the page's file open for tifffile
        self._fd = None
        if read_range is None:  # a local file: positioned reads, safe from any thread
            self._fd = os.open(path, os.O_RDONLY)
            fd = self._fd

            def read_range(offset, count):
                return os.pread(fd, count, offset)

        self._read_range = read_range
        self._decode = page.decode
        self._offsets = tuple(page.dataoffsets)
        self._counts = tuple(page.databytecounts)
        self._jpegtables = page.jpegtables
        self.shape = tuple(shape)
        self.dtype = np.dtype(page.dtype)
        self._seg = (int(page.chunks[0]), int(page.chunks[1]))
        self._per_row = int(page.chunked[1])
        self._samples = int(page.samplesperpixel)
        self._kind = "tile" if page.is_tiled else "strip"

    def __del__(self):
        try:
            if self._fd is not None:
                os.close(self._fd)
        except (OSError, AttributeError, TypeError):
            pass

    def _segment(self, index: int) -> np.ndarray | None:
        """The decoded (rows, cols, samples) segment ``index``, or None for a missing one."""
        count = self._counts[index]
        if not count:
            return None
        try:
            data = self._read_range(self._offsets[index], count)
        except MemoryError:
            raise self._out_of_memory(index) from None
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read TIFF data: {reason(exc)}") from None
        if len(data) != count:
            raise InputError(f"{self.path}: TIFF data ends early (truncated file?)")
        try:
            seg, _, _ = self._decode(data, index, jpegtables=self._jpegtables)
        except MemoryError:
            raise self._out_of_memory(index) from None
        except Exception as exc:  # zlib.error, imagecodecs' errors, ValueError...
            raise InputError(f"{self.path}: cannot decode TIFF data: {reason(exc)}") from None
        return seg.reshape(seg.shape[-3], seg.shape[-2], self._samples)

    def _out_of_memory(self, index: int) -> OutOfMemoryError:
        from kquant.label.metrics import format_bytes

        th, tw = self._seg
        size = th * tw * self._samples * self.dtype.itemsize
        return OutOfMemoryError(
            f"{self.path}: out of memory decoding TIFF {self._kind} {index} of "
            f"{len(self._offsets)} ({th}x{tw} pixels, {format_bytes(size)} decoded); lower "
            "KQUANT_MAX_TILE_BYTES to refuse such files, or use fewer dask threads"
        )

    def tiles(self, y0: int, y1: int, x0: int, x1: int):
        """The parts of ``[y0:y1, x0:x1]`` tile by tile, in file order, decoded one at a time.

        Yields ``(row, col, part)``: ``part`` (rows, cols, samples) is the rectangle's
        piece at ``[row:row + rows, col:col + cols]`` relative to ``(y0, x0)``, a view
        of the freshly decoded tile (zeros for a tile missing from the file).

        Raises
        ------
        InputError
            If a tile cannot be read or decoded (truncated or corrupt file).
        OutOfMemoryError
            If memory runs out while decoding (the message names the file and the tile).
        """
        th, tw = self._seg
        if y1 <= y0 or x1 <= x0:
            return
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                sy0, sx0 = ty * th, tx * tw
                a0, a1 = max(y0, sy0), min(y1, sy0 + th, self.shape[0])
                b0, b1 = max(x0, sx0), min(x1, sx0 + tw, self.shape[1])
                if a1 <= a0 or b1 <= b0:
                    continue
                seg = self._segment(ty * self._per_row + tx)
                if seg is None:
                    part = np.zeros((a1 - a0, b1 - b0, self._samples), self.dtype)
                else:
                    part = seg[a0 - sy0 : a1 - sy0, b0 - sx0 : b1 - sx0]
                yield a0 - y0, b0 - x0, part

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The rectangle ``[y0:y1, x0:x1]`` in the page's dtype and sample layout.

        Raises
        ------
        InputError
            If a tile cannot be read or decoded (truncated or corrupt file).
        OutOfMemoryError
            If memory runs out while decoding (the message names the file and the tile).
        """
        h, w = max(0, y1 - y0), max(0, x1 - x0)
        th, tw = self._seg
        if h and w and y0 // th == (y1 - 1) // th and x0 // tw == (x1 - 1) // tw:
            # within one tile: a view of it, no second copy (a chunk of one large tile)
            ((_, _, part),) = self.tiles(y0, y1, x0, x1)
            return part if len(self.shape) == 3 else part[..., 0]
        try:
            out = np.empty((h, w, self._samples), self.dtype)
        except MemoryError:
            raise OutOfMemoryError(
                f"{self.path}: out of memory for a {h}x{w} block of TIFF "
                "data; use a smaller --chunk or fewer dask threads"
            ) from None
        for r, c, part in self.tiles(y0, y1, x0, x1):
            out[r : r + part.shape[0], c : c + part.shape[1]] = part
        return out if len(self.shape) == 3 else out[..., 0]

    def __getitem__(self, key):
        """Basic slicing with unit steps (what ``dask.array.from_array(fancy=False)`` asks)."""
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (len(self.shape) - len(key))
        spans = [k.indices(n) if isinstance(k, slice) else None for k, n in zip(key, self.shape)]
        if any(s is None or s[2] != 1 for s in spans[:2]):
            raise TypeError("TileReader takes slices with unit steps")
        (y0, y1, _), (x0, x1, _) = spans[0], spans[1]
        block = self.read(y0, max(y0, y1), x0, max(x0, x1))
        return block[(slice(None), slice(None)) + tuple(key[2:])]


def open_reader(path: str) -> TileReader | None:
    """A :class:`TileReader` for a single-page, chunky (not planar) TIFF; else None.

    ``path`` is a local path or an fsspec URL (``s3://...``).

    Raises
    ------
    InputError
        If the file cannot be opened as a TIFF.
    """
    import tifffile

    from kquant.io import uri as uri_mod

    read_range = None
    try:
        if uri_mod.is_remote(path):
            fs, key = uri_mod.filesystem(path)
            tf = tifffile.TiffFile(fs.open(key, "rb"))

            def read_range(offset, count):
                return fs.cat_file(key, start=offset, end=offset + count)
        else:
            tf = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable TIFF: {reason(exc)}") from None
    try:
        series = tf.series[0]
        level = series.levels[0]
        page = level.keyframe
        shape = tuple(level.shape)
        ok = (
            len(level.pages) == 1
            and page.shape == shape
            and len(page.chunks) in (2, 3)
            and len(page.chunked) in (2, 3)
            and (page.samplesperpixel == 1 or int(page.planarconfig) == 1)
            and page.bitspersample in (8, 16, 32, 64)
            and (len(shape) == 2) == (page.samplesperpixel == 1)
            and len(page.dataoffsets) == int(np.prod(page.chunked))
        )
    except (AttributeError, IndexError, TypeError, ValueError):
        ok = False
    if not ok:
        tf.close()
        return None
    return TileReader(path, tf, page, shape, read_range)
