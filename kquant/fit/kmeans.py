"""Weighted K-means kernels on points with weights (colours with their pixel counts).

* :func:`kmeans_plusplus` -- weighted greedy k-means++ seeding;
* :func:`lloyd` -- weighted Lloyd until no assignment changes (or a relative gain);
* :func:`lloyd_bounded` -- the same assignments with Hamerly's bounds, less work;
* :func:`swap_moves` -- merge/split swaps that keep only improvements;
* :func:`integer_polish` -- Lloyd in integers (exact nearest entry, rounded means);
* :func:`space_polish` -- the same for centres fitted in a perceptual space.

On a colour histogram (unique colours weighted by their counts) Lloyd makes exactly the
assignments and centres of Lloyd on every pixel.
"""

from __future__ import annotations

import math

import numpy as np

from kquant import jit
from kquant.fit import tuning
from kquant.label import assign


def _labels_and_dist(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre (float64 distances) and squared distance, slab by slab."""
    c = np.asarray(centers, np.float64)
    norms = (c * c).sum(axis=1)
    labels = np.empty(len(x), np.intp)
    dist = np.empty(len(x), np.float64)
    for s in range(0, len(x), tuning.SLAB_ROWS):
        xs = x[s : s + tuning.SLAB_ROWS]
        d = norms - 2.0 * np.einsum("ij,kj->ik", xs, c)
        lab = d.argmin(axis=1)
        labels[s : s + tuning.SLAB_ROWS] = lab
        dist[s : s + tuning.SLAB_ROWS] = np.maximum(
            d[np.arange(len(xs)), lab] + (xs * xs).sum(axis=1), 0.0
        )
    return labels, dist


def _assign_pass(x, w, centers):
    """:func:`_assign_pass_py` compiled on first use (:mod:`kquant.jit`: the small-image
    path never imports numba)."""
    return jit.compiled(_assign_pass_py)(x, w, centers)


def _assign_pass_py(x, w, centers):  # pragma: no cover - compiled
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


def _repair_empty(
    centers: np.ndarray, mass: np.ndarray, x: np.ndarray, w: np.ndarray, dist: np.ndarray
) -> bool:
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


def kmeans_plusplus(
    x: np.ndarray,
    w: np.ndarray,
    k: int,
    *,
    seed: int | np.random.Generator,
    n_local_trials: int | None = None,
) -> np.ndarray:
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
    diff0 = x - centers[0]
    closest = np.einsum("ij,ij->i", diff0, diff0)
    pot = float(np.dot(w, closest))
    xt = np.ascontiguousarray(x.T)  # channels as rows: the differences vectorise along points
    for c in range(1, k):
        if pot <= 0:  # fewer distinct points than centres: duplicate the first
            centers[c:] = centers[0]
            break
        cum = np.cumsum(w * closest)
        cand = np.searchsorted(cum, rng.random(trials) * cum[-1], side="right")
        cand = np.minimum(cand, n - 1)
        diff = xt[None, :, :] - x[cand][:, :, None]  # (trials, 3, n)
        np.multiply(diff, diff, out=diff)
        # (d0^2 + d2^2) + d1^2: the sum einsum("tij,tij->ti") makes, bit for bit
        d = diff[:, 0] + diff[:, 2]
        d += diff[:, 1]
        d = np.minimum(closest[None, :], d)
        pots = d @ w
        best = int(np.argmin(pots))
        centers[c] = x[cand[best]]
        closest, pot = d[best], float(pots[best])
    return centers


def lloyd(
    x: np.ndarray, w: np.ndarray, centers: np.ndarray, *, max_iter: int = 300, rtol: float = 0.0
):
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
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - the count is returned
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
        lab = assign.nearest(xi, pal, blas=True)
        diff = np.take(pal.astype(np.int64), lab, axis=0)
        np.subtract(xi, diff, out=diff)
        return lab, int(np.dot(wi, np.einsum("ij,ij->i", diff, diff)))

    pal = np.clip(np.rint(centers), 0, 255).astype(np.uint8)
    labels, sse = cost(pal)
    xf, wf = xi.astype(np.float64), wi.astype(np.float64)
    for _ in range(max_iter):
        sums, mass = _weighted_means(xf, wf, labels, k)
        new = pal.astype(np.float64)
        nonempty = mass > 0
        new[nonempty] = sums[nonempty] / mass[nonempty, None]
        if not nonempty.all():  # the errors are only needed to repair empty clusters
            diff = np.take(pal.astype(np.int64), labels, axis=0)
            np.subtract(xi, diff, out=diff)
            _repair_empty(new, mass, xf, wf, (diff * diff).sum(axis=1).astype(np.float64))
        new = np.clip(np.rint(new), 0, 255).astype(np.uint8)
        if np.array_equal(new, pal):
            break
        new_labels, new_sse = cost(new)
        if new_sse >= sse:
            break
        pal, labels, sse = new, new_labels, new_sse
    return pal, labels, sse


def _sq_dist(xt: np.ndarray, ct: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Squared distance of each point to centre ``lab``, from channel rows (3, n) and (3, k).

    The sum is ``(d0^2 + d2^2) + d1^2``: bit for bit what ``einsum("ij,ij->i")`` makes
    of the (n, 3) differences, ~3x faster.
    """
    g = ct.take(lab, axis=1)
    np.subtract(xt, g, out=g)
    np.multiply(g, g, out=g)
    d = g[0] + g[2]
    d += g[1]
    return d


def _two_nearest(x: np.ndarray, centers: np.ndarray, xt: np.ndarray | None = None):
    """Nearest and second-nearest centre of each point, with squared distances.

    The two centres are chosen on float32 distances (half the memory traffic);
    the returned distances are recomputed in float64 from the points (``xt``: the
    points as channel rows, ``x.T`` contiguous, if the caller has it).
    """
    c = np.asarray(centers, np.float64)
    c32 = c.astype(np.float32)
    norms = (c32 * c32).sum(axis=1)
    twice = (2.0 * c32).T
    n, k = len(x), len(c)
    if n <= tuning.SLAB_ROWS:  # one slab (the common case: Lloyd's candidates)
        d = x.astype(np.float32) @ twice
        np.subtract(norms, d, out=d)
        lab = d.argmin(axis=1)
        if k > 1:
            d[np.arange(n), lab] = np.inf
            second = d.argmin(axis=1)
    else:
        lab = np.empty(n, np.intp)
        second = np.empty(n, np.intp)
    for s in range(0, n if n > tuning.SLAB_ROWS else 0, tuning.SLAB_ROWS):
        xs = x[s : s + tuning.SLAB_ROWS].astype(np.float32)
        d = xs @ twice
        np.subtract(norms, d, out=d)
        a = d.argmin(axis=1)
        lab[s : s + tuning.SLAB_ROWS] = a
        if k > 1:
            d[np.arange(len(a)), a] = np.inf
            second[s : s + tuning.SLAB_ROWS] = d.argmin(axis=1)
    xt = np.ascontiguousarray(x.T) if xt is None else xt
    ct = np.ascontiguousarray(c.T)
    d1 = _sq_dist(xt, ct, lab)
    if k > 1:
        d2 = _sq_dist(xt, ct, second)
    else:
        d2 = np.full(n, np.inf)
    return lab, d1, np.maximum(d2, d1)


def lloyd_bounded(x: np.ndarray, w: np.ndarray, centers: np.ndarray, *, max_iter: int = 300):
    """Weighted Lloyd with Hamerly's bounds: the assignments of :func:`lloyd`, less work.

    Each point keeps an upper bound on the distance to its centre and a lower
    bound on the distance to any other; after the centres move, only points
    whose bounds overlap are re-assigned, and the cluster sums are updated by
    the points that changed cluster only. The stopping rule is that of
    :func:`lloyd` (the assignment no longer changes); the final centres are
    recomputed exactly from the final assignment.

    Returns
    -------
    centers : ndarray (k, 3) float64
    labels : ndarray (n,) intp
    inertia : float
    n_iter : int
    """
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    c = np.array(centers, np.float64, copy=True)
    k = len(c)
    wxw = np.empty((4, len(x)))  # rows: weight, then weighted coordinates (contiguous)
    wxw[0] = w
    np.multiply(x.T, w, out=wxw[1:])
    xt = np.ascontiguousarray(x.T)
    lab, d1, d2 = _two_nearest(x, c, xt)
    u, lo = np.sqrt(d1), np.sqrt(d2)
    rows = np.arange(4)[:, None]

    def exact_sums(lab):
        mass = np.bincount(lab, weights=w, minlength=k)
        sums = np.stack([np.bincount(lab, weights=wxw[1 + j], minlength=k) for j in range(3)], 1)
        return sums, mass

    def moved_sums(clusters, points):
        """Per cluster: weight and weighted coordinates of ``points`` (in point order, as
        four bincounts would add them, in one)."""
        keys = (clusters * 4 + rows).ravel()
        return np.bincount(keys, weights=wxw.take(points, axis=1).ravel(), minlength=4 * k).reshape(
            k, 4
        )

    sums, mass = exact_sums(lab)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        nonempty = mass > 0
        if nonempty.all():
            new = sums / mass[:, None]
        else:
            new = c.copy()
            new[nonempty] = sums[nonempty] / mass[nonempty, None]
        if not nonempty.all():  # repair, then start the bounds afresh
            _repair_empty(new, mass, x, w, u * u)
            c = new
            new_lab, d1, d2 = _two_nearest(x, c, xt)
            u, lo = np.sqrt(d1), np.sqrt(d2)
            changed = not np.array_equal(new_lab, lab)
            lab = new_lab
            sums, mass = exact_sums(lab)
            if not changed:
                break
            continue
        delta = np.sqrt(((new - c) ** 2).sum(axis=1))
        c = new
        if not delta.any():
            break
        big = int(np.argmax(delta))  # in a tie, either: then second == delta[big]
        second = np.partition(delta, k - 2)[k - 2] if k > 1 else 0.0
        # every other centre moved at most delta[big] (second for points of big's cluster)
        drop = np.full(k, delta[big])
        drop[big] = second
        u += delta.take(lab)
        lo -= drop.take(lab)
        slack = 1.0 + u  # candidates: u >= lo - 1e-3 (1 + u), with fewer temporaries
        slack *= 1e-3
        np.subtract(lo, slack, out=slack)
        cand = np.flatnonzero(u >= slack)
        if not len(cand):
            break
        nl, nd1, nd2 = _two_nearest(x[cand], c, xt.take(cand, axis=1))
        old = lab[cand]
        moved = nl != old
        u[cand], lo[cand] = np.sqrt(nd1), np.sqrt(nd2)
        if not moved.any():
            break
        idx, src, dst = cand[moved], old[moved], nl[moved]
        lab[idx] = dst
        out, into = moved_sums(src, idx), moved_sums(dst, idx)
        mass -= out[:, 0]
        mass += into[:, 0]
        sums -= out[:, 1:]
        sums += into[:, 1:]
        if n_iter % 16 == 0:  # bound the drift of the running sums
            sums, mass = exact_sums(lab)
    sums, mass = exact_sums(lab)
    nonempty = mass > 0
    c[nonempty] = sums[nonempty] / mass[nonempty, None]
    inertia = float(np.dot(w, _sq_dist(xt, np.ascontiguousarray(c.T), lab)))
    return c, lab, inertia, n_iter


def swap_moves(
    x: np.ndarray,
    w: np.ndarray,
    centers: np.ndarray,
    inertia: float,
    *,
    trials: int,
    seed,
    max_iter: int = 300,
    trial_iter: int | None = None,
):
    """Improve a Lloyd solution by merge/split swaps, keeping only improvements.

    Each trial removes one of the three centres whose removal costs least (their
    points would move to their second-nearest centre) and re-inserts it inside
    one of the three clusters with the largest error, at a point drawn in
    proportion to its cost there; Lloyd then runs (to convergence, or for
    ``trial_iter`` iterations) and the swap is kept if the inertia dropped.

    Returns
    -------
    centers : ndarray (k, 3) float64
    inertia : float
    accepted : int
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    k = len(centers)
    accepted = 0
    lab, d1, d2 = _two_nearest(x, centers)
    for _ in range(trials):
        removal = np.bincount(lab, weights=w * (d2 - d1), minlength=k)
        sse = np.bincount(lab, weights=w * d1, minlength=k)
        j = int(rng.choice(np.argsort(removal, kind="stable")[: min(3, k)]))
        sse[j] = -1.0
        tgt = int(rng.choice(np.argsort(-sse, kind="stable")[: min(3, k - 1)]))
        idx = np.flatnonzero(lab == tgt)
        p = w[idx] * d1[idx]
        if not len(idx) or p.sum() <= 0:
            continue
        trial = centers.copy()
        trial[j] = x[idx[rng.choice(len(idx), p=p / p.sum())]]
        c2, _, in2, _ = lloyd_bounded(x, w, trial, max_iter=min(max_iter, trial_iter or max_iter))
        if in2 < inertia * (1 - 1e-9):
            centers, inertia = c2, in2
            accepted += 1
            lab, d1, d2 = _two_nearest(x, centers)
    return centers, inertia, accepted


def space_polish(
    rgb: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    centers: np.ndarray,
    space: str,
    *,
    max_iter: int = 10,
):
    """Round perceptual centres to uint8 RGB and continue Lloyd while the perceptual error drops.

    Returns
    -------
    palette : ndarray (k, 3) uint8
    labels : ndarray (n,) uint8, nearest entry in ``space``
    sse : int, RGB sum of squared errors of that assignment
    """
    from kquant.colour import spaces

    k = len(centers)

    def state(pal):
        pc = spaces.from_rgb(pal, space)
        lab, dist = _labels_and_dist(x, pc)
        return lab, float(np.dot(w, dist))

    pal = np.clip(np.rint(spaces.to_rgb(centers, space)), 0, 255).astype(np.uint8)
    labels, cost = state(pal)
    for _ in range(max_iter):
        sums, mass = _weighted_means(x, w, labels, k)
        new = spaces.from_rgb(pal, space)
        nonempty = mass > 0
        new[nonempty] = sums[nonempty] / mass[nonempty, None]
        new = np.clip(np.rint(spaces.to_rgb(new, space)), 0, 255).astype(np.uint8)
        if np.array_equal(new, pal):
            break
        new_labels, new_cost = state(new)
        if new_cost >= cost:
            break
        pal, labels, cost = new, new_labels, new_cost
    diff = np.asarray(rgb, np.int64) - pal.astype(np.int64)[labels]
    sse = int(np.dot(np.asarray(w, np.int64), np.einsum("ij,ij->i", diff, diff)))
    return pal, labels.astype(np.uint8), sse
