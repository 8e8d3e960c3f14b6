"""The two forms of a colour histogram the fit runs on, behind one interface.

* :class:`DenseHistogram` -- the colours as float64 coordinates (RGB or a perceptual
  space) with their weights, for up to a few million colours;
* :class:`CompactHistogram` -- the colours as their uint32 codes with their counts, for
  millions of RGB colours (a gigapixel's exact histogram): the compiled kernels of
  :mod:`kquant.fit.compact` keep nothing per colour.

Both give the fit driver (:mod:`kquant.fit.driver`) cells at any bit depth, Lloyd from
given centres, and the integer polish, plus how much search their form deserves.
"""

from __future__ import annotations

import numpy as np

from kquant.colour import histogram, spaces
from kquant.fit import compact, kmeans, tuning
from kquant.fit.cells import coarse_histogram

#: Relative gain under which Lloyd stops on histograms too large to run to a fixed point.
RTOL_LARGE = 1e-5


class DenseHistogram:
    """Colours as coordinates in ``space`` with float64 weights.

    Parameters
    ----------
    colours : ndarray of uint32
        Unique colour codes (see :mod:`kquant.histogram`).
    counts : ndarray of int64
        Pixels of each colour.
    space : {"rgb", "oklab", "lab"}
    """

    def __init__(self, colours: np.ndarray, counts: np.ndarray, space: str):
        self.counts = counts
        self.space = space
        self.n_colours = len(colours)
        self.rgb = histogram.decode(colours)
        self.x = spaces.from_rgb(self.rgb, space)
        self.w = counts.astype(np.float64)
        #: Swap trials per ``8 + K // 4``: the exact RGB histogram earns twice as many.
        self.swaps_factor = tuning.SWAPS_FACTOR if space == "rgb" else 1
        #: Whether a runner-up seeding within tuning.RUNNER_UP_GAP is refined too.
        self.runner_up = space == "rgb"

    def finalists(self, k: int) -> int:
        """Seedings refined on the whole histogram (before a runner-up)."""
        return 1

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """The colours themselves as points and weights."""
        return self.x, self.w

    def cells(self, bits: int, *, heavy: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cells of ``bits`` bits per channel at their weighted means (:func:`coarse_histogram`)."""
        return coarse_histogram(self.rgb, self.counts, bits=bits, coords=self.x, heavy=heavy)

    def lloyd(self, centers: np.ndarray, *, max_iter: int) -> tuple[np.ndarray, float, int]:
        """Lloyd on every colour from ``centers``: ``(centers, inertia, n_iter)``."""
        if self.n_colours <= tuning.FULL_CONVERGENCE_MAX:
            centers, _, inertia, n_iter = kmeans.lloyd_bounded(
                self.x, self.w, centers, max_iter=max_iter
            )
        else:  # tens of millions of colours: stop once an iteration gains little
            centers, _, inertia, n_iter = kmeans.lloyd(
                self.x, self.w, centers, max_iter=max_iter, rtol=RTOL_LARGE
            )
        return centers, inertia, n_iter

    def polish(self, centers: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
        """The uint8 palette, its exact RGB error and the pixels of each entry."""
        if self.space == "rgb":
            pal, labels, sse = kmeans.integer_polish(self.x, self.w, centers)
        else:
            pal, labels, sse = kmeans.space_polish(self.rgb, self.x, self.w, centers, self.space)
        return pal, sse, np.bincount(labels, weights=self.w, minlength=len(centers))


class CompactHistogram:
    """RGB colours as uint32 codes with their counts (:mod:`kquant.fit.compact`).

    Parameters
    ----------
    colours : ndarray of uint32
    counts : ndarray of int64
    sampled : bool
        The histogram is a sample's: from K = tuning.SAMPLED_ONE_FINALIST_K one finalist.
    """

    swaps_factor = 1
    runner_up = False

    def __init__(self, colours: np.ndarray, counts: np.ndarray, *, sampled: bool):
        self.colours, self.counts, self.sampled = colours, counts, sampled
        self.n_colours = len(colours)

    def finalists(self, k: int) -> int:
        """Seedings refined on the whole histogram: the coarse ranking predicts poorly here."""
        return 1 if self.sampled and k >= tuning.SAMPLED_ONE_FINALIST_K else tuning.LARGE_FINALISTS

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """The colours themselves as points and weights."""
        return histogram.decode(self.colours).astype(np.float64), self.counts.astype(np.float64)

    def cells(self, bits: int, *, heavy: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cells of ``bits`` bits per channel at their weighted means (:func:`compact.cells`)."""
        return compact.cells(self.colours, self.counts, bits, heavy=heavy)

    def lloyd(self, centers: np.ndarray, *, max_iter: int) -> tuple[np.ndarray, float, int]:
        """Lloyd on every colour from ``centers`` until it gains little:
        ``(centers, inertia, n_iter)``."""
        return compact.lloyd(self.colours, self.counts, centers, max_iter=max_iter, rtol=RTOL_LARGE)

    def polish(self, centers: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
        """The uint8 palette, its exact RGB error and the pixels of each entry."""
        return compact.integer_polish(self.colours, self.counts, centers)


def histogram_for(
    colours: np.ndarray, counts: np.ndarray, *, space: str, sampled: bool
) -> DenseHistogram | CompactHistogram:
    """The form a histogram is fitted in: compact for many RGB colours (more than
    tuning.FULL_CONVERGENCE_MAX, or tuning.SAMPLED_LARGE_MIN for a sample's), dense otherwise."""
    many = tuning.SAMPLED_LARGE_MIN if sampled else tuning.FULL_CONVERGENCE_MAX
    if space == "rgb" and len(colours) > many:
        return CompactHistogram(colours, counts, sampled=sampled)
    return DenseHistogram(colours, counts, space)
