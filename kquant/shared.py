"""One palette for several images (tiles of a mosaic, frames of a series).

:func:`fit_shared` fits a single palette on the *union* of several images: the
exact colour histograms of all of them merged, and one pixel sample drawn
across all of them (each image contributes in proportion to its pixel count).
Each image is then written with :func:`kquant.pipeline.write`, which accepts
any palette, so every store gets the same palette entries in the same order.
"""

from __future__ import annotations

from . import cluster, histogram, sampling
from .errors import ParameterError
from .fit import FitResult, fit_palette
from .params import QuantizeParams
from .readers import ImageSource


def _merge_tree(parts: list, fan_in: int = 8):
    import dask

    level = list(parts)
    while len(level) > 1:
        level = [dask.delayed(histogram.merge_histograms)(*level[i:i + fan_in])
                 for i in range(0, len(level), fan_in)]
    return level[0]


def fit_shared(sources, params: QuantizeParams | None = None, *, max_pixels: int | None = None,
               address: str | None = None, progress: bool = False) -> FitResult:
    """Fit one palette on several images together.

    Parameters
    ----------
    sources : sequence of str, path-like or ImageSource
        The images; their order only affects how the sample is split (ties).
    params : QuantizeParams, optional
        ``k``, ``seed``, ``sample_size`` (the total over all images), ``chunk``,
        ``restarts``, ``max_iter``, ``background``.
    max_pixels : int, optional, keyword-only
        Pixel limit applied to each image's header.
    address : str, optional, keyword-only
        Dask scheduler address; default ``$DASK_SCHEDULER_ADDRESS`` or local threads.
    progress : bool, keyword-only

    Returns
    -------
    FitResult
        ``sse``/``n_pixels``/``n_unique`` are over all images together.

    Raises
    ------
    ParameterError
        If ``sources`` is empty.
    InputError
        If any source cannot be read.
    """
    from .pipeline import _image, inspect

    params = params or QuantizeParams()
    srcs = [s if isinstance(s, ImageSource) else inspect(s, max_pixels=max_pixels)
            for s in sources]
    if not srcs:
        raise ParameterError("no images to fit a shared palette on")
    images = [_image(s, params, max_pixels) for s in srcs]
    shares = sampling.allocate([s.n_pixels for s in srcs], params.sample_size)
    hist = _merge_tree([histogram.colour_histogram(im) for im in images])
    samples = [sampling.sample_pixels(im, n, seed=params.seed)
               for im, n in zip(images, shares) if n > 0]
    import dask
    import numpy as np

    sample = dask.delayed(np.concatenate)(samples, axis=0)
    with cluster.scheduler(address):
        (colours, counts), sample = cluster.compute(hist, sample, progress=progress)
    return fit_palette(sample, colours, counts, params.k, seed=params.seed,
                       restarts=params.restarts, max_iter=params.max_iter)
