"""The nearest palette entry in a colour space (RGB exactly, or by perceptual distance in
OKLab or CIELAB), computed once per distinct colour."""

from __future__ import annotations

import numpy as np

from kquant.colour import histogram
from kquant.colour.spaces import check_space, from_rgb
from kquant.label import assign

#: Pixels at most whose distinct colours :func:`nearest` finds by sorting; more go
#: through the 2**24 tables of :class:`Labeller`, which bound the memory whatever the count.
_SORT_MAX = 1 << 20
#: Bytes of one slab's (colours x K) float64 distance matrix (two such buffers are used).
SLAB_BYTES = 1 << 21


class Labeller:
    """Nearest palette entry in a perceptual space, computed once per distinct colour.

    Colours are marked (:meth:`mark`, any number of times), solved together
    (:meth:`solve`), then looked up (:meth:`labels`); or solved directly
    (:meth:`solve_codes`). Distances are Euclidean in the space, ``|p|^2 - 2 x.p`` in
    float64 with the product as three broadcast multiply-adds (no BLAS: its threads
    contend inside dask threads, and a value does not depend on the colours computed
    beside it), in slabs whose (colours x K) matrix takes at most :data:`SLAB_BYTES`;
    ties go to the lowest index. The two 2**24 tables of marked colours and their labels
    (32 MiB, touched only where colours fall) bound the memory whatever the number of
    pixels, colours or entries.
    """

    def __init__(self, palette: np.ndarray, space: str):
        check_space(space)
        self.space = space
        self.pal = from_rgb(np.asarray(palette, np.uint8), space)
        self.norms = (self.pal * self.pal).sum(axis=1)
        self.rows = max(256, SLAB_BYTES // (8 * len(self.pal)))
        self._d = np.empty((self.rows, len(self.pal)))
        self._t = np.empty_like(self._d)
        # made by the first mark(): 2**24 flags and labels, touched only where colours fall
        self.known: np.ndarray | None = None
        self.table: np.ndarray | None = None

    def mark(self, codes: np.ndarray) -> None:
        """Note colours (uint32 codes ``R<<16|G<<8|B``) to be solved."""
        if self.known is None:  # calloc: pages are touched only where colours fall
            self.known = np.zeros(1 << 24, bool)
            self.table = np.zeros(1 << 24, np.uint8)
        self.known[codes] = True

    def solve(self) -> None:
        """Find the nearest entry of every marked colour."""
        if self.known is None or self.table is None:
            return
        seg = 1 << 20
        for s in range(0, 1 << 24, seg):
            found = np.flatnonzero(self.known[s : s + seg])
            if len(found):
                codes = (found + s).astype(np.uint32)
                self.table[codes] = self.solve_codes(codes)

    def solve_codes(self, codes: np.ndarray) -> np.ndarray:
        """Labels (uint8) of distinct colour codes."""
        out = np.empty(len(codes), np.uint8)
        for s in range(0, len(codes), self.rows):
            x = from_rgb(histogram.decode(codes[s : s + self.rows]), self.space)
            d, t = self._d[: len(x)], self._t[: len(x)]
            np.multiply(x[:, 0:1], self.pal[:, 0], out=d)
            for j in (1, 2):
                np.multiply(x[:, j : j + 1], self.pal[:, j], out=t)
                d += t
            d *= -2.0
            d += self.norms
            out[s : s + self.rows] = d.argmin(axis=1)
        return out

    def labels(self, codes: np.ndarray) -> np.ndarray:
        """Labels of solved colours (codes of any shape).

        Raises
        ------
        ValueError
            If no colour was marked and solved.
        """
        if self.table is None:
            raise ValueError("no colour was marked: mark() and solve() come first")
        return self.table[codes]


def nearest(pixels: np.ndarray, palette: np.ndarray, space: str) -> np.ndarray:
    """Index (uint8) of the nearest palette entry of each (m, 3) uint8 pixel, in ``space``.

    For ``"rgb"`` this is :func:`kquant.label.assign.nearest` (exact, ties to the
    lowest index). Otherwise distances are Euclidean in the perceptual space,
    computed once per distinct colour (:class:`Labeller`; ties to the lowest index).

    Raises
    ------
    ParameterError
        If ``space`` is unknown.
    """
    if check_space(space) == "rgb":
        return assign.nearest(pixels, palette)
    codes = histogram.encode(np.asarray(pixels, np.uint8).reshape(-1, 3))
    labeller = Labeller(palette, space)
    if len(codes) <= _SORT_MAX:
        distinct, inverse = np.unique(codes, return_inverse=True)
        return labeller.solve_codes(distinct)[inverse.reshape(-1)]
    labeller.mark(codes)
    labeller.solve()
    return labeller.labels(codes)
