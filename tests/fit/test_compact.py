"""Compact kernels over millions of colour codes, against the numpy fitter and brute force."""

import numpy as np
import pytest
from helpers import photo_like
from oracles import nearest_oracle

from kquant import fit
from kquant.colour import histogram
from kquant.fit import compact as fit_large
from kquant.label import cell_candidates


def _histogram(n_colours, seed=0, heavy_colour=None):
    rng = np.random.default_rng(seed)
    codes = np.unique(rng.integers(0, 1 << 24, size=n_colours, dtype=np.uint32))
    counts = rng.integers(1, 50, size=len(codes)).astype(np.int64)
    if heavy_colour is not None:  # one colour holding most pixels: its cell is split finer
        counts[np.searchsorted(codes, codes[len(codes) // 2])] = counts.sum() * 4
    return codes, counts


def _assert_brute_force(codes, counts, centers, result):
    """``result`` of :func:`fit_large.assign_pass` is that of trying every centre (ties to
    the lowest index: argmin's first minimum); returns it."""
    sums, mass, inertia, worst = result
    k = len(centers)
    x = histogram.decode(codes).astype(np.float64)
    d = ((x[:, None, :] - centers[None]) ** 2).sum(axis=2)
    lab = d.argmin(axis=1)
    assert np.array_equal(mass, np.bincount(lab, weights=counts, minlength=k))
    assert np.isclose(inertia, float(np.dot(counts, d[np.arange(len(x)), lab])), rtol=1e-12)
    cost = counts * d[np.arange(len(x)), lab]
    assert cost[worst] == cost.max()
    for j in range(3):
        assert np.allclose(sums[:, j], np.bincount(lab, weights=counts * x[:, j], minlength=k))
    return result


@pytest.mark.parametrize("bits", [3, 5, 6, 7])
@pytest.mark.parametrize("heavy", [None, 0.05])
def test_cells_equal_coarse_histogram(bits, heavy):
    codes, counts = _histogram(30_000, seed=bits, heavy_colour=heavy)
    pts, w = fit_large.cells(codes, counts, bits, heavy=heavy)
    ref_pts, ref_w = fit.coarse_histogram(histogram.decode(codes), counts, bits=bits, heavy=heavy)
    order, ref_order = np.lexsort(pts.T), np.lexsort(ref_pts.T)
    assert len(pts) == len(ref_pts)
    assert np.allclose(pts[order], ref_pts[ref_order]) and np.array_equal(
        w[order], ref_w[ref_order]
    )


def test_threaded_pass_equals_one_slice():
    codes, counts = _histogram(3_000_000, seed=1)
    centers = np.random.default_rng(2).uniform(0, 255, size=(16, 3))
    assert fit_large._threads(len(codes)) >= 2 or __import__("os").cpu_count() == 1
    _assert_brute_force(codes, counts, centers, fit_large.assign_pass(codes, counts, centers))


@pytest.mark.parametrize("k", [2, 16, 64, 256])
def test_cell_pruned_pass_equals_brute_force_with_ties(k):
    """Each colour tries only its cell's candidate centres: the labels (ties to the lowest
    index), sums, masses and inertia of trying every centre. Centres on integer colours,
    on cell boundaries and duplicated make exact ties; colours fill whole cells."""
    rng = np.random.default_rng(k)
    base = rng.integers(0, 1 << 24, size=40_000, dtype=np.uint32)
    edge = rng.integers(0, 32, size=(3000, 3)) * 8 + rng.choice([0, 7], size=(3000, 3))
    codes = np.unique(np.concatenate([base, histogram.encode(edge.astype(np.uint8))]))
    counts = rng.integers(1, 9, size=len(codes)).astype(np.int64)
    centers = np.concatenate(
        [
            rng.integers(0, 256, size=(k - k // 4, 3)).astype(np.float64),
            rng.uniform(0, 255, size=(k // 4, 3)),
        ]
    )
    if k >= 4:
        centers[1] = centers[0]  # duplicate: index 1 never wins
        centers[3] = [8.0, 16.0, 31.5]  # on cell boundaries
    _, mass, inertia, _ = _assert_brute_force(
        codes, counts, centers, fit_large.assign_pass(codes, counts, centers)
    )
    occupied = cell_candidates.occupied_cells(codes)
    assert 0 < occupied.sum() < occupied.size
    again = fit_large.assign_pass(codes, counts, centers, occupied)
    assert np.array_equal(again[1], mass) and again[2] == inertia


def test_lloyd_and_integer_polish_match_the_numpy_fitter():
    img = photo_like(300, 400, seed=3)
    codes, counts = histogram.block_histogram(img)
    x = histogram.decode(codes).astype(np.float64)
    w = counts.astype(np.float64)
    start = fit.kmeans_plusplus(x, w, 12, seed=0)
    c_ref, _, in_ref, _ = fit.lloyd(x, w, start, rtol=0.0)
    c, inertia, n_iter = fit_large.lloyd(codes, counts, start, rtol=0.0)
    assert n_iter > 1 and np.isclose(inertia, in_ref, rtol=1e-9)
    assert np.allclose(c, c_ref, atol=1e-6)
    pal_ref, lab_ref, sse_ref = fit.integer_polish(x, w, c_ref)
    pal, sse, use = fit_large.integer_polish(codes, counts, c)
    assert np.array_equal(pal, pal_ref) and sse == sse_ref
    assert np.array_equal(use, np.bincount(lab_ref, weights=w, minlength=12))
    # the sse is that of the exact nearest-entry labels (those the write pass gives)
    rgb = histogram.decode(codes).astype(np.int64)
    lab = nearest_oracle(histogram.decode(codes), pal)
    assert sse == int((counts * ((rgb - pal.astype(np.int64)[lab]) ** 2).sum(axis=1)).sum())
