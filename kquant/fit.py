"""Palette fitting: dask-ml KMeans on a pixel sample, refined on the exact colour histogram.

The pipeline is

1. **sample fit** -- dask-ml's scalable :class:`dask_ml.cluster.KMeans` on a
   bounded sample of pixels, guarded against its known defects (see
   :func:`fit_sample`);
2. **histogram refinement** -- weighted Lloyd on the image's unique colours
   with their counts (identical to Lloyd on every pixel, at the cost of the
   unique colours), from the sample fit and from ``restarts`` weighted
   k-means++ seedings; the lowest inertia wins;
3. **integer polish** -- the palette is rounded to the nearest uint8 and Lloyd
   continues in integers (exact nearest-entry assignment, rounded means) while
   the true reconstruction error drops.

An image with at most ``k`` colours gets exactly those colours. Everything is
deterministic for a given seed.
"""

from __future__ import annotations

import dataclasses
import math

import numba
import numpy as np

from . import assign, histogram
from .errors import ParameterError

_ROWS = 1 << 16
#: Seedings are compared on at most this many distinct colours.
COMPARE_MAX = 1 << 18
#: Up to this many distinct colours the final Lloyd runs until no assignment changes;
#: above, until an iteration gains less than 1e-5 of the inertia.
FULL_CONVERGENCE_MAX = 1 << 21


@dataclasses.dataclass(frozen=True)
class FitResult:
    """A fitted palette and how it was obtained.

    Attributes
    ----------
    palette : ndarray of uint8, shape (n, 3)
        Palette entries, most used first; ``n <= k``.
    sse : int
        Exact sum of squared channel errors of the image reconstructed with it.
    n_pixels, n_unique : int
        Pixels and distinct colours of the image.
    lossless : bool
        True when the image has at most ``k`` colours (palette = those colours).
    sample_inertia : float or None
        Sum of squared distances of the sample to the dask-ml centres.
    refined_from : str
        ``"sample"`` or ``"restart-i"``: which seeding gave the best refinement.
    mode : str
        ``"exact"`` (refined on the whole image's histogram; ``sse`` is the
        image's) or ``"sample"`` (refined on the sample's histogram; ``sse``,
        ``n_pixels`` and ``n_unique`` are the sample's).
    timings : dict
        Seconds spent per stage.
    """

    palette: np.ndarray
    sse: int
    n_pixels: int
    n_unique: int
    lossless: bool
    sample_inertia: float | None = None
    refined_from: str = "sample"
    n_iter: int = 0
    mode: str = "exact"
    timings: dict = dataclasses.field(default_factory=dict)

    @property
    def mse(self) -> float:
        return self.sse / (3.0 * self.n_pixels) if self.n_pixels else 0.0


# --------------------------------------------------------------------------- weighted kernels

def _labels_and_dist(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre (float64 distances) and squared distance, slab by slab."""
    c = np.asarray(centers, np.float64)
    norms = (c * c).sum(axis=1)
    labels = np.empty(len(x), np.intp)
    dist = np.empty(len(x), np.float64)
    for s in range(0, len(x), _ROWS):
        xs = x[s:s + _ROWS]
        d = norms - 2.0 * np.einsum("ij,kj->ik", xs, c)
        lab = d.argmin(axis=1)
        labels[s:s + _ROWS] = lab
        dist[s:s + _ROWS] = np.maximum(d[np.arange(len(xs)), lab] + (xs * xs).sum(axis=1), 0.0)
    return labels, dist


@numba.njit(nogil=True, cache=True)
def _assign_pass(x, w, centers):  # pragma: no cover - compiled
    """Nearest centre, squared distance, and the weighted sums and mass of each cluster."""
    n, k = x.shape[0], centers.shape[0]
    labels = np.empty(n, np.intp)
    dist = np.empty(n, np.float64)
    sums = np.zeros((k, 3), np.float64)
    mass = np.zeros(k, np.float64)
    for i in range(n):
        x0, x1, x2 = x[i, 0], x[i, 1], x[i, 2]
        best = 0
        best_d = np.inf
        for j in range(k):
            d0 = x0 - centers[j, 0]
            d1 = x1 - centers[j, 1]
            d2 = x2 - centers[j, 2]
            d = d0 * d0 + d1 * d1 + d2 * d2
            if d < best_d:
                best_d = d
                best = j
        labels[i] = best
        dist[i] = best_d
        wi = w[i]
        mass[best] += wi
        sums[best, 0] += wi * x0
        sums[best, 1] += wi * x1
        sums[best, 2] += wi * x2
    return labels, dist, sums, mass


def _weighted_means(x: np.ndarray, w: np.ndarray, labels: np.ndarray, k: int):
    mass = np.bincount(labels, weights=w, minlength=k)
    sums = np.stack([np.bincount(labels, weights=w * x[:, j], minlength=k) for j in range(3)], 1)
    return sums, mass


def _repair_empty(centers: np.ndarray, mass: np.ndarray, x: np.ndarray, w: np.ndarray,
                  dist: np.ndarray) -> bool:
    """Move centres of empty clusters onto the colours that cost most (in place)."""
    empty = np.flatnonzero(mass <= 0)
    if not len(empty):
        return False
    cost = w * dist
    order = np.argsort(-cost, kind="stable")
    taken = 0
    for e in empty:
        if taken >= len(order):
            break
        centers[e] = x[order[taken]]
        taken += 1
    return True


def kmeans_plusplus(x: np.ndarray, w: np.ndarray, k: int, *, seed: int | np.random.Generator,
                    n_local_trials: int | None = None) -> np.ndarray:
    """Weighted greedy k-means++ seeding (as scikit-learn's, with sample weights).

    Parameters
    ----------
    x : ndarray, shape (n, 3)
        Points (colours).
    w : ndarray, shape (n,)
        Non-negative weights (pixel counts).
    k : int
        Number of centres.
    seed : int or Generator, keyword-only

    Returns
    -------
    ndarray of float64, shape (k, 3)
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n = len(x)
    trials = n_local_trials or 2 + int(math.log(k))
    centers = np.empty((k, x.shape[1]), np.float64)
    first = rng.choice(n, p=w / w.sum())
    centers[0] = x[first]
    closest = ((x - centers[0]) ** 2).sum(axis=1)
    pot = float(np.dot(w, closest))
    for c in range(1, k):
        if pot <= 0:  # fewer distinct points than centres: duplicate the first
            centers[c:] = centers[0]
            break
        cum = np.cumsum(w * closest)
        cand = np.searchsorted(cum, rng.random(trials) * cum[-1], side="right")
        cand = np.minimum(cand, n - 1)
        d = ((x[None, :, :] - x[cand][:, None, :]) ** 2).sum(axis=2)
        d = np.minimum(closest[None, :], d)
        pots = d @ w
        best = int(np.argmin(pots))
        centers[c] = x[cand[best]]
        closest, pot = d[best], float(pots[best])
    return centers


def lloyd(x: np.ndarray, w: np.ndarray, centers: np.ndarray, *, max_iter: int = 300,
          rtol: float = 0.0):
    """Weighted Lloyd iterations until the assignment no longer changes.

    With ``rtol > 0`` it also stops once an iteration lowers the inertia by less
    than ``rtol`` of it (used to compare seedings before running the best one
    to convergence).

    On the colour histogram (``x`` = unique colours, ``w`` = their counts) this
    makes exactly the assignments and centres of Lloyd on every pixel. Empty
    clusters are moved onto the costliest colours.

    Returns
    -------
    centers : ndarray (k, 3) float64
    labels : ndarray (n,) intp
    inertia : float
        Weighted sum of squared distances.
    n_iter : int
    """
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    centers = np.array(centers, np.float64, copy=True)
    x = np.ascontiguousarray(x)
    labels, dist, sums, mass = _assign_pass(x, w, centers)
    inertia = float(np.dot(w, dist))
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        nonempty = mass > 0
        centers[nonempty] = sums[nonempty] / mass[nonempty, None]
        _repair_empty(centers, mass, x, w, dist)
        new_labels, dist, sums, mass = _assign_pass(x, w, centers)
        previous, inertia = inertia, float(np.dot(w, dist))
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        if rtol and previous - inertia < rtol * previous:
            break
    return centers, labels, inertia, n_iter


# --------------------------------------------------------------------------- stages

def fit_sample(sample: np.ndarray, k: int, *, seed: int, max_iter: int = 50,
               tol: float = 1e-4, init: np.ndarray | None = None) -> tuple[np.ndarray, float]:
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
    from dask_ml.cluster import KMeans

    x = np.asarray(sample, np.float64)
    codes, counts = np.unique(histogram.encode(np.asarray(sample, np.uint8)), return_counts=True)
    ux = histogram.decode(codes).astype(np.float64)
    if init is None:
        init = kmeans_plusplus(ux, counts, k, seed=np.random.default_rng([seed, 1]))
    init = np.asarray(init, np.float64)
    if len(ux) <= k:
        return init, 0.0
    tol_abs = tol * float(np.mean(np.var(x, axis=0)))
    xd = da.from_array(x, chunks=(32768, 3))
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


def integer_polish(x: np.ndarray, w: np.ndarray, centers: np.ndarray, *, max_iter: int = 50):
    """Round centres to uint8 and continue Lloyd in integers while the error drops.

    For a fixed assignment the nearest integer to each channel's mean is the
    best integer centre; assignment is exact (:func:`kquant.assign.nearest`).

    Returns
    -------
    palette : ndarray (k, 3) uint8
    labels : ndarray (n,) uint8
    sse : int
    """
    xi = np.asarray(x, np.int64)
    wi = np.asarray(w, np.int64)
    k = len(centers)

    def cost(pal):
        lab = assign.nearest(xi, pal)
        diff = xi - pal.astype(np.int64)[lab]
        return lab, int(np.dot(wi, (diff * diff).sum(axis=1)))

    pal = np.clip(np.rint(centers), 0, 255).astype(np.uint8)
    labels, sse = cost(pal)
    xf, wf = xi.astype(np.float64), wi.astype(np.float64)
    for _ in range(max_iter):
        sums, mass = _weighted_means(xf, wf, labels, k)
        new = pal.astype(np.float64)
        nonempty = mass > 0
        new[nonempty] = sums[nonempty] / mass[nonempty, None]
        diff = xi - pal.astype(np.int64)[labels]
        _repair_empty(new, mass, xf, wf, (diff * diff).sum(axis=1).astype(np.float64))
        new = np.clip(np.rint(new), 0, 255).astype(np.uint8)
        if np.array_equal(new, pal):
            break
        new_labels, new_sse = cost(new)
        if new_sse >= sse:
            break
        pal, labels, sse = new, new_labels, new_sse
    return pal, labels, sse


def fit_palette(sample: np.ndarray, colours: np.ndarray, counts: np.ndarray, k: int, *,
                seed: int = 0, restarts: int = 4, max_iter: int = 300) -> FitResult:
    """Fit a K-colour palette from a pixel sample and the image's exact histogram.

    Parameters
    ----------
    sample : ndarray of uint8, shape (m, 3)
        Pixels drawn from the image (see :mod:`kquant.sampling`).
    colours : ndarray of uint32
        Unique colour codes of the whole image (see :mod:`kquant.histogram`).
    counts : ndarray of int64
        Pixel count of each colour.
    k : int
        Palette size, 2 to 256.
    seed, restarts, max_iter : int, keyword-only
        Seed of every random choice; extra k-means++ seedings tried on the
        histogram; iteration cap of each Lloyd run.

    Returns
    -------
    FitResult

    Raises
    ------
    ParameterError
        If ``k`` is out of range or the histogram is empty.
    """
    if not 2 <= int(k) <= 256:
        raise ParameterError(f"k must be between 2 and 256, got {k}")
    colours = np.asarray(colours, np.uint32)
    counts = np.asarray(counts, np.int64)
    if not colours.size:
        raise ParameterError("cannot fit a palette to an image with no pixels")
    n_pixels = int(counts.sum())
    rgb = histogram.decode(colours)
    order = np.argsort(-counts, kind="stable")
    if len(colours) <= k:  # lossless: exactly the image's colours, most used first
        return FitResult(palette=rgb[order], sse=0, n_pixels=n_pixels, n_unique=len(colours),
                         lossless=True, refined_from="exact")

    x = rgb.astype(np.float64)
    w = counts.astype(np.float64)
    # seedings are compared on at most COMPARE_MAX colours (a weighted draw from the
    # histogram when it is larger: noisy gigapixel images have tens of millions)
    if len(x) > COMPARE_MAX:
        pick = np.random.default_rng([seed, 4]).choice(len(x), COMPARE_MAX, replace=False,
                                                       p=w / w.sum())
        xs, ws = x[pick], w[pick]
    else:
        xs, ws = x, w
    start, sample_inertia = fit_sample(sample, k, seed=seed)
    seeds = [("sample", start)]
    for r in range(restarts):
        rng = np.random.default_rng([seed, 2, r])
        seeds.append((f"restart-{r}", kmeans_plusplus(xs, ws, k, seed=rng)))

    # compare the seedings on short runs, then run the best one to convergence on every colour
    best = None
    for name, init in seeds:
        centers, _, inertia, _ = lloyd(xs, ws, init, max_iter=max_iter, rtol=1e-4)
        if best is None or inertia < best[0]:
            best = (inertia, name, centers)
    _, name, centers = best
    final_rtol = 0.0 if len(x) <= FULL_CONVERGENCE_MAX else 1e-5
    centers, _, _, n_iter = lloyd(x, w, centers, max_iter=max_iter, rtol=final_rtol)
    pal, labels, sse = integer_polish(x, w, centers)
    use = np.bincount(labels, weights=w, minlength=k)
    pal = pal[np.argsort(-use, kind="stable")]
    return FitResult(palette=pal, sse=int(sse), n_pixels=n_pixels, n_unique=len(colours),
                     lossless=False, sample_inertia=sample_inertia, refined_from=name,
                     n_iter=n_iter)
