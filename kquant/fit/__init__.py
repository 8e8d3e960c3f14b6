"""Fitting palettes: K-means on colour histograms (:mod:`kquant.fit.driver`).

* :mod:`~kquant.fit.driver` -- seed -> swap -> finalists -> refine -> polish;
* :mod:`~kquant.fit.kmeans` -- k-means++, Lloyd, bounded Lloyd, swaps, integer polish;
* :mod:`~kquant.fit.cells` -- coarse histograms (colours merged into cells);
* :mod:`~kquant.fit.histograms` -- the dense and compact forms behind one interface;
* :mod:`~kquant.fit.compact` -- compiled kernels over millions of colour codes;
* :mod:`~kquant.fit.dask_ml` -- dask-ml's KMeans on the pixel sample, guarded;
* :mod:`~kquant.fit.target_psnr` -- the smallest K that reaches a PSNR;
* :mod:`~kquant.fit.tuning` -- every tuning constant.
"""

from kquant.fit.cells import coarse_histogram
from kquant.fit.dask_ml import fit_sample, prepare_sample_fit
from kquant.fit.driver import SAMPLE_FIT_MODES, FitResult, finalist_threads, fit_palette
from kquant.fit.kmeans import integer_polish, kmeans_plusplus, lloyd, lloyd_bounded, swap_moves
from kquant.fit.target_psnr import fit_for_psnr, sse_for_psnr

__all__ = [
    "SAMPLE_FIT_MODES",
    "FitResult",
    "coarse_histogram",
    "finalist_threads",
    "fit_for_psnr",
    "fit_palette",
    "fit_sample",
    "integer_polish",
    "kmeans_plusplus",
    "lloyd",
    "lloyd_bounded",
    "prepare_sample_fit",
    "sse_for_psnr",
    "swap_moves",
]
