"""Image readers: a source URI to a lazy, chunked ``(H, W, 3)`` uint8 dask array.

The format is recognised by its content (:mod:`~kquant.io.sniff`): tiled or striped
TIFF/BigTIFF (:mod:`~kquant.io.tiff`), zarr arrays (:mod:`~kquant.io.zarr_input`), or
everything Pillow decodes (:mod:`~kquant.io.pillow`). Pixels are converted to RGB by
:mod:`~kquant.io.convert`; EXIF/TIFF orientation is applied. The header is checked against
the limits of :mod:`~kquant.io.source` before any pixel is decoded.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from kquant.io import convert
from kquant.io import uri as uri_mod
from kquant.io.pillow import _DecodedImage, _inspect_pillow
from kquant.io.sniff import _sniff
from kquant.io.source import (
    DEFAULT_MAX_PIXELS,
    ImageSource,
    normalise_chunk,
    tile_budget,
)
from kquant.io.tiff import _inspect_tiff, _tiff_colormap, _TiffArray
from kquant.io.zarr_input import _inspect_zarr, zarr_blocks


def inspect_image(
    uri: str | os.PathLike, *, max_pixels: int | None = None, max_tile_bytes: int | None = None
) -> ImageSource:
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


def open_image(
    uri: str | os.PathLike,
    *,
    chunks: int | None = None,
    max_pixels: int | None = None,
    background: tuple[int, int, int] = convert.WHITE,
    max_tile_bytes: int | None = None,
    mask: convert.MaskRule | None = None,
):
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
    mask : MaskRule, optional, keyword-only
        Which pixels are masked; the array is then (H, W, 4), channel 3 being 255 for
        valid pixels and 0 for masked ones (:func:`kquant.io.convert.to_rgb8_masked`).

    Returns
    -------
    dask.array.Array of uint8, shape (H, W, 3) (or (H, W, 4) with ``mask``)

    Raises
    ------
    InputError, ImageTooLargeError, ParameterError
        See :func:`inspect_image` and :func:`normalise_chunk`.
    """
    return open_source(
        inspect_image(uri, max_pixels=max_pixels, max_tile_bytes=max_tile_bytes),
        chunks=chunks,
        max_pixels=max_pixels,
        background=background,
        mask=mask,
    )


def open_source(
    src: ImageSource,
    *,
    chunks: int | None = None,
    max_pixels: int | None = None,
    background: tuple[int, int, int] = convert.WHITE,
    mask: convert.MaskRule | None = None,
):
    """Lazy RGB array of an already inspected source (see :func:`open_image`); with
    ``mask``, (H, W, 4) with the validity channel."""
    import dask.array as da

    bg = (int(background[0]), int(background[1]), int(background[2]))
    arr: Any
    rc: tuple[int, ...]
    if src.format == "TIFF":
        raw_rows, raw_cols = normalise_chunk(chunks, src.tile)
        tiff_raw = _TiffArray(src)
        planar = src.mode.endswith(":planar")
        if planar:
            rc = (tiff_raw.shape[0], raw_rows, raw_cols)
        else:
            rc = (raw_rows, raw_cols) + tuple(tiff_raw.shape[2:])
        arr = da.from_array(
            tiff_raw,
            chunks=rc,
            lock=False,
            asarray=True,
            fancy=False,
            name=f"tiff-{abs(hash(src.identity)):x}",
            meta=np.empty((0,) * tiff_raw.ndim, tiff_raw.dtype),
        )
        if planar:
            arr = arr.transpose(1, 2, 0)
        mode = src.mode.split(":")[0]
        if mode == "PALETTE":
            cmap = _tiff_colormap(src.uri)
            arr = arr.map_blocks(
                lambda b, c=cmap: c[b if b.ndim == 2 else b[..., 0]],
                dtype=np.uint8,
                chunks=arr.chunks[:2] + ((3,),),
                new_axis=2 if arr.ndim == 2 else None,
            )
        elif mode == "MINISWHITE":
            top = (
                1.0
                if arr.dtype.kind == "f"
                else (True if arr.dtype == bool else np.iinfo(arr.dtype).max)
            )
            arr = (top - arr) if arr.dtype != bool else ~arr
    elif src.format == "ZARR":
        rows, cols = zarr_blocks(chunks, src.tile, src.width)
        rc = (rows, cols) + tuple(src.raw_shape[2:])
        arr = da.from_zarr(uri_mod.zarr_store(src.uri, read_only=True), chunks=rc)
    else:
        rows, cols = normalise_chunk(chunks)
        limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
        raw = _DecodedImage(src, limit, bg, mask)
        return da.from_array(
            raw,
            chunks=(rows, cols, raw.shape[2]),
            lock=False,
            asarray=True,
            fancy=False,
            name=f"decoded-{abs(hash((src.identity, bg, mask))):x}",
            meta=np.empty((0, 0, 0), np.uint8),
        )
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if mask is not None:
        arr = arr.map_blocks(
            convert.to_rgb8_masked,
            background=bg,
            rule=mask,
            dtype=np.uint8,
            chunks=arr.chunks[:2] + ((4,),),
        )
    elif not (arr.dtype == np.uint8 and arr.shape[2] == 3):
        arr = arr.map_blocks(
            convert.to_rgb8, background=bg, dtype=np.uint8, chunks=arr.chunks[:2] + ((3,),)
        )
    arr = _orient(arr, src.orientation)
    if src.orientation != 1:
        rows, cols = normalise_chunk(chunks, None)
        arr = arr.rechunk((rows, cols, arr.shape[2]))
    return arr
