"""What the two executors of the write pass share (the dask one, :mod:`.chunked`, and the
in-memory one, :mod:`.in_memory`): how pixels are labelled, how the store is chunked, and
what the store records about its source and its error."""

from __future__ import annotations

import numpy as np

from kquant.errors import KquantError
from kquant.fit import FitResult
from kquant.io import ImageSource, convert
from kquant.io import source as io_source
from kquant.io import uri as uri_mod
from kquant.io.convert import MaskRule
from kquant.label import dither, metrics, packing
from kquant.params import QuantizeParams
from kquant.store import StoreMeta

#: Images of at least this many pixels are labelled through the 2**24-entry lookup table
#: (it wins from 1 Mpx: bench/README.md, "Thresholds").
LUT_MIN_PIXELS = 1 << 20


def plain_rgb(params: QuantizeParams) -> bool:
    """Pixels are labelled by plain RGB nearness: no perceptual space, no dithering."""
    return params.space == "rgb" and params.dither == "none"


def uses_lut(src: ImageSource, params: QuantizeParams) -> bool:
    """Whether the write pass labels through the lookup table (:mod:`kquant.label.lookup`;
    in RGB, dithered or not); the in-memory path records the same in the store, for the same
    labels."""
    return src.n_pixels >= LUT_MIN_PIXELS and params.space == "rgb"


def label_options(params: QuantizeParams, palette: np.ndarray) -> dict | None:
    """Options of :func:`kquant.dither.label_block`; None for the plain RGB assignment."""
    if plain_rgb(params):
        return None
    return {
        "space": params.space,
        "dither": params.dither,
        "dither_amount": dither.amount(palette) if params.dither != "none" else 0.0,
    }


def store_chunks(image) -> tuple[int, int]:
    """Pixel chunk (rows, cols) of the store for a dask image (cols a multiple of 8)."""
    rows, cols = image.chunks[0][0], image.chunks[1][0]
    if cols < image.shape[1] and cols % packing.PIXEL_ALIGN:
        cols = -(-cols // packing.PIXEL_ALIGN) * packing.PIXEL_ALIGN
    return rows, cols


def store_shards(chunks: tuple[int, int], shard: int | None) -> tuple[int, int] | None:
    """Shard (rows, cols) in pixels: ``shard`` rounded down to whole chunks, or None."""
    if shard is None:
        return None
    rows, cols = chunks
    return max(rows, shard // rows * rows), max(cols, shard // cols * cols)


#: Images of at least this many pixels get a pyramid unless ``params.pyramid`` says
#: otherwise (bench/README.md, "Open stores": its cost against a screen's worth of pixels).
PYRAMID_MIN_PIXELS = 1 << 24


def pyramid_levels(params: QuantizeParams, height: int, width: int, chunks) -> int:
    """Levels the store gets (1: none): with a pyramid, halving down to one chunk."""
    from kquant.store import format as store_format

    if store_format.WRITE_VERSION < 3:  # formats 1 and 2 have no pyramid
        return 1
    on = params.pyramid
    if on is None:
        on = height * width >= PYRAMID_MIN_PIXELS
    return store_format.levels_for(height, width, *chunks) if on else 1


def source_record(src: ImageSource) -> dict:
    """The ``source`` attribute of a store written from ``src``: what it was and the file's
    identity (URI, size, mtime, ETag), so a rerun can tell its own store (:func:`same_source`)."""
    return {
        "uri": src.uri,
        "format": src.format,
        "size_bytes": src.size_bytes,
        "mtime_ns": src.mtime_ns,
        "etag": src.etag,
        "orientation": src.orientation,
        "mode": src.mode,
    }


def mask_rule(src: ImageSource, params: QuantizeParams) -> MaskRule | None:
    """Which pixels of ``src`` ``params.nodata`` masks, or None when none can be: ``none``;
    ``auto`` on a source without alpha and without a nodata value.

    Raises
    ------
    InputError
        If the source's nodata value is not a sample value of its data type.
    """
    if params.nodata == "none":
        return None
    colour = params.nodata_colour
    value = src.nodata if params.nodata == "auto" else None
    if value is not None:
        convert.check_nodata(value, src.dtype, src.uri)
    if not (src.alpha or value is not None or colour is not None):
        return None
    return MaskRule(alpha=src.alpha, value=value, colour=colour)


def reserved_colour(params: QuantizeParams) -> tuple[int, int, int]:
    """The RGB of the reserved palette entry of masked pixels: the ``nodata`` colour, else
    the background (what a reader that ignores the nodata index shows)."""
    colour = params.nodata_colour
    return colour if colour is not None else tuple(int(c) for c in params.background)  # type: ignore[return-value]


def nodata_record(params: QuantizeParams, nodata_index: int | None) -> dict | None:
    """The ``nodata`` attribute of a store whose palette reserves ``nodata_index``."""
    if nodata_index is None:
        return None
    return {
        "index": int(nodata_index),
        "rule": params.nodata,
        "colour": list(reserved_colour(params)),
    }


def geo_record(src: ImageSource) -> dict | None:
    """The ``geo`` attribute of a store written from ``src`` (GeoZarr names), or None."""
    return src.geo.to_json(src.height, src.width) if src.geo is not None else None


def store_meta(
    src: ImageSource,
    params: QuantizeParams,
    palette: np.ndarray,
    nodata_index: int | None,
    *,
    chunks: tuple[int, int],
    shards: tuple[int, int] | None = None,
    levels: int = 1,
):
    """The attributes of the store both write passes begin (its metrics come at the commit)."""
    return StoreMeta(
        height=src.height,
        width=src.width,
        k=params.k,
        n_colors=len(palette),
        bits=packing.storage_bits(len(palette)),
        chunk_rows=chunks[0],
        chunk_cols=chunks[1],
        shard_rows=shards[0] if shards else None,
        shard_cols=shards[1] if shards else None,
        source=source_record(src),
        params=params.to_json(),
        levels=levels,
        geo=geo_record(src),
        nodata=nodata_record(params, nodata_index),
    )


def same_source(record: dict, source) -> bool:
    """Whether a store's ``source`` record names ``source`` as it is now: same URI, size,
    modification time and ETag (a stat, no decoding); False if the record predates the
    identity fields or the source cannot be reached."""
    if "mtime_ns" not in record:
        return False
    uri = uri_mod.normalise(source)
    if record.get("uri") != uri:
        return False
    try:
        size, mtime_ns, etag = io_source._stat(uri)
    except (OSError, ValueError, StopIteration, KquantError):
        return False
    return (record.get("size_bytes"), record.get("mtime_ns"), record.get("etag", "")) == (
        size,
        mtime_ns,
        etag,
    )


def write_metrics(
    sse: int,
    counts,
    n_pixels: int,
    params: QuantizeParams,
    label_options: dict | None,
    assigned: str,
    fit_info: FitResult | None,
    *,
    nodata_index: int | None = None,
) -> dict:
    """The ``metrics`` attribute of a store: error, PSNR, palette use and how it was made.

    With a reserved ``nodata_index`` the error is over the valid pixels only: ``n_pixels``
    counts them and ``masked_pixels`` the others (``counts[nodata_index]``).
    """
    masked = int(counts[nodata_index]) if nodata_index is not None else 0
    n_pixels = int(n_pixels) - masked
    mse = metrics.mse(sse, n_pixels)
    psnr = metrics.psnr(mse)
    extra = {}
    if label_options and label_options.get("dither") != "none":
        extra["dither_amount"] = label_options["dither_amount"]
    if nodata_index is not None:
        extra["masked_pixels"] = masked
    if params.target_psnr is not None:
        extra["target_psnr_met"] = bool(not np.isfinite(psnr) or psnr >= params.target_psnr)
    return {
        "sse": sse,
        "mse": mse,
        "psnr": psnr if np.isfinite(psnr) else None,
        "lossless": sse == 0,
        "n_pixels": n_pixels,
        "palette_counts": [int(c) for c in counts],
        "assign": assigned,
        "fit_mode": fit_info.mode if fit_info else None,
        **extra,
    }
