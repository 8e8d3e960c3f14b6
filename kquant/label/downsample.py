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


_TABLES: dict[int, np.ndarray] = {}


def _pair_table(bits: int) -> np.ndarray:
    """For ``bits`` 1, 2 or 4: the 2x2 modes of every pair of packbits-order bytes, by key
    ``top << 8 | bottom`` -> the ``4 // bits`` labels of that pair of byte rows."""
    table = _TABLES.get(bits)
    if table is None:
        per = 8 // bits
        keys = np.arange(1 << 16, dtype=np.uint32)
        rows = np.empty((2 * len(keys), per), np.uint8)
        mask = (1 << bits) - 1
        for i in range(per):  # packbits order: pixel i in bits [i * bits, (i + 1) * bits)
            rows[0::2, i] = (keys >> (8 + bits * i)) & mask
            rows[1::2, i] = (keys >> (bits * i)) & mask
        table = _TABLES.setdefault(bits, mode2x2(rows))
    return table


def mode2x2_packbits(data: np.ndarray, rows: int, cols: int, bits: int) -> np.ndarray:
    """:func:`mode2x2` of the first ``rows`` x ``cols`` pixels of a chunk of labels encoded by
    the packbits codec (``data``: (chunk rows, chunk cols * bits / 8) bytes, each row whole
    bytes), without unpacking them: one table lookup per pair of bytes.

    Raises
    ------
    ParameterError
        If ``bits`` is not 1, 2, 4 or 8.
    """
    from kquant.errors import ParameterError

    data = np.asarray(data, np.uint8)
    if bits == 8:
        return mode2x2(data[:rows, :cols])
    if bits not in (1, 2, 4):
        raise ParameterError(f"bits must be 1, 2, 4 or 8, got {bits}")
    per = 8 // bits
    nbytes = -(-cols // per)
    top = data[0:rows:2, :nbytes]
    bottom = data[1:rows:2, :nbytes]
    if bottom.shape[0] < top.shape[0]:  # an odd last row pairs with itself
        bottom = np.concatenate([bottom, top[-1:]], axis=0)
    keys = (top.astype(np.uint16) << 8) | bottom
    out = _pair_table(bits)[keys].reshape(top.shape[0], -1)[:, : -(-cols // 2)]
    if cols % 2:  # the last column's pairs took a pixel beyond the image: its own pixels only
        x = cols - 1
        col = (data[:rows, x // per] >> np.uint8(bits * (x % per))) & np.uint8((1 << bits) - 1)
        out[:, -1] = mode2x2(col[:, None])[:, 0]
    return out
