"""zarr arrays (v2 or v3) of shape (H, W) or (H, W, C) as sources, read in blocks of whole
native chunks."""

from __future__ import annotations

import numpy as np

from kquant.errors import InputError, reason
from kquant.io import convert
from kquant.io import uri as uri_mod
from kquant.io.source import (
    MAX_SMALL_CHUNKS,
    MIN_CHUNK_PIXELS,
    ImageSource,
    _check_size,
    _check_tile,
    _stat,
    normalise_chunk,
)


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
    _check_tile(
        path,
        "zarr chunk",
        chunks[0],
        chunks[1],
        int(np.prod(chunks)) * np.dtype(z.dtype).itemsize,
        budget,
    )
    n_chunks = int(np.prod([-(-n // c) for n, c in zip(z.shape, chunks)]))
    if n_chunks >= MAX_SMALL_CHUNKS and chunks[0] * chunks[1] < MIN_CHUNK_PIXELS:
        raise InputError(
            f"{path}: its {n_chunks} zarr chunks of {chunks[0]}x{chunks[1]} pixels are too small "
            f"to read in reasonable time ({MAX_SMALL_CHUNKS} or more chunks of under "
            f"{MIN_CHUNK_PIXELS} pixels are refused); rechunk it first, e.g. "
            f"dask.array.from_zarr(SRC, chunks=(2048, 2048, -1)).to_zarr(DST)"
        )
    size, mtime, etag = _stat(path)
    return ImageSource(
        uri=path,
        format="ZARR",
        height=h,
        width=w,
        raw_shape=tuple(z.shape),
        dtype=str(z.dtype),
        tile=(int(z.chunks[0]), int(z.chunks[1])),
        size_bytes=size,
        mtime_ns=mtime,
        etag=etag,
    )


def zarr_blocks(chunk: int | None, native: tuple[int, int] | None, width: int) -> tuple[int, int]:
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
