"""dask-ml's scalable KMeans on the pixel sample, guarded against its defects on the pinned
version (see :func:`fit_sample`); one of the fit's seedings for large images."""

from __future__ import annotations

import numpy as np

from kquant.colour import histogram
from kquant.fit import tuning
from kquant.fit.kmeans import _labels_and_dist, _repair_empty, kmeans_plusplus


def fit_sample(
    sample: np.ndarray,
    k: int,
    *,
    seed: int,
    max_iter: int = 50,
    tol: float = 1e-4,
    init: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Fit dask-ml's KMeans on a pixel sample, guarding its defects.

    * ``init`` is an array from :func:`kmeans_plusplus` (dask-ml's k-means++
      calls a private scikit-learn function that changed; its k-means|| is slow);
    * ``tol`` is made relative to the sample's variance, as in scikit-learn
      (dask-ml compares it with the absolute squared centre shift);
    * empty clusters (which dask-ml turns into black centres) are repaired;
    * the inertia is recomputed as a sum of *squared* distances (dask-ml
      reports unsquared ones).

    ``init`` overrides the k-means++ seeding (an array of k centres).

    Returns
    -------
    centers : ndarray (k, 3) float64
    inertia : float
    """
    import dask
    import dask.array as da

    KMeans = _dask_ml_kmeans()
    sample = np.asarray(sample, np.uint8)
    if len(sample) > tuning.SAMPLE_FIT_MAX:  # a seeding: a bounded subsample is enough
        pick = np.random.default_rng([seed, 4]).choice(
            len(sample), tuning.SAMPLE_FIT_MAX, replace=False
        )
        sample = sample[np.sort(pick)]
    x = np.asarray(sample, np.float64)
    codes, counts = np.unique(histogram.encode(sample), return_counts=True)
    ux = histogram.decode(codes).astype(np.float64)
    if init is None:
        init = kmeans_plusplus(ux, counts, k, seed=np.random.default_rng([seed, 1]))
    init = np.asarray(init, np.float64)
    if len(ux) <= k:
        return init, 0.0
    tol_abs = tol * float(np.mean(np.var(x, axis=0)))
    # one chunk: dask-ml's Lloyd runs a few tasks per iteration, not twice as many (the
    # same centres on the 1 Gpx sample; K=256: 2.7 -> 2.1-2.3 s)
    xd = da.from_array(x, chunks=(len(x), 3))
    km = KMeans(n_clusters=k, init=init, max_iter=max_iter, tol=tol_abs, random_state=seed)
    # a sample is small: fit it in this thread, whatever scheduler the caller has around
    with dask.config.set(scheduler="sync"):
        km.fit(xd)
    centers = np.asarray(km.cluster_centers_, np.float64)
    labels, dist = _labels_and_dist(x, centers)
    mass = np.bincount(labels, minlength=k).astype(np.float64)
    if _repair_empty(centers, mass, x, np.ones(len(x)), dist):
        labels, dist = _labels_and_dist(x, centers)
    return centers, float(dist.sum())


def _dask_ml_kmeans():
    """dask-ml's KMeans class, with its numba kernel cached on disk.

    dask-ml compiles ``_centers_dense`` without numba's disk cache, so every process
    paid the compilation; with the cache (beside dask-ml's module, or in numba's
    user-wide cache directory when that is read-only) a later process loads it
    instead. The compiled code is the same.
    """
    from dask_ml.cluster import KMeans, k_means
    from numba.core.caching import NullCache

    kernel = getattr(k_means, "_centers_dense", None)
    if isinstance(getattr(kernel, "_cache", None), NullCache):  # not cached yet
        try:
            kernel.enable_caching()
        except Exception:  # no cache directory anywhere: compile in memory, as before
            pass
    return KMeans


def prepare_sample_fit() -> None:
    """Import dask-ml and compile (or load from numba's disk cache) its kernel now, so
    that :func:`fit_sample` does not pay it later. Results are unaffected."""
    import dask
    import dask.array as da

    KMeans = _dask_ml_kmeans()

    x = da.from_array(np.arange(48, dtype=np.float64).reshape(16, 3), chunks=(8, 3))
    with dask.config.set(scheduler="sync"):
        KMeans(n_clusters=2, init=np.array([[0.0, 1, 2], [45, 46, 47]]), max_iter=2).fit(x)
