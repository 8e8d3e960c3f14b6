"""One palette for several images (tiles of a mosaic, frames of a series).

:func:`fit_shared` fits a single palette on the *union* of several images: the
exact colour histograms of all of them merged, and one pixel sample drawn
across all of them (each image contributes in proportion to its pixel count).
Above ``EXACT_MAX_PIXELS`` in total (``params.mode == "auto"``) the full pass is
replaced, as in :func:`kquant.pipeline.fit`, by a bounded number of tiles read
from each image. Each image is then written with :func:`kquant.pipeline.write`, which accepts
any palette, so every store gets the same palette entries in the same order.
"""

from __future__ import annotations

from kquant import cluster
from kquant.colour import histogram
from kquant.errors import InputError, ParameterError
from kquant.fit import FitResult, sampling
from kquant.io import ImageSource
from kquant.params import QuantizeParams


def fit_shared(
    sources,
    params: QuantizeParams | None = None,
    *,
    max_pixels: int | None = None,
    address: str | None = None,
    progress: bool = False,
) -> FitResult:
    """Fit one palette on several images together.

    Parameters
    ----------
    sources : sequence of str, path-like or ImageSource
        The images; their order only affects how the sample is split (ties).
    params : QuantizeParams, optional
        ``k``, ``seed``, ``sample_size`` (the total over all images), ``chunk``,
        ``restarts``, ``max_iter``, ``background``, ``space`` and ``target_psnr``
        (as for :func:`kquant.pipeline.fit`).
    max_pixels : int, optional, keyword-only
        Pixel limit applied to each image's header.
    address : str, optional, keyword-only
        Dask scheduler address; default ``$DASK_SCHEDULER_ADDRESS`` or local threads.
    progress : bool, keyword-only

    Returns
    -------
    FitResult
        ``sse``/``n_pixels``/``n_unique`` are over all images together (over the
        sample in ``sample`` mode, as for :func:`kquant.pipeline.fit`).

    Raises
    ------
    ParameterError
        If ``sources`` is empty.
    InputError
        If any source cannot be read, or every pixel is masked.

    Pixels ``params.nodata`` masks in any image are left out, and the palette's last entry
    is reserved for them (as :func:`kquant.pipeline.fit`; ``nodata_index`` of the result),
    so every store of the set has the same reserved index.
    """
    import dataclasses
    import time

    import numpy as np

    from kquant.pipeline.chunked import image
    from kquant.pipeline.fitting import (
        fit_histogram,
        inspect,
        sample_graph,
        with_reserved_entry,
        without_masked,
    )
    from kquant.pipeline.plan import mask_rule, reserved_colour

    params = params or QuantizeParams()
    srcs = [s if isinstance(s, ImageSource) else inspect(s, max_pixels=max_pixels) for s in sources]
    if not srcs:
        raise ParameterError("no images to fit a shared palette on")
    # the rule of pipeline.fit, on the pixels of all the images together
    mode = params.fit_mode(sum(s.n_pixels for s in srcs))
    shares = sampling.allocate([s.n_pixels for s in srcs], params.sample_size)
    rules = [mask_rule(s, params) for s in srcs]
    masked = None
    t0 = time.perf_counter()
    if mode == "exact":  # one pass over every pixel: exact merged histogram + sample
        images = [image(s, params, max_pixels, rule) for s, rule in zip(srcs, rules)]
        hist = histogram.merge_tree([histogram.colour_histogram(im) for im in images])
        samples = [
            sampling.sample_pixels(im, n, seed=params.seed)
            for im, n in zip(images, shares)
            if n > 0
        ]
        counted = [(im[..., 3] == 0).sum() for im in images if im.shape[2] == 4]
        with cluster.scheduler(address):
            (colours, counts), *parts = cluster.compute(hist, *samples, *counted, progress=progress)
        masked = int(sum(parts[len(samples) :])) if counted else None
        sample = np.concatenate([_valid(p) for p in parts[: len(samples)]], axis=0)
    else:  # too many pixels for a full pass: a bounded number of tiles of each image
        samples = [
            sample_graph(s, n, params, max_pixels=max_pixels, mask=rule)
            for s, n, rule in zip(srcs, shares, rules)
            if n > 0
        ]
        with cluster.scheduler(address):
            parts = cluster.compute(*samples, progress=progress)
        sample = np.concatenate([_valid(p) for p in parts], axis=0)
        colours, counts = histogram.block_histogram(sample[None])
    if masked:  # counted as the reserved entry's colour (kquant.io.convert.to_rgb8_masked)
        if masked >= sum(s.n_pixels for s in srcs):
            raise InputError(
                f"every pixel of the {len(srcs)} images is masked (nodata {params.nodata})"
            )
        colours, counts = without_masked(colours, counts, masked, reserved_colour(params))
    if not len(sample) or not len(colours):
        raise InputError(f"every sampled pixel of the {len(srcs)} images is masked")
    reserve = any(r is not None for r in rules) and (masked is None or masked > 0)
    t1 = time.perf_counter()
    result = fit_histogram(
        sample,
        colours,
        counts,
        params,
        sampled=mode == "sample",
        k=params.k - 1 if reserve else None,
    )
    timings = {"read" if mode == "exact" else "sample": t1 - t0, "fit": time.perf_counter() - t1}
    result = dataclasses.replace(result, mode=mode, timings=timings)
    return with_reserved_entry(result, params, masked) if reserve else result


def _valid(sample):
    """The (m, 3) valid pixels of a sample with a validity channel (else the sample)."""
    import numpy as np

    if sample.shape[1] == 4:
        return np.ascontiguousarray(sample[sample[:, 3] != 0][:, :3])
    return sample
