"""TIFF and BigTIFF sources: the header, tiles or strips decoded directly
(:mod:`~kquant.io.tiff_tiles`), tifffile's zarr interface for planar and unusual layouts (the
only place kquant touches that bridge), palette TIFFs' colour maps."""

from __future__ import annotations

import functools
import os
import threading

import numpy as np

from kquant.errors import InputError, OutOfMemoryError, reason
from kquant.io import convert
from kquant.io.source import ImageSource, _check_size, _check_tile, _open, _oriented, _stat


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
                raise InputError(
                    f"{path} is a multi-page or multi-dimensional TIFF (axes {axes}, "
                    f"shape {shape}); kquant reads single images"
                )
            ydim, xdim = axes.index("Y"), axes.index("X")
            h, w = shape[ydim], shape[xdim]
            _check_size(path, h, w, max_pixels)
            photometric = int(page.photometric)
            if photometric not in (0, 1, 2, 3):  # WHITE/BLACK_IS_ZERO, RGB, PALETTE
                name = getattr(page.photometric, "name", str(photometric))
                raise InputError(
                    f"{path}: unsupported TIFF photometric {name}; convert to RGB first"
                )
            if page.compression != 1:
                try:
                    tifffile.TIFF.DECOMPRESSORS[page.compression]  # raises if unavailable
                except KeyError:
                    name = getattr(page.compression, "name", page.compression)
                    raise InputError(
                        f"{path}: TIFF compression {name} needs the imagecodecs package "
                        "(pip install imagecodecs)"
                    ) from None
            dtype = np.dtype(page.dtype)
            if photometric != 3:
                convert.check_dtype(dtype)
            tile = (
                (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip or h, w)
            )
            planar = "S" in axes and axes.index("S") < ydim
            samples = 1 if planar else int(page.samplesperpixel)
            seg_rows = tile[0] if page.is_tiled else min(tile[0], h)
            _check_tile(
                path,
                "TIFF tile" if page.is_tiled else "TIFF strip",
                seg_rows,
                tile[1],
                seg_rows * tile[1] * samples * dtype.itemsize,
                budget,
            )
            tag = page.tags.get("Orientation")
            orientation = int(tag.value) if tag is not None else 1
            mode = {0: "MINISWHITE", 1: "MINISBLACK", 2: "RGB", 3: "PALETTE"}[photometric]
            if planar:
                mode += ":planar"
            alpha = photometric != 3 and int(page.samplesperpixel) in (2, 4)
            nodata = _nodata(path, page.tags.get("GDAL_NODATA"))
            georeferenced = bool(tf.is_geotiff)
            keys = _crs_keys(tf) if georeferenced else {}
    except InputError:
        raise
    except (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise InputError(f"{path} is not a readable TIFF: {reason(exc)}") from None
    if orientation not in range(1, 9):
        orientation = 1
    size, mtime, etag = _stat(path)
    oh, ow = _oriented(h, w, orientation)
    geo = _georeferencing(path, orientation, keys) if georeferenced else None
    return ImageSource(
        uri=path,
        format="TIFF",
        height=oh,
        width=ow,
        raw_shape=shape,
        dtype=str(dtype),
        orientation=orientation,
        tile=tile,
        size_bytes=size,
        mtime_ns=mtime,
        mode=mode,
        etag=etag,
        geo=geo,
        nodata=nodata,
        alpha=alpha,
    )


def _nodata(path: str, tag) -> float | None:
    """The ``GDAL_NODATA`` tag's value, or None (checked against the sample type only when
    it is used: :func:`kquant.io.convert.check_nodata`).

    Raises
    ------
    InputError
        If the tag is not a number.
    """
    if tag is None:
        return None
    text = str(tag.value).strip().strip("\x00")
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{path}: its nodata value {text!r} is not a number") from None


def _crs_keys(tf) -> dict:
    """The GeoKeys that name the GeoTIFF's CRS by code (for messages), as integers."""
    try:
        meta = tf.geotiff_metadata or {}
    except Exception:  # a malformed GeoKey directory: GDAL has the last word
        return {}
    return {
        name: int(meta[name])
        for name in ("ProjectedCSTypeGeoKey", "GeographicTypeGeoKey")
        if name in meta
    }


def _georeferencing(path: str, orientation: int, keys: dict | None = None):
    """The GeoTIFF's georeferencing (:mod:`kquant.io.geo`), or None with a warning when
    rasterio is not installed.

    Raises
    ------
    InputError
        As :func:`kquant.io.geo.read`; or if the TIFF also has an orientation other than 1.
    """
    import warnings

    from kquant.errors import KquantWarning
    from kquant.io import geo

    if not geo.available():
        warnings.warn(
            f"{path} is a GeoTIFF: its georeferencing is dropped (install kquant[geo], "
            "i.e. rasterio, to keep it)",
            KquantWarning,
            stacklevel=2,
        )
        return None
    info = geo.read(path, keys)
    if info is not None and orientation != 1:
        raise InputError(
            f"{path}: a georeferenced TIFF with orientation {orientation}: not supported"
        )
    return info


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
            raise OutOfMemoryError(
                f"{self.src.uri}: out of memory decoding the TIFF tiles of "
                f"{_region(key)} (tiles of {_tile_text(self.src)})"
            ) from None
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
