"""Compact kernels for histograms of millions of colours, against the numpy fitter."""

import threading

import dask.array as da
import numpy as np
import pytest

from helpers import photo_like
from kquant import fit
from kquant.colour import histogram
from kquant.label import cell_candidates
from kquant.fit import sampling
from kquant.fit import compact as fit_large
from kquant.fit import driver, kmeans, tuning
from oracles import nearest_oracle


def _histogram(n_colours, seed=0, heavy_colour=None):
    rng = np.random.default_rng(seed)
    codes = np.unique(rng.integers(0, 1 << 24, size=n_colours, dtype=np.uint32))
    counts = rng.integers(1, 50, size=len(codes)).astype(np.int64)
    if heavy_colour is not None:  # one colour holding most pixels: its cell is split finer
        counts[np.searchsorted(codes, codes[len(codes) // 2])] = counts.sum() * 4
    return codes, counts


@pytest.mark.parametrize("bits", [3, 5, 6, 7])
@pytest.mark.parametrize("heavy", [None, 0.05])
def test_cells_equal_coarse_histogram(bits, heavy):
    codes, counts = _histogram(30_000, seed=bits, heavy_colour=heavy)
    pts, w = fit_large.cells(codes, counts, bits, heavy=heavy)
    ref_pts, ref_w = fit.coarse_histogram(histogram.decode(codes), counts, bits=bits, heavy=heavy)
    order, ref_order = np.lexsort(pts.T), np.lexsort(ref_pts.T)
    assert len(pts) == len(ref_pts)
    assert np.allclose(pts[order], ref_pts[ref_order]) and np.array_equal(w[order], ref_w[ref_order])


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
    centers = np.concatenate([rng.integers(0, 256, size=(k - k // 4, 3)).astype(np.float64),
                              rng.uniform(0, 255, size=(k // 4, 3))])
    if k >= 4:
        centers[1] = centers[0]  # duplicate: index 1 never wins
        centers[3] = [8.0, 16.0, 31.5]  # on cell boundaries
    _, mass, inertia, _ = _assert_brute_force(codes, counts, centers,
                                              fit_large.assign_pass(codes, counts, centers))
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


def test_fit_palette_uses_the_compact_path_above_the_limit(monkeypatch):
    img = photo_like(200, 300, seed=4)
    codes, counts = histogram.block_histogram(img)
    monkeypatch.setattr(tuning, "FULL_CONVERGENCE_MAX", len(codes) // 4)
    used = []
    real = fit_large.integer_polish
    monkeypatch.setattr(fit_large, "integer_polish",
                        lambda *a, **k: used.append(1) or real(*a, **k))
    res = fit.fit_palette(None, codes, counts, 16, seed=0)
    assert used and len(res.palette) == 16
    lab = nearest_oracle(img, res.palette)
    assert res.sse == int(((img.astype(np.int64) - res.palette[lab].astype(np.int64)) ** 2).sum())
    use = np.bincount(lab.ravel(), minlength=16)
    assert np.all(np.diff(use) <= 0)  # most used first


@pytest.mark.parametrize("chain", [True, False])
def test_histogram_draws_the_sample_in_the_counting_tasks(monkeypatch, chain):
    img = photo_like(256, 192, seed=6)
    image = da.from_array(img, chunks=(64, 48, 3))
    if chain:
        monkeypatch.setattr(histogram, "CHAIN_MIN_PIXELS", 1)
    (colours, counts), parts = histogram.colour_histogram(
        image, per_block=sampling.block_samplers(image, 5000, seed=3)).compute(scheduler="threads")
    ref_colours, ref_counts = histogram.block_histogram(img)
    assert np.array_equal(colours, ref_colours) and np.array_equal(counts, ref_counts)
    ref_sample = sampling.sample_pixels(image, 5000, seed=3).compute(scheduler="threads")
    assert np.array_equal(np.concatenate(parts), ref_sample)


def test_each_chain_link_gets_its_own_block_callable_only(monkeypatch):
    """Building the chained graph is linear in the blocks: a link is tokenized with its
    block's callable, not the whole list (which made it quadratic: 1.9 s at 1 Gpx)."""
    tokenized = []

    class Counted:
        def __init__(self, fn):
            self.fn = fn

        def __call__(self, block):
            return self.fn(block)

        def __dask_tokenize__(self):
            tokenized.append(id(self))
            return ("counted", id(self))

    img = photo_like(240, 320, seed=9)
    image = da.from_array(img, chunks=(16, 16, 3))  # 300 blocks
    monkeypatch.setattr(histogram, "CHAIN_MIN_PIXELS", 1)
    samplers = [Counted(f) if f is not None else None
                for f in sampling.block_samplers(image, 6000, seed=4)]
    graph = histogram.colour_histogram(image, per_block=samplers)
    n = sum(f is not None for f in samplers)
    assert n == 300 and len(tokenized) <= 2 * n  # was n * n
    (colours, counts), parts = graph.compute(scheduler="threads")
    ref = sampling.sample_pixels(image, 6000, seed=4).compute(scheduler="threads")
    assert np.array_equal(np.concatenate(parts), ref)


@pytest.mark.parametrize("sampled", [True, False])
def test_a_sample_histogram_takes_the_compact_path_from_a_lower_size(monkeypatch, sampled):
    img = photo_like(150, 200, seed=8)
    codes, counts = histogram.block_histogram(img)
    monkeypatch.setattr(tuning, "SAMPLED_LARGE_MIN", len(codes) // 2)
    used = []
    real = fit_large.lloyd
    monkeypatch.setattr(fit_large, "lloyd", lambda *a, **k: used.append(1) or real(*a, **k))
    res = fit.fit_palette(None, codes, counts, 8, seed=1, sampled=sampled)
    assert bool(used) == sampled
    lab = nearest_oracle(img, res.palette)
    assert res.sse == int(((img.astype(np.int64) - res.palette[lab].astype(np.int64)) ** 2).sum())


@pytest.mark.parametrize("sampled", [True, False])
def test_finalists_refined_in_threads_give_the_sequential_fit(monkeypatch, sampled):
    """Several finalists are refined side by side (3 on the compact path, 2 with the
    runner-up on the exact one); the fit is the one of refining them one after another."""
    img = photo_like(120, 160, seed=5)
    codes, counts = histogram.block_histogram(img)
    monkeypatch.setattr(tuning, "SAMPLED_LARGE_MIN", len(codes) // 2)
    monkeypatch.setattr(tuning, "RUNNER_UP_GAP", float("inf"))  # exact path: 2 finalists
    monkeypatch.setattr(tuning, "PARALLEL_FINALISTS_MIN", 0)
    names = []

    def recorded(real):
        def run(*a, **k):
            names.append(threading.current_thread().name)
            return real(*a, **k)
        return run

    monkeypatch.setattr(driver, "lloyd_bounded", recorded(fit.lloyd_bounded))
    monkeypatch.setattr(kmeans, "lloyd_bounded", recorded(fit.lloyd_bounded))
    monkeypatch.setattr(fit_large, "lloyd", recorded(fit_large.lloyd))
    fits = {}
    for threads in (1, 3):
        monkeypatch.setattr(driver, "finalist_threads", lambda n, t=threads: min(n, t))
        names.clear()
        fits[threads] = fit.fit_palette(None, codes, counts, 8, seed=2, sampled=sampled)
        in_pool = [n for n in names if n.startswith("kquant-fit")]
        assert (len(set(in_pool)) >= 2) == (threads > 1)
    one, many = fits[1], fits[3]
    assert np.array_equal(one.palette, many.palette)
    assert (one.sse, one.refined_from, one.n_iter) == (many.sse, many.refined_from, many.n_iter)


@pytest.mark.parametrize("k, sampled", [(tuning.SAMPLED_ONE_FINALIST_K, True),
                                        (tuning.SAMPLED_ONE_FINALIST_K - 1, True),
                                        (tuning.SAMPLED_ONE_FINALIST_K, False)])
def test_a_sample_refines_one_finalist_from_a_large_k(monkeypatch, k, sampled):
    img = photo_like(120, 160, seed=6)
    codes, counts = histogram.block_histogram(img)
    monkeypatch.setattr(tuning, "SAMPLED_LARGE_MIN", len(codes) // 2)
    monkeypatch.setattr(tuning, "FULL_CONVERGENCE_MAX", len(codes) // 2)
    refined = []
    real = fit_large.lloyd
    monkeypatch.setattr(fit_large, "lloyd", lambda *a, **kw: refined.append(1) or real(*a, **kw))
    res = fit.fit_palette(None, codes, counts, k, seed=1, restarts=2, sampled=sampled)
    one = sampled and k >= tuning.SAMPLED_ONE_FINALIST_K
    assert len(refined) == (1 if one else tuning.LARGE_FINALISTS)
    assert len(res.palette) == k
