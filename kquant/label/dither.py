"""Ordered dithering (Bayer or blue noise) and the labelling kernel of the second pass.

The threshold added to a pixel depends only on its *global* coordinates
``(y, x)`` (``matrix[y % n, x % n]``), never on the chunk it falls in, and the
dithered value is rounded to integers before the exact nearest-entry search, so
labelling chunk by chunk gives exactly the labels of the whole image at once:
no seams, whatever the chunking.

* ``bayer``: the 8x8 Bayer matrix (a regular cross-hatch, cheap to look at closely);
* ``blue-noise``: a 64x64 void-and-cluster matrix (Ulichney 1993): the same number of
  levels per area, without the Bayer pattern's visible grid. The matrix ships with the
  package (``kquant/data/bluenoise64.npy``, made by :func:`void_and_cluster`), so every
  machine dithers with the same thresholds.
"""

from __future__ import annotations

import functools
from typing import Literal, get_args

import numpy as np

from kquant.errors import ParameterError

#: Dithering methods: none, an 8x8 Bayer matrix, a 64x64 blue-noise matrix.
Dither = Literal["none", "bayer", "blue-noise"]
METHODS: tuple[str, ...] = get_args(Dither)
BAYER_SIZE = 8
BLUE_NOISE_SIZE = 64


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


def void_and_cluster(n: int = BLUE_NOISE_SIZE, *, sigma: float = 1.5, seed: int = 0) -> np.ndarray:
    """An ``n x n`` blue-noise rank matrix (values 0 .. n*n-1) by void-and-cluster.

    Ulichney's method on the torus, with a Gaussian filter of ``sigma`` pixels: a random
    pattern of n*n/10 dots is relaxed (the tightest cluster moved to the largest void
    until nothing moves), then dots are ranked by removing tightest clusters down to
    none and adding into largest voids up to all (filling the largest void of the dots is
    filling the tightest cluster of the holes). Ties go to the lowest flat index.
    ``kquant/data/bluenoise64.npy`` is ``void_and_cluster(64)``.

    Raises
    ------
    ParameterError
        If ``n`` < 4.
    """
    if n < 4:
        raise ParameterError(f"blue-noise matrix size must be at least 4, got {n}")
    d = np.minimum(np.arange(n), n - np.arange(n)).astype(np.float64)
    g = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma * sigma))

    def put(energy, flat, sign):  # the filter centred on one dot, added or removed
        y, x = divmod(int(flat), n)
        energy += sign * np.roll(g, (y, x), axis=(0, 1))

    dots = np.zeros(n * n, bool)
    dots[np.random.default_rng(seed).choice(n * n, n * n // 10, replace=False)] = True
    energy = np.zeros((n, n))
    for flat in np.flatnonzero(dots):
        put(energy, flat, 1.0)
    flat_e = energy.reshape(-1)  # a view: put() updates it
    while True:  # relax: tightest cluster -> largest void, until that is the same place
        c = int(np.argmax(np.where(dots, flat_e, -np.inf)))
        dots[c] = False
        put(energy, c, -1.0)
        v = int(np.argmin(np.where(dots, np.inf, flat_e)))
        dots[v] = True
        put(energy, v, 1.0)
        if v == c:
            break
    rank = np.empty(n * n, np.int64)
    n_dots = int(dots.sum())
    fewer, fewer_e = dots.copy(), energy.copy()
    fewer_flat = fewer_e.reshape(-1)
    for r in range(n_dots - 1, -1, -1):  # remove the tightest cluster, ranks downwards
        c = int(np.argmax(np.where(fewer, fewer_flat, -np.inf)))
        fewer[c] = False
        put(fewer_e, c, -1.0)
        rank[c] = r
    for r in range(n_dots, n * n):  # fill the largest void, ranks upwards
        v = int(np.argmin(np.where(dots, np.inf, flat_e)))
        dots[v] = True
        put(energy, v, 1.0)
        rank[v] = r
    return rank.reshape(n, n)


@functools.lru_cache(maxsize=1)
def blue_noise_matrix() -> np.ndarray:
    """The packaged 64x64 blue-noise rank matrix (values 0 .. 4095), read once."""
    from importlib import resources

    with resources.files("kquant.data").joinpath("bluenoise64.npy").open("rb") as f:
        return np.load(f).astype(np.int64)


@functools.lru_cache(maxsize=4)
def _thresholds(method: str, n: int) -> np.ndarray:
    ranks = bayer_matrix(n) if method == "bayer" else blue_noise_matrix()
    size = len(ranks)
    m = (ranks + 0.5) / (size * size) - 0.5
    m.flags.writeable = False
    return m


def threshold(
    y0: int, x0: int, h: int, w: int, *, n: int = BAYER_SIZE, method: str = "bayer"
) -> np.ndarray:
    """Thresholds in (-0.5, 0.5) of the pixels ``y0:y0+h, x0:x0+w`` of the whole image.

    ``method`` is ``"bayer"`` (an ``n x n`` Bayer matrix) or ``"blue-noise"`` (the
    packaged 64x64 matrix; ``n`` is then ignored).

    Raises
    ------
    ParameterError
        If ``n`` is not a power of two (Bayer).
    """
    m = _thresholds(method, n if method == "bayer" else BLUE_NOISE_SIZE)
    size = len(m)
    return m[np.ix_((y0 + np.arange(h)) % size, (x0 + np.arange(w)) % size)]


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


#: Pixels labelled at a time by :func:`label_block`: bounds its temporaries (the
#: dithered float64 values, the codes, the distance slabs) to a few MiB per thread,
#: whatever the block's size or K.
SUB_PIXELS = 1 << 16


def sub_blocks(h: int, w: int, n: int = SUB_PIXELS):
    """Rectangles ``(r0, r1, c0, c1)`` of at most ``n`` pixels tiling an (h, w) block,
    row slabs of whole rows unless a row alone is longer than ``n``."""
    cols = max(1, min(w, n))
    rows = max(1, n // cols)
    for r0 in range(0, h, rows):
        for c0 in range(0, w, cols):
            yield r0, min(h, r0 + rows), c0, min(w, c0 + cols)


def _moved(sub: np.ndarray, y0: int, x0: int, method: str, amplitude: float) -> np.ndarray:
    """A block's pixels with the threshold of their global coordinates added, rounded."""
    if method == "none" or amplitude <= 0:
        return sub
    h, w = sub.shape[:2]
    t = threshold(y0, x0, h, w, method=method) * float(amplitude)
    return np.clip(np.rint(sub + t[:, :, None]), 0, 255).astype(np.uint8)


def label_block(
    block: np.ndarray,
    palette: np.ndarray,
    *,
    space: str = "rgb",
    dither: str = "none",
    dither_amount: float = 0.0,
    y0: int = 0,
    x0: int = 0,
    table: np.ndarray | None = None,
) -> np.ndarray:
    """Palette index (h, w) uint8 of each pixel of one (h, w, 3) uint8 block.

    Worked through in sub-blocks of :data:`SUB_PIXELS` pixels: the memory it takes
    beyond the block and its labels is a few MiB, whatever the block's size or K
    (plus 32 MiB of colour tables in a perceptual space, see
    :class:`kquant.colorspace.Labeller`).

    Parameters
    ----------
    block : ndarray of uint8, shape (h, w, 3)
    palette : ndarray of uint8, shape (n, 3)
    space : {"rgb", "oklab", "lab"}, keyword-only
        Space of the nearest-entry search (see :mod:`kquant.colorspace`).
    dither : {"none", "bayer", "blue-noise"}, keyword-only
    dither_amount : float, keyword-only
        Amplitude of the threshold (RGB units, see :func:`amount`).
    y0, x0 : int, keyword-only
        Global coordinates of the block's first pixel.
    table : ndarray of uint8, shape (2**24,), optional, keyword-only
        The palette's lookup table (:func:`kquant.lut.table_for`), for ``space="rgb"``:
        the same labels, by table lookup instead of distances.

    Returns
    -------
    ndarray of uint8, shape (h, w)

    Raises
    ------
    ParameterError
        If ``dither`` or ``space`` is unknown.
    """
    from kquant.colour import histogram, spaces
    from kquant.label import assign, nearest_in_space

    if dither not in METHODS:
        raise ParameterError(f"dither must be one of {', '.join(METHODS)}, got {dither!r}")
    spaces.check_space(space)
    block = np.asarray(block)
    h, w = block.shape[:2]
    labels = np.empty((h, w), np.uint8)
    spans = list(sub_blocks(h, w))

    def moved(r0, r1, c0, c1):
        return _moved(block[r0:r1, c0:c1], y0 + r0, x0 + c0, dither, dither_amount)

    if space == "rgb":
        for r0, r1, c0, c1 in spans:
            sub = moved(r0, r1, c0, c1)
            if table is not None:
                labels[r0:r1, c0:c1] = table[histogram.encode(sub)]
            else:
                labels[r0:r1, c0:c1] = assign.nearest(sub.reshape(-1, 3), palette).reshape(
                    r1 - r0, c1 - c0
                )
        return labels
    if len(spans) == 1:  # small: distinct colours by sorting
        return nearest_in_space.nearest(moved(0, h, 0, w).reshape(-1, 3), palette, space).reshape(
            h, w
        )
    labeller = nearest_in_space.Labeller(palette, space)  # each distinct colour solved once
    for r0, r1, c0, c1 in spans:
        labeller.mark(histogram.encode(moved(r0, r1, c0, c1)))
    labeller.solve()
    for r0, r1, c0, c1 in spans:
        labels[r0:r1, c0:c1] = labeller.labels(histogram.encode(moved(r0, r1, c0, c1)))
    return labels
