"""Coarse histograms: colours merged into cells at their weighted means (seedings run on them)."""

from __future__ import annotations

import numpy as np

from kquant.fit import tuning


def _rank(keys: np.ndarray, size: int) -> np.ndarray:
    """Rank of each key among the distinct keys (0 <= keys < size): ``np.unique``'s
    inverse, by a table of flags instead of a sort when ``size`` is at most tuning.RANK_MAX."""
    if size > tuning.RANK_MAX:
        return np.unique(keys, return_inverse=True)[1]
    present = np.zeros(size, bool)
    present[keys] = True
    occupied = np.flatnonzero(present)
    number = np.empty(size, np.intp)
    number[occupied] = np.arange(len(occupied))
    return number[keys]


def coarse_histogram(
    rgb: np.ndarray,
    counts: np.ndarray,
    *,
    bits: int | None = None,
    coords: np.ndarray | None = None,
    heavy: float | None = None,
):
    """Merge colours into cells of ``bits`` bits per RGB channel, each at its weighted mean.

    For any centre, the cost of a cell's pixels is ``W |m - c|^2`` plus a constant
    (their scatter about the mean ``m``), so K-means on the cells is K-means on
    the pixels with each cell assigned as a whole.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (n, 3)
    counts : ndarray, shape (n,)
    bits : int, optional, keyword-only
        Bits per channel of the cells (default :data:`COARSE_BITS`).
    coords : ndarray (n, 3), optional, keyword-only
        Coordinates to average (default ``rgb``; e.g. OKLab coordinates).
    heavy : float, optional, keyword-only
        Cells holding more than this fraction of the pixels are split into
        cells of ``bits + 2`` bits: a dense region (a dark sky, a white page)
        must be able to hold several centres already at the coarse level.

    Returns
    -------
    points : ndarray (m, 3) float64
    weights : ndarray (m,) float64
    """
    b = int(tuning.COARSE_BITS if bits is None else bits)
    q = np.asarray(rgb, np.int64) >> (8 - b)
    cell = (q[:, 0] << (2 * b)) | (q[:, 1] << b) | q[:, 2]  # lexicographic, dense in 2^(3b)
    cw = np.asarray(counts, np.float64)
    pf = np.asarray(rgb if coords is None else coords, np.float64)
    if b <= 7 and (heavy is None or (1 << (3 * b)) > 2 * len(cell)):
        inv = _rank(cell, 1 << (3 * b))  # few colours for the cells: no dense counters
    elif b <= 7:
        dense = np.bincount(cell, weights=cw, minlength=1 << (3 * b))
        occupied = np.flatnonzero(dense)
        if heavy is None or dense[occupied].max() <= heavy * cw.sum():
            # counting, not sorting: the cells in the order np.unique would give
            w = dense[occupied]
            pts = np.stack(
                [
                    np.bincount(cell, weights=cw * pf[:, j], minlength=1 << (3 * b))[occupied]
                    for j in range(3)
                ],
                1,
            )
            return pts / w[:, None], w
        inv = _rank(cell, 1 << (3 * b))
    else:
        _, inv = np.unique(cell, return_inverse=True)
    if heavy is not None and b < 8:
        w = np.bincount(inv, weights=cw)
        dense = w[inv] > heavy * cw.sum()
        if dense.any():
            fine = min(8, b + 2)
            qf = np.asarray(rgb[dense], np.int64) >> (8 - fine)
            size = (1 << (3 * b)) + (1 << (3 * fine))
            if size <= tuning.RANK_MAX:  # fine cells numbered above every coarse one
                key = cell.copy()
                key[dense] = (1 << (3 * b)) + (
                    (qf[:, 0] << (2 * fine)) | (qf[:, 1] << fine) | qf[:, 2]
                )
                inv = _rank(key, size)
            else:
                # fine cells get codes above every coarse one
                cell[dense] = (1 << 24) + ((qf[:, 0] << 16) | (qf[:, 1] << 8) | qf[:, 2])
                _, inv = np.unique(cell, return_inverse=True)
    w = np.bincount(inv, weights=cw)
    pts = np.stack([np.bincount(inv, weights=cw * pf[:, j]) for j in range(3)], axis=1)
    return pts / w[:, None], w
