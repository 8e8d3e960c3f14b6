"""K-means kernels over histograms of millions of distinct colours, in compact memory.

The exact fit of a gigapixel photo runs on its colour histogram: ~10**7 distinct colours.
Working arrays of float64 coordinates, labels and distances per colour cost ~150 bytes
per colour (1.5 GiB); these compiled kernels read the colours as their uint32 codes and
the counts as they are, and keep nothing per colour: each Lloyd pass returns the cluster
sums, masses and the inertia only. Passes run in threads over slices of the histogram
(the kernels release the GIL).

* :func:`cells` -- the colours merged into cells of ``bits`` bits per channel at their
  weighted means (what :func:`kquant.fit.coarse_histogram` computes, by counting);
* :func:`lloyd` -- weighted Lloyd until an iteration gains less than ``rtol``;
* :func:`integer_polish` -- Lloyd in integers (exact nearest entry, ties to the lowest
  index: the labels the write pass gives) while the exact error drops.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from kquant.jit import compiled
from kquant.label import cell_candidates


def _cells_py(codes, counts, bits, heavy, fine_bits, w, s, wf, sf):  # pragma: no cover
    sh = 8 - bits
    fsh = 8 - fine_bits
    for i in range(codes.shape[0]):
        c = np.int64(codes[i])
        r = c >> 16
        g = (c >> 8) & 255
        b = c & 255
        n = np.float64(counts[i])
        cell = ((r >> sh) << (2 * bits)) | ((g >> sh) << bits) | (b >> sh)
        if heavy.shape[0] and heavy[cell]:
            cell = ((r >> fsh) << (2 * fine_bits)) | ((g >> fsh) << fine_bits) | (b >> fsh)
            wf[cell] += n
            sf[cell, 0] += n * r
            sf[cell, 1] += n * g
            sf[cell, 2] += n * b
        else:
            w[cell] += n
            s[cell, 0] += n * r
            s[cell, 1] += n * g
            s[cell, 2] += n * b


def _pass_py(codes, counts, centers, cand, ncand, lo, hi, sums, mass, worst):  # pragma: no cover
    """Nearest centre of codes[lo:hi] (among its cell's candidates): cluster sums and
    masses (added), inertia, and the colour of largest weighted cost (for repairing an
    empty cluster)."""
    inertia = 0.0
    worst_cost = -1.0
    sh = cell_candidates.SHIFT
    per = 8 - sh
    for i in range(lo, hi):
        c = np.int64(codes[i])
        ri = c >> 16
        gi = (c >> 8) & 255
        bi = c & 255
        cell = ((ri >> sh) << (2 * per)) | ((gi >> sh) << per) | (bi >> sh)
        r = np.float64(ri)
        g = np.float64(gi)
        b = np.float64(bi)
        best = 0
        best_d = np.inf
        for t in range(ncand[cell]):
            j = cand[cell, t]
            dr = r - centers[j, 0]
            dg = g - centers[j, 1]
            db = b - centers[j, 2]
            d = dr * dr + dg * dg + db * db
            if d < best_d:  # strict, in index order: ties keep the lowest index
                best_d = d
                best = j
        n = np.float64(counts[i])
        mass[best] += n
        sums[best, 0] += n * r
        sums[best, 1] += n * g
        sums[best, 2] += n * b
        cost = n * best_d
        inertia += cost
        if cost > worst_cost:
            worst_cost = cost
            worst[0] = i
    return inertia


def cells(
    codes: np.ndarray, counts: np.ndarray, bits: int, *, heavy: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Colours merged into cells of ``bits`` bits per channel, each at its weighted mean.

    Parameters
    ----------
    codes : ndarray of uint32
        Colour codes ``R<<16 | G<<8 | B`` (see :mod:`kquant.histogram`).
    counts : ndarray of int
        Pixels of each colour.
    bits : int
        Bits per channel of the cells, 1 to 7.
    heavy : float, optional, keyword-only
        Cells holding more than this fraction of the pixels are split into cells of
        ``bits + 2`` bits (as :func:`kquant.fit.coarse_histogram`).

    Returns
    -------
    points : ndarray (m, 3) float64
    weights : ndarray (m,) float64
    """
    kernel = compiled(_cells_py)
    bits = int(bits)
    codes = np.ascontiguousarray(codes, np.uint32)
    counts = np.ascontiguousarray(counts)
    fine = min(8, bits + 2)
    w = np.zeros(1 << (3 * bits), np.float64)
    s = np.zeros((1 << (3 * bits), 3), np.float64)
    none = np.zeros(0, np.bool_)
    kernel(codes, counts, bits, none, fine, w, s, w[:0], s[:0])
    if heavy is not None and w.max() > heavy * w.sum():
        mask = w > heavy * w.sum()
        w[:] = 0.0
        s[:] = 0.0
        wf = np.zeros(1 << (3 * fine), np.float64)
        sf = np.zeros((1 << (3 * fine), 3), np.float64)
        kernel(codes, counts, bits, mask, fine, w, s, wf, sf)
        w, s = np.concatenate([w, wf]), np.concatenate([s, sf])
    occupied = np.flatnonzero(w)
    return s[occupied] / w[occupied, None], w[occupied]


def _threads(n: int) -> int:
    return max(1, min(os.cpu_count() or 1, n // (1 << 20) or 1))


def assign_pass(
    codes: np.ndarray, counts: np.ndarray, centers: np.ndarray, occupied: np.ndarray | None = None
):
    """One pass: per-cluster weighted sums and masses, the inertia, and the costliest colour.

    Each colour tries only the centres that can be nearest in its cell of 8x8x8 colours
    (5 on average at K=256 on a photo mosaic): the same result as trying all of them.
    ``occupied`` (:func:`kquant.nearcells.occupied_cells` of ``codes``, computed here if not
    given) limits that work to the cells that hold colours.

    Returns
    -------
    sums : ndarray (k, 3) float64
    mass : ndarray (k,) float64
    inertia : float
    worst : int
        Index of the colour with the largest weighted squared distance.
    """
    kernel = compiled(_pass_py)
    centers = np.ascontiguousarray(centers, np.float64)
    k, n = len(centers), len(codes)
    cand, ncand = cell_candidates.candidates(
        centers, cell_candidates.occupied_cells(codes) if occupied is None else occupied
    )
    t = _threads(n)
    bounds = np.linspace(0, n, t + 1).astype(np.int64)
    sums = np.zeros((t, k, 3))
    mass = np.zeros((t, k))
    worst = np.zeros((t, 1), np.int64)
    inertia = np.zeros(t)

    def run(i):
        inertia[i] = kernel(
            codes,
            counts,
            centers,
            cand,
            ncand,
            bounds[i],
            bounds[i + 1],
            sums[i],
            mass[i],
            worst[i],
        )

    if t == 1:
        run(0)
    else:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(t)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    # the costliest colour overall: recompute each slice's candidate's cost
    cand = worst[:, 0]
    rgb = np.stack(
        [(codes[cand] >> 16) & 255, (codes[cand] >> 8) & 255, codes[cand] & 255], 1
    ).astype(np.float64)
    d = ((rgb[:, None, :] - centers[None]) ** 2).sum(axis=2).min(axis=1) * counts[cand]
    return sums.sum(axis=0), mass.sum(axis=0), float(inertia.sum()), int(cand[np.argmax(d)])


def _rgb(code: int) -> np.ndarray:
    return np.array([(code >> 16) & 255, (code >> 8) & 255, code & 255], np.float64)


def _update(centers, sums, mass, codes, worst):
    """Centres at their clusters' means; an empty cluster moves onto the costliest colour."""
    new = centers.copy()
    nonempty = mass > 0
    new[nonempty] = sums[nonempty] / mass[nonempty, None]
    empty = np.flatnonzero(~nonempty)
    if len(empty):
        new[empty[0]] = _rgb(int(codes[worst]))
    return new


def lloyd(
    codes: np.ndarray,
    counts: np.ndarray,
    centers: np.ndarray,
    *,
    max_iter: int = 300,
    rtol: float = 1e-5,
):
    """Weighted Lloyd on the histogram until an iteration gains less than ``rtol``.

    Returns
    -------
    centers : ndarray (k, 3) float64
    inertia : float
        Of the returned centres.
    n_iter : int
    """
    c = np.array(centers, np.float64, copy=True)
    occupied = cell_candidates.occupied_cells(codes)
    sums, mass, inertia, worst = assign_pass(codes, counts, c, occupied)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        new = _update(c, sums, mass, codes, worst)
        n_sums, n_mass, n_inertia, n_worst = assign_pass(codes, counts, new, occupied)
        if n_inertia > inertia:  # (only by rounding) keep the better
            break
        gain = inertia - n_inertia
        c, sums, mass, inertia, worst = new, n_sums, n_mass, n_inertia, n_worst
        if gain <= rtol * inertia:
            break
    return c, inertia, n_iter


def integer_polish(
    codes: np.ndarray, counts: np.ndarray, centers: np.ndarray, *, max_iter: int = 50
):
    """Round centres to uint8 and continue Lloyd in integers while the exact error drops.

    Returns
    -------
    palette : ndarray (k, 3) uint8
    sse : int
        Exact sum of squared channel errors of the image with that palette.
    use : ndarray (k,) float64
        Pixels per entry.
    """
    pal = np.clip(np.rint(centers), 0, 255).astype(np.uint8)
    occupied = cell_candidates.occupied_cells(codes)
    sums, mass, sse, worst = assign_pass(codes, counts, pal.astype(np.float64), occupied)
    for _ in range(max_iter):
        new = np.clip(
            np.rint(_update(pal.astype(np.float64), sums, mass, codes, worst)), 0, 255
        ).astype(np.uint8)
        if np.array_equal(new, pal):
            break
        n_sums, n_mass, n_sse, n_worst = assign_pass(
            codes, counts, new.astype(np.float64), occupied
        )
        if n_sse >= sse:
            break
        pal, sums, mass, sse, worst = new, n_sums, n_mass, n_sse, n_worst
    return pal, int(round(sse)), mass
