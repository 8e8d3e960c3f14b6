"""Downsampling labels for the store's pyramid: each pixel of a level is the **mode** of a 2x2
block of the level below (labels are categories: no averaging), ties to the smallest label
(palettes are sorted most used first). A block cut by the image's edge counts only the pixels
it has. Compiled with numba on first use (:mod:`kquant.jit`), the GIL released.
"""

from __future__ import annotations

import numpy as np

from kquant import jit


def _mode2x2_kernel(src, out):  # pragma: no cover - compiled
    h, w = src.shape
    oh, ow = out.shape
    for i in range(oh):
        y0 = 2 * i
        y1 = min(y0 + 1, h - 1)  # an edge block repeats its pixels: the same mode
        for j in range(ow):
            x0 = 2 * j
            x1 = min(x0 + 1, w - 1)
            a = src[y0, x0]
            b = src[y0, x1]
            c = src[y1, x0]
            d = src[y1, x1]
            ab = a == b
            ac = a == c
            ad = a == d
            bc = b == c
            bd = b == d
            cd = c == d
            # count * 256 + (255 - label): the largest key is the most frequent, then smallest
            ka = (1 + ab + ac + ad) * 256 + (255 - a)
            kb = (1 + ab + bc + bd) * 256 + (255 - b)
            kc = (1 + ac + bc + cd) * 256 + (255 - c)
            kd = (1 + ad + bd + cd) * 256 + (255 - d)
            k = max(max(ka, kb), max(kc, kd))
            out[i, j] = 255 - (k & 255)


def mode2x2(labels: np.ndarray) -> np.ndarray:
    """The next pyramid level of ``labels``: shape ``(ceil(h / 2), ceil(w / 2))``.

    Parameters
    ----------
    labels : ndarray of uint8, shape (h, w)

    Returns
    -------
    ndarray of uint8
        Each pixel the most frequent label of its 2x2 block (ties: the smallest label).

    Raises
    ------
    ParameterError
        If ``labels`` is not 2-D.
    """
    from kquant.errors import ParameterError

    src = np.ascontiguousarray(labels, np.uint8)
    if src.ndim != 2:
        raise ParameterError(f"labels must be 2-D, got shape {src.shape}")
    h, w = src.shape
    out = np.empty(((h + 1) // 2, (w + 1) // 2), np.uint8)
    if out.size:
        jit.compiled(_mode2x2_kernel)(src, out)
    return out
