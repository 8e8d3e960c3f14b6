"""The two forms of histogram: when the compact one is taken, its finalists, threads."""

import threading

import numpy as np
import pytest
from helpers import photo_like
from oracles import nearest_oracle

from kquant import fit
from kquant.colour import histogram
from kquant.fit import compact as fit_large
from kquant.fit import driver, kmeans, tuning


def test_fit_palette_uses_the_compact_path_above_the_limit(monkeypatch):
    img = photo_like(200, 300, seed=4)
    codes, counts = histogram.block_histogram(img)
    monkeypatch.setattr(tuning, "FULL_CONVERGENCE_MAX", len(codes) // 4)
    used = []
    real = fit_large.integer_polish
    monkeypatch.setattr(
        fit_large, "integer_polish", lambda *a, **k: used.append(1) or real(*a, **k)
    )
    res = fit.fit_palette(None, codes, counts, 16, seed=0)
    assert used and len(res.palette) == 16
    lab = nearest_oracle(img, res.palette)
    assert res.sse == int(((img.astype(np.int64) - res.palette[lab].astype(np.int64)) ** 2).sum())
    use = np.bincount(lab.ravel(), minlength=16)
    assert np.all(np.diff(use) <= 0)  # most used first


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
    # in the pool, the first two refinements meet here before going on: they run side by
    # side (a pool thread that finished one could otherwise take the next one too)
    meet = threading.Barrier(2, timeout=30)
    met = set()

    def recorded(real):
        def run(*a, **k):
            name = threading.current_thread().name
            names.append(name)
            if name.startswith("kquant-fit") and name not in met and len(met) < 2:
                met.add(name)
                meet.wait()
            return real(*a, **k)

        return run

    monkeypatch.setattr(driver, "lloyd_bounded", recorded(fit.lloyd_bounded))
    monkeypatch.setattr(kmeans, "lloyd_bounded", recorded(fit.lloyd_bounded))
    monkeypatch.setattr(fit_large, "lloyd", recorded(fit_large.lloyd))
    fits = {}
    for threads in (1, 3):
        monkeypatch.setattr(driver, "finalist_threads", lambda n, t=threads: min(n, t))
        names.clear()
        met.clear()
        meet.reset()
        fits[threads] = fit.fit_palette(None, codes, counts, 8, seed=2, sampled=sampled)
        in_pool = [n for n in names if n.startswith("kquant-fit")]
        assert (len(set(in_pool)) >= 2) == (threads > 1)
    one, many = fits[1], fits[3]
    assert np.array_equal(one.palette, many.palette)
    assert (one.sse, one.refined_from, one.n_iter) == (many.sse, many.refined_from, many.n_iter)


@pytest.mark.parametrize(
    "k, sampled",
    [
        (tuning.SAMPLED_ONE_FINALIST_K, True),
        (tuning.SAMPLED_ONE_FINALIST_K - 1, True),
        (tuning.SAMPLED_ONE_FINALIST_K, False),
    ],
)
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
