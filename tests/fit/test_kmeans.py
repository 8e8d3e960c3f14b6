"""Weighted K-means kernels: histogram Lloyd equals pixel Lloyd, bounded Lloyd, swap moves."""

import numpy as np
import pytest
from helpers import photo_like
from oracles import pixel_lloyd

from kquant import fit
from kquant.colour import histogram


def _hist(img):
    c, n = np.unique(histogram.encode(img).ravel(), return_counts=True)
    return c.astype(np.uint32), n.astype(np.int64)


def test_histogram_lloyd_equals_pixel_lloyd():
    img = photo_like(40, 50, seed=1) // 16 * 16  # repeated colours
    pixels = img.reshape(-1, 3)
    colours, counts = _hist(img)
    init = fit.kmeans_plusplus(histogram.decode(colours).astype(float), counts, 6, seed=3)
    ref_centers, ref_inertia = pixel_lloyd(pixels, init)
    centers, _, inertia, _ = fit.lloyd(histogram.decode(colours), counts, init)
    assert len(colours) < len(pixels) / 2
    assert inertia == pytest.approx(ref_inertia, rel=1e-9)
    assert np.allclose(np.sort(centers, axis=0), np.sort(ref_centers, axis=0), atol=1e-9)


@pytest.mark.parametrize("k", [2, 7, 31])
def test_bounded_lloyd_equals_plain_lloyd_and_pixel_lloyd(k):
    img = photo_like(48, 56, seed=5) // 8 * 8
    colours, counts = _hist(img)
    x = histogram.decode(colours).astype(np.float64)
    init = fit.kmeans_plusplus(x, counts, k, seed=11)
    c_ref, lab_ref, in_ref, _ = fit.lloyd(x, counts, init)
    c, lab, inertia, _ = fit.lloyd_bounded(x, counts, init)
    assert np.array_equal(lab, lab_ref)
    assert np.allclose(c, c_ref, atol=1e-9)
    assert inertia == pytest.approx(in_ref, rel=1e-9)
    _, pix_inertia = pixel_lloyd(img.reshape(-1, 3), init)
    assert inertia == pytest.approx(pix_inertia, rel=1e-9)


def test_bounded_lloyd_repairs_empty_clusters():
    rng = np.random.default_rng(0)
    x = rng.integers(100, 140, size=(500, 3)).astype(float)
    w = np.ones(500)
    init = np.array([[110.0, 110, 110], [130, 130, 130], [0, 0, 0]])  # third is empty
    c, lab, _, _ = fit.lloyd_bounded(x, w, init)
    assert c.min() >= 100 and len(np.unique(lab)) == 3


def test_swap_moves_never_worsen():
    img = photo_like(64, 64, seed=8)
    colours, counts = _hist(img)
    x = histogram.decode(colours).astype(np.float64)
    w = counts.astype(np.float64)
    init = fit.kmeans_plusplus(x, w, 12, seed=1)
    c0, _, in0, _ = fit.lloyd_bounded(x, w, init)
    c1, in1, accepted = fit.swap_moves(x, w, c0, in0, trials=10, seed=3)
    assert in1 <= in0
    d = ((x[:, None] - c1[None]) ** 2).sum(2)
    assert np.dot(w, d.min(1)) == pytest.approx(in1, rel=1e-9)
