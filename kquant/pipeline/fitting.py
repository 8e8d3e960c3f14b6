"""The fit pass: one pass over every pixel for the exact colour histogram (and the sample
that seeds dask-ml's fit), or a bounded sample of tiles; then the fit on that histogram."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import numpy as np

from kquant import cluster
from kquant.colour import histogram
from kquant.errors import InputError
from kquant.fit import FitResult, fit_for_psnr, fit_palette, sampling
from kquant.fit.tuning import SAMPLE_FIT_MIN_PIXELS
from kquant.io import ImageSource, readers
from kquant.io import uri as uri_mod
from kquant.io.convert import MaskRule
from kquant.params import QuantizeParams
from kquant.pipeline import chunked, in_memory
from kquant.pipeline.plan import mask_rule, reserved_colour, uses_lut


def inspect(source, *, max_pixels: int | None = None) -> ImageSource:
    """Header of the source (see :func:`kquant.readers.inspect_image`).

    Raises
    ------
    InputError
        As :func:`kquant.readers.inspect_image`.
    ObjectStoreError
        If the source's object store cannot be reached or refuses the read.
    """
    with uri_mod.storage_errors(source):
        return readers.inspect_image(source, max_pixels=max_pixels)


#: Largest tile edge read per window when sampling without a full pass.
SAMPLE_WINDOW = 512
#: Fewest pixels a window holds: with tiny tiles (16x16, small zarr chunks) a window of
#: one tile would hold too few for the sample (2**20 pixels over 128 to 1024 windows,
#: sampling.windows_for, needs up to 8192 a window).
SAMPLE_MIN_PIXELS = 1 << 14


def sample_chunks(src: ImageSource) -> int:
    """Chunk edge for reading sample windows: the file's tile, at most SAMPLE_WINDOW, and
    enough for SAMPLE_MIN_PIXELS a window (chunks are whole tiles, kquant.io.normalise_chunk)."""
    if not src.tile:
        return 256
    rows, cols = src.tile
    edge = max(8, rows)
    if edge * max(cols, edge) < SAMPLE_MIN_PIXELS:  # tiny tiles: several per window
        edge = -(-SAMPLE_MIN_PIXELS // cols) if cols >= 128 else 128
    return min(edge, SAMPLE_WINDOW)


def sample_graph(
    src: ImageSource,
    n: int,
    params: QuantizeParams,
    *,
    max_pixels: int | None = None,
    mask: MaskRule | None = None,
):
    """The delayed (m, 3) sample of about ``n`` pixels of sample mode: tiles spread over
    the image (:func:`kquant.sampling.sample_windows`, :func:`kquant.sampling.windows_for`),
    read at the file's tile size (:func:`sample_chunks`)."""
    image = readers.open_source(
        src,
        chunks=sample_chunks(src),
        max_pixels=max_pixels,
        background=params.background,
        mask=mask,
    )
    return sampling.sample_windows(
        image, n, seed=params.seed, n_windows=sampling.windows_for(src.n_pixels)
    )


def _compute_reading(work: list, use_sample: bool, progress: bool):
    """Compute the fit's pass over the pixels. On a cluster, with dask-ml's sample fit to
    come, import and compile dask-ml in this process meanwhile (~1.8 s otherwise added
    after the pass). Not on local threads: there the import and the decoding threads
    contend for the GIL and the overlap was measured slower than doing one after the other."""
    if not use_sample or cluster.active_client() is None:
        return cluster.compute(*work, progress=progress)
    from kquant.fit import prepare_sample_fit

    return cluster.compute_alongside(prepare_sample_fit, *work, progress=progress)


def fit(
    source,
    params: QuantizeParams | None = None,
    *,
    max_pixels: int | None = None,
    address: str | None = None,
    progress: bool = False,
) -> FitResult:
    """Fit the palette of a source.

    In ``exact`` mode one pass over every pixel computes the colour histogram
    and the sample together; in ``sample`` mode only a bounded number of tiles
    is read (see :func:`kquant.sampling.sample_windows`) and the fit is refined
    on the sample's histogram. ``params.mode == "auto"`` picks by image size.

    Raises
    ------
    InputError, ParameterError
        On a bad source or bad parameters.
    ObjectStoreError
        If the source's object store cannot be reached or refuses a read.
    """
    params = params or QuantizeParams()
    src = source if isinstance(source, ImageSource) else inspect(source, max_pixels=max_pixels)
    mode = params.fit_mode(src.n_pixels)
    # dask-ml's sample fit seeds only large images (see kquant.fit.tuning.SAMPLE_FIT_MIN_PIXELS);
    # otherwise the exact pass skips drawing the sample
    use_sample = params.sample_fit == "always" or (
        params.sample_fit == "auto" and src.n_pixels >= SAMPLE_FIT_MIN_PIXELS
    )
    rule = mask_rule(src, params)
    masked: int | None = None
    t0 = time.perf_counter()
    with cluster.scheduler(address), uri_mod.storage_errors(src.uri):
        if mode == "exact" and not use_sample and in_memory.eligible(src, params, address=address):
            colours, counts, masked = in_memory.colour_histogram(
                src, params, max_pixels=max_pixels, mask=rule
            )
            sample = None
        elif mode == "exact":
            image = chunked.image(src, params, max_pixels, mask=rule)
            sample = None
            samplers = (
                sampling.block_samplers(image, params.sample_size, seed=params.seed)
                if use_sample
                else [None] * image.npartitions
            )
            if rule is not None:  # each block also counts its masked pixels
                samplers = [functools.partial(_masked_and_sample, sampler=s) for s in samplers]
            if use_sample or rule is not None:  # in the tasks that count each block
                (((colours, counts), parts),) = _compute_reading(
                    [histogram.colour_histogram(image, per_block=samplers)], use_sample, progress
                )
                if rule is not None:
                    masked = sum(p[0] for p in parts)
                    parts = [p[1] for p in parts if p[1] is not None]
                if use_sample:
                    sample = np.concatenate(parts, axis=0)
            else:
                ((colours, counts),) = cluster.compute(
                    histogram.colour_histogram(image), progress=progress
                )
        else:
            (sample,) = _compute_reading(
                [sample_graph(src, params.sample_size, params, max_pixels=max_pixels, mask=rule)],
                use_sample,
                progress,
            )
            if rule is not None:
                sample = sample[sample[:, 3] != 0][:, :3]
                if not len(sample):
                    raise InputError(
                        f"{src.uri}: every sampled pixel is masked (nodata {params.nodata}); "
                        "use --mode exact to fit on the few valid ones"
                    )
            colours, counts = histogram.block_histogram(sample[None])
        if uses_lut(src, params):  # the workers are idle while this process fits
            cluster.warm_workers(chunked.warm_write_pass)
    if sample is not None and rule is not None and sample.shape[1] == 4:
        sample = np.ascontiguousarray(sample[sample[:, 3] != 0][:, :3])
    if masked is not None:
        if masked >= src.n_pixels:
            raise InputError(
                f"{src.uri}: every pixel is masked (nodata {params.nodata}): nothing to quantize"
            )
        colours, counts = without_masked(colours, counts, masked, reserved_colour(params))
    reserve = rule is not None and (masked is None or masked > 0)
    t1 = time.perf_counter()
    result = fit_histogram(
        sample,
        colours,
        counts,
        params,
        sampled=mode == "sample",
        sample_fit="always" if use_sample else "never",
        k=params.k - 1 if reserve else None,
    )
    timings = {"read" if mode == "exact" else "sample": t1 - t0, "fit": time.perf_counter() - t1}
    result = dataclasses.replace(result, mode=mode, timings=timings)
    if reserve:
        result = with_reserved_entry(result, params, masked)
    return result


def with_reserved_entry(result: FitResult, params: QuantizeParams, masked: int | None) -> FitResult:
    """``result`` with the entry of masked pixels appended to its palette (its index is
    ``nodata_index``)."""
    palette = np.vstack([result.palette, np.asarray([reserved_colour(params)], np.uint8)])
    return dataclasses.replace(
        result, palette=palette, nodata_index=len(palette) - 1, masked_pixels=masked
    )


def _masked_and_sample(block: np.ndarray, sampler=None):
    """A block's masked pixels (validity channel 0) and its sample (or None)."""
    masked = int(np.count_nonzero(block[..., 3] == 0))
    return masked, (sampler(block) if sampler is not None else None)


def without_masked(colours, counts, masked: int, colour) -> tuple[np.ndarray, np.ndarray]:
    """The histogram of the valid pixels: masked pixels were counted as ``colour``
    (:func:`kquant.io.convert.to_rgb8_masked`)."""
    if not masked:
        return colours, counts
    code = int(histogram.encode(np.asarray(colour, np.uint8)))
    i = int(np.searchsorted(colours, code))
    counts = counts.copy()
    counts[i] -= masked
    if counts[i] == 0:
        colours, counts = np.delete(colours, i), np.delete(counts, i)
    return colours, counts


def fit_histogram(
    sample,
    colours,
    counts,
    params: QuantizeParams,
    *,
    sampled: bool,
    sample_fit: str = "auto",
    k: int | None = None,
) -> FitResult:
    """The fit of ``params`` (K or a target PSNR, seed, restarts, space) on a histogram.

    ``sample``, ``colours``, ``counts`` and ``sample_fit`` are those of
    :func:`kquant.fit.fit_palette`; ``sampled`` says the histogram is a sample's; ``k``
    replaces ``params.k`` (one entry fewer when one is reserved for masked pixels).
    With ``params.target_psnr`` the smallest K up to ``params.k`` that reaches it
    (:func:`kquant.fit.fit_for_psnr`; ``target_met`` says whether it did).

    Raises
    ------
    ParameterError
        As :func:`kquant.fit.fit_palette`.
    """
    options: dict[str, Any] = dict(
        seed=params.seed,
        restarts=params.restarts,
        max_iter=params.max_iter,
        sample_fit=sample_fit,
        space=params.space,
        sampled=sampled,
    )
    if params.target_psnr is not None:
        result, met = fit_for_psnr(
            sample, colours, counts, params.target_psnr, k_max=k or params.k, **options
        )
        return dataclasses.replace(result, target_met=met)
    return fit_palette(sample, colours, counts, k or params.k, **options)
