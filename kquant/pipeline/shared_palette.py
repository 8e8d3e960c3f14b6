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
from kquant.errors import ParameterError
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
        If any source cannot be read.
    """
    import dataclasses
    import time

    import dask
    import numpy as np

    from kquant.pipeline.chunked import image
    from kquant.pipeline.fitting import fit_histogram, inspect, sample_graph

    params = params or QuantizeParams()
    srcs = [s if isinstance(s, ImageSource) else inspect(s, max_pixels=max_pixels) for s in sources]
    if not srcs:
        raise ParameterError("no images to fit a shared palette on")
    # the rule of pipeline.fit, on the pixels of all the images together
    mode = params.fit_mode(sum(s.n_pixels for s in srcs))
    shares = sampling.allocate([s.n_pixels for s in srcs], params.sample_size)
    t0 = time.perf_counter()
    if mode == "exact":  # one pass over every pixel: exact merged histogram + sample
        images = [image(s, params, max_pixels) for s in srcs]
        hist = histogram.merge_tree([histogram.colour_histogram(im) for im in images])
        samples = [
            sampling.sample_pixels(im, n, seed=params.seed)
            for im, n in zip(images, shares)
            if n > 0
        ]
        sample = dask.delayed(np.concatenate)(samples, axis=0)
        with cluster.scheduler(address):
            (colours, counts), sample = cluster.compute(hist, sample, progress=progress)
    else:  # too many pixels for a full pass: a bounded number of tiles of each image
        samples = [
            sample_graph(s, n, params, max_pixels=max_pixels) for s, n in zip(srcs, shares) if n > 0
        ]
        with cluster.scheduler(address):
            parts = cluster.compute(*samples, progress=progress)
        sample = np.concatenate(parts, axis=0)
        colours, counts = histogram.block_histogram(sample[None])
    t1 = time.perf_counter()
    result = fit_histogram(sample, colours, counts, params, sampled=mode == "sample")
    timings = {"read" if mode == "exact" else "sample": t1 - t0, "fit": time.perf_counter() - t1}
    return dataclasses.replace(result, mode=mode, timings=timings)
