"""Coarse histograms: colours merged into cells keep mass and mean; heavy cells split."""

import numpy as np
from helpers import photo_like

from kquant import fit
from kquant.colour import histogram


def _hist(img):
    c, n = np.unique(histogram.encode(img).ravel(), return_counts=True)
    return c.astype(np.uint32), n.astype(np.int64)


def test_coarse_histogram_preserves_mass_and_mean():
    img = photo_like(40, 40, seed=6)
    colours, counts = _hist(img)
    rgb = histogram.decode(colours)
    pts, w = fit.coarse_histogram(rgb, counts, bits=4)
    assert w.sum() == counts.sum()
    assert len(pts) < len(rgb)
    assert np.allclose((pts * w[:, None]).sum(0), (rgb * counts[:, None]).sum(0))
    # every cell mean lies inside its 16-wide cell
    assert np.all(np.floor(pts / 16) == np.floor(pts / 16))


def test_coarse_histogram_splits_heavy_cells():
    """A dense dark region (one 5-bit cell) must offer several points to seed from."""
    rng = np.random.default_rng(3)
    dark = rng.integers(0, 8, size=(5000, 3))  # all in the cell (0, 0, 0)
    rest = rng.integers(0, 256, size=(500, 3))
    rgb = np.concatenate([dark, rest]).astype(np.uint8)
    colours, counts = np.unique(histogram.encode(rgb), return_counts=True)
    rgb_u = histogram.decode(colours)
    plain, _ = fit.coarse_histogram(rgb_u, counts)
    split, w = fit.coarse_histogram(rgb_u, counts, heavy=0.1)
    in_dark = lambda p: int(np.sum(np.all(p < 8, axis=1)))  # noqa: E731
    assert in_dark(plain) == 1 and in_dark(split) > 1
    assert w.sum() == counts.sum()
    assert np.allclose((split * w[:, None]).sum(0), (rgb_u * counts[:, None]).sum(0))
