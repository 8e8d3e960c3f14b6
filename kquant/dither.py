"""Ordered (Bayer) dithering and the labelling kernel of the second pass.

The threshold added to a pixel depends only on its *global* coordinates
``(y, x)`` (``bayer[y % 8, x % 8]``), never on the chunk it falls in, and the
dithered value is rounded to integers before the exact nearest-entry search, so
labelling chunk by chunk gives exactly the labels of the whole image at once:
no seams, whatever the chunking.
"""

from __future__ import annotations

import numpy as np

from .errors import ParameterError

METHODS = ("none", "bayer")
BAYER_SIZE = 8


def bayer_matrix(n: int = BAYER_SIZE) -> np.ndarray:
    """The ``n x n`` Bayer index matrix (values 0 .. n*n-1), ``n`` a power of two.

    Raises
    ------
    ParameterError
        If ``n`` is not a power of two.
    """
    if n < 1 or n & (n - 1):
        raise ParameterError(f"Bayer matrix size must be a power of two, got {n}")
    m = np.zeros((1, 1), np.int64)
    while len(m) < n:
        m = np.block([[4 * m, 4 * m + 2], [4 * m + 3, 4 * m + 1]])
    return m


def threshold(y0: int, x0: int, h: int, w: int, *, n: int = BAYER_SIZE) -> np.ndarray:
    """Thresholds in (-0.5, 0.5) of the pixels ``y0:y0+h, x0:x0+w`` of the whole image."""
    m = (bayer_matrix(n) + 0.5) / (n * n) - 0.5
    return m[np.ix_((y0 + np.arange(h)) % n, (x0 + np.arange(w)) % n)]


def amount(palette: np.ndarray) -> float:
    """Dither amplitude for a palette: mean RGB distance from each entry to its nearest other.

    Returns 0 for a palette of one colour.
    """
    p = np.asarray(palette, np.float64)
    if len(p) < 2:
        return 0.0
    d = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(d, np.inf)
    return float(d.min(axis=1).mean())


def label_block(block: np.ndarray, palette: np.ndarray, *, space: str = "rgb",
                dither: str = "none", dither_amount: float = 0.0, y0: int = 0,
                x0: int = 0) -> np.ndarray:
    """Palette index (h, w) uint8 of each pixel of one (h, w, 3) uint8 block.

    Parameters
    ----------
    block : ndarray of uint8, shape (h, w, 3)
    palette : ndarray of uint8, shape (n, 3)
    space : {"rgb", "oklab", "lab"}, keyword-only
        Space of the nearest-entry search (see :mod:`kquant.colorspace`).
    dither : {"none", "bayer"}, keyword-only
    dither_amount : float, keyword-only
        Amplitude of the Bayer threshold (RGB units, see :func:`amount`).
    y0, x0 : int, keyword-only
        Global coordinates of the block's first pixel.

    Returns
    -------
    ndarray of uint8, shape (h, w)

    Raises
    ------
    ParameterError
        If ``dither`` is unknown.
    """
    from . import colorspace

    if dither not in METHODS:
        raise ParameterError(f"dither must be one of {', '.join(METHODS)}, got {dither!r}")
    block = np.asarray(block)
    h, w = block.shape[:2]
    if dither == "bayer" and dither_amount > 0:
        t = threshold(y0, x0, h, w) * float(dither_amount)
        block = np.clip(np.rint(block + t[:, :, None]), 0, 255).astype(np.uint8)
    return colorspace.nearest(block.reshape(-1, 3), palette, space).reshape(h, w)
