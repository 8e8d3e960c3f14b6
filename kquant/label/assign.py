"""Nearest-palette assignment, exact in uint8 RGB.

Squared distances are computed as ``|c|^2 - 2 x.c`` in float32. Every term is
an integer below 2**24, so the arithmetic is exact in any order and the result
equals an integer argmin; ties go to the lowest palette index. Pixels go through
in slabs whose (pixels x K) distance matrix takes at most :data:`SLAB_BYTES`, so
the working memory does not grow with K or with the block. The product is three
broadcast multiply-adds, not BLAS: a multi-threaded BLAS inside each of several dask
threads oversubscribes the cores (measured 3-6x slower for this skinny product), and
``einsum`` was measured 4x slower than the broadcasts.
"""

from __future__ import annotations

import numpy as np

#: Bytes of one slab's (pixels x K) float32 distance matrix (two such buffers are used).
SLAB_BYTES = 1 << 21
#: The same with ``blas=True`` (callers that run alone): BLAS calls on 2 MiB slabs were
#: measured 1.5x slower than on 32 MiB ones (4M colours, K=16 and 256).
BLAS_SLAB_BYTES = 1 << 25


def slab_rows(k: int, budget: int = SLAB_BYTES) -> int:
    """Pixels per slab for a palette of ``k`` entries: the float32 distance matrix within
    ``budget`` bytes, at least 256 rows."""
    return max(256, budget // (4 * max(1, int(k))))


def nearest(pixels: np.ndarray, palette: np.ndarray, *, blas: bool = False) -> np.ndarray:
    """Index of the nearest palette entry for each of (m, 3) pixels, as uint8.

    Parameters
    ----------
    pixels : ndarray, shape (m, 3)
        Integer RGB values 0-255 (any integer or float dtype holding integers).
    palette : ndarray of uint8, shape (n, 3), 1 <= n <= 256
    blas : bool, keyword-only
        Compute the product with BLAS (the same labels, as the arithmetic is exact):
        for callers that run alone, not inside dask tasks.

    Returns
    -------
    ndarray of uint8, shape (m,)

    Raises
    ------
    ValueError
        If ``palette`` is not (n, 3) with 1 <= n <= 256.
    """
    pal = np.asarray(palette, dtype=np.float32)
    if pal.ndim != 2 or pal.shape[1] != 3 or not 1 <= len(pal) <= 256:
        raise ValueError(f"palette must have shape (n, 3) with 1 <= n <= 256, got {pal.shape}")
    pixels = np.asarray(pixels)
    out = np.empty(len(pixels), np.uint8)
    if len(pal) == 1:
        out[:] = 0
        return out
    norms = (pal * pal).sum(axis=1)
    twice = 2.0 * pal
    rows = min(slab_rows(len(pal), BLAS_SLAB_BYTES if blas else SLAB_BYTES), max(1, len(pixels)))
    d = np.empty((rows, len(pal)), np.float32)
    tmp = d if blas else np.empty_like(d)  # the second buffer is used without BLAS only
    for start in range(0, len(pixels), rows):
        x = pixels[start : start + rows].astype(np.float32)
        n = len(x)
        dd = d[:n]
        if blas:
            np.matmul(x, twice.T, out=dd)
        else:  # no BLAS threads inside dask tasks
            tt = tmp[:n]
            np.multiply(x[:, 0:1], twice[:, 0], out=dd)
            np.multiply(x[:, 1:2], twice[:, 1], out=tt)
            dd += tt
            np.multiply(x[:, 2:3], twice[:, 2], out=tt)
            dd += tt
        np.subtract(norms, dd, out=dd)
        out[start : start + n] = dd.argmin(axis=1)
    return out


def nearest_block(block: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Labels (h, w) uint8 of one (h, w, 3) block."""
    block = np.asarray(block)
    return nearest(block.reshape(-1, 3), palette).reshape(block.shape[:2])
