"""The in-memory path: an image of one chunk, quantized without dask and zarr.

A PNG, JPEG, ... (decoded whole by Pillow anyway) whose pixels fit in one chunk makes a
dask graph of one task and a store of one chunk; building the graph and importing dask
and zarr (~0.8 s) cost more than quantizing a photo. Here the same kernels run on the
decoded array and the store's files are written directly
(:class:`kquant.store.DirectStoreWriter`): the stores are byte-identical to those of the
dask path (``tests/pipeline/test_in_memory.py``). :func:`kquant.pipeline.write` routes here when
:func:`eligible` says so.

Labels in RGB are assigned per distinct colour (the assignment is a function of the
colour: :func:`kquant.assign.nearest` is exact) and gathered through a colour-indexed
table; error and palette counts come from the colour histogram, exactly.
"""

from __future__ import annotations

import functools

import numpy as np

from kquant import cluster, io, store
from kquant.colour import histogram
from kquant.io import ImageSource
from kquant.io import uri as uri_mod
from kquant.io.convert import MaskRule
from kquant.label import assign, metrics, packing
from kquant.params import QuantizeParams
from kquant.pipeline.plan import (
    mask_rule,
    store_meta,
    uses_lut,
    write_metrics,
)

#: Pillow decodes these whole in memory (TIFF and zarr sources are read tile by tile).
_WHOLE_FORMATS_EXCLUDED = ("TIFF", "ZARR")
#: Larger images (one chunk only with a huge ``chunk``) stay on the dask path.
MAX_PIXELS = 1 << 25


def eligible(
    src: ImageSource, params: QuantizeParams, *, address: str | None = None, target=None
) -> bool:
    """Whether ``src`` goes through the in-memory path with these parameters.

    It does when the image is decoded whole by Pillow, fits in one chunk (unsharded),
    has fewer than :data:`MAX_PIXELS` pixels, is fitted in exact mode without the
    sample-fit seeding, and runs on local threads (no ``address`` nor
    ``$DASK_SCHEDULER_ADDRESS``); with a ``target``, only if it is local.
    """
    if src.format in _WHOLE_FORMATS_EXCLUDED or params.shard is not None:
        return False
    if cluster.resolve_address(address) is not None:
        return False
    if target is not None and uri_mod.is_remote(uri_mod.normalise(target)):
        return False
    rows, cols = io.normalise_chunk(params.chunk)
    if rows < src.height or cols < src.width or src.n_pixels >= MAX_PIXELS:
        return False
    return params.fit_mode(src.n_pixels) == "exact" and params.sample_fit != "always"


def image(
    src: ImageSource,
    params: QuantizeParams,
    *,
    max_pixels: int | None = None,
    mask: MaskRule | None = None,
) -> np.ndarray:
    """The decoded (H, W, 3) uint8 image (cached per process by :mod:`kquant.readers`);
    with ``mask``, (H, W, 4) with the validity channel."""
    return io.decode_whole(src, max_pixels=max_pixels, background=params.background, mask=mask)


@functools.lru_cache(maxsize=2)
def _histogram(
    src: ImageSource,
    max_pixels: int | None,
    background: tuple[int, int, int],
    mask: MaskRule | None,
):
    arr = io.decode_whole(src, max_pixels=max_pixels, background=background, mask=mask)
    masked = int(np.count_nonzero(arr[..., 3] == 0)) if mask is not None else None
    return (*histogram.block_histogram(arr), masked)


def colour_histogram(
    src: ImageSource,
    params: QuantizeParams,
    *,
    max_pixels: int | None = None,
    mask: MaskRule | None = None,
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Sorted unique colour codes (uint32) and counts (int64) of the image (cached), and
    with ``mask`` the number of masked pixels (counted in the histogram as the reserved
    entry's colour, :func:`kquant.io.convert.to_rgb8_masked`; else None)."""
    return _histogram(src, max_pixels, params.background, mask)


def label(
    src: ImageSource,
    palette: np.ndarray,
    params: QuantizeParams,
    *,
    max_pixels: int | None = None,
    label_options: dict | None = None,
    nodata_index: int | None = None,
    mask: MaskRule | None = None,
):
    """Labels of every pixel, exact squared error and pixels per palette entry.

    ``label_options`` (a perceptual space, dithering) are those of
    :func:`kquant.dither.label_block`; without them the labels are the nearest entry
    in RGB (:func:`kquant.assign.nearest`), computed once per distinct colour. With
    ``nodata_index`` (the last entry) and ``mask``, masked pixels get that index and the
    others the nearest of the entries before it.

    Returns
    -------
    labels : ndarray (H, W) uint8
    sse : int
    counts : ndarray (n,) int64
    """
    palette = np.asarray(palette, np.uint8)
    if nodata_index is None:
        mask = None
    arr = image(src, params, max_pixels=max_pixels, mask=mask)
    colour_entries = palette[:nodata_index]  # all of it without a nodata index
    valid = None
    if mask is not None:
        valid = arr[..., 3] != 0
        arr = np.ascontiguousarray(arr[..., :3])
    if label_options:
        from kquant.label import dither

        labels = dither.label_block(arr, colour_entries, y0=0, x0=0, **label_options)
        if valid is not None:
            labels[~valid] = nodata_index
        return (
            labels,
            metrics.sse_block(arr, labels, palette),  # masked pixels are their entry's colour
            metrics.label_counts(labels, len(palette)),
        )
    from threadpoolctl import threadpool_limits

    colours, counts, masked = colour_histogram(src, params, max_pixels=max_pixels, mask=mask)
    rgb = histogram.decode(colours)
    with threadpool_limits(limits=1, user_api="blas"):  # a thin product: threads only wait
        per_colour = assign.nearest(rgb, colour_entries, blas=True)  # exact: the dask path's
    table = np.empty(histogram.N_COLOURS, np.uint8)  # read only where the image has colours
    table[colours] = per_colour
    labels = table[histogram.encode(arr)]
    if valid is not None:
        labels[~valid] = nodata_index
    if masked:  # counted as the reserved entry's colour: they have that entry, no error
        counts = counts.copy()
        counts[np.searchsorted(colours, histogram.encode(palette[nodata_index]))] -= masked
    diff = np.take(palette.astype(np.int64), per_colour, axis=0)
    np.subtract(rgb, diff, out=diff)
    sse = int(np.dot(counts, np.einsum("ij,ij->i", diff, diff)))
    used = np.bincount(per_colour, weights=counts, minlength=len(palette))  # exact below 2**53
    if masked:
        used[nodata_index] += masked
    return labels, sse, used.astype(np.int64)


def write(
    src: ImageSource,
    target,
    palette: np.ndarray,
    params: QuantizeParams,
    *,
    overwrite: bool = False,
    max_pixels: int | None = None,
    fit_info=None,
    label_options: dict | None = None,
    nodata_index: int | None = None,
) -> store.StoreMeta:
    """Label, pack and write the store of a one-chunk image (see :func:`kquant.pipeline.write`).

    Raises
    ------
    TargetExistsError, InputError, StoreError
        As :func:`kquant.pipeline.write`; no store is left behind on failure.
    """
    palette = np.asarray(palette, np.uint8)
    # the dask path's record of how pixels were labelled (its lookup table from
    # LUT_MIN_PIXELS on, with the same labels): here always through a table of the
    # image's colours, recorded the same way so that both paths write the same store
    assigned = "lut" if uses_lut(src, params) else "direct"
    meta = store_meta(src, params, palette, nodata_index, chunks=(src.height, src.width))
    bits = meta.bits
    with store.DirectStoreWriter(target, meta, palette, overwrite=overwrite) as writer:
        labels, sse, counts = label(
            src,
            palette,
            params,
            max_pixels=max_pixels,
            label_options=label_options,
            nodata_index=nodata_index,
            mask=mask_rule(src, params) if nodata_index is not None else None,
        )
        packed = packing.pack_rows(labels, bits)
        writer.write_labels(packed)
        return writer.commit(
            metrics=write_metrics(
                sse,
                counts,
                src.height * src.width,
                params,
                label_options,
                assigned,
                fit_info,
                nodata_index=nodata_index,
            ),
            checksum=store.combine_digests({(0, 0): store.chunk_digest(packed)}),
        )
