"""The fit driver: lossless images, determinism, rounding, seedings, runner-up, sample seeding."""

import numpy as np
import pytest
from helpers import photo_like

from kquant import fit
from kquant.colour import histogram
from kquant.fit.histograms import DenseHistogram


def _hist(img):
    c, n = np.unique(histogram.encode(img).ravel(), return_counts=True)
    return c.astype(np.uint32), n.astype(np.int64)


def test_lossless_when_at_most_k_colours():
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(9, 3), dtype=np.uint8)
    img = colours[rng.integers(0, 9, size=(30, 30))]
    c, n = _hist(img)
    res = fit.fit_palette(img.reshape(-1, 3), c, n, 16, seed=0)
    assert res.lossless and res.sse == 0 and len(res.palette) == 9
    assert {tuple(p) for p in res.palette} == {tuple(p) for p in colours}


def test_deterministic_for_a_seed():
    img = photo_like(64, 64, seed=2)
    c, n = _hist(img)
    sample = img.reshape(-1, 3)[::3]
    a = fit.fit_palette(sample, c, n, 8, seed=7, restarts=2)
    b = fit.fit_palette(sample, c, n, 8, seed=7, restarts=2)
    assert np.array_equal(a.palette, b.palette) and a.sse == b.sse


def test_palette_is_rounded_not_floored_and_sse_is_exact():
    img = photo_like(48, 48, seed=4)
    c, n = _hist(img)
    res = fit.fit_palette(img.reshape(-1, 3), c, n, 8, seed=0, restarts=1)
    pixels = img.reshape(-1, 3).astype(np.int64)
    d = ((pixels[:, None] - res.palette.astype(np.int64)[None]) ** 2).sum(2)
    assert res.sse == int(d.min(1).sum())
    # the palette is at least as good as the floor() of the converged centres
    centers, _, _, _ = fit.lloyd(histogram.decode(c), n, res.palette.astype(float))
    floored = np.floor(centers).astype(np.int64)
    d_floor = ((pixels[:, None] - floored[None]) ** 2).sum(2).min(1).sum()
    assert res.sse <= d_floor


def test_china_beats_the_notebook(china):
    """China at K=16: PSNR at least the notebook's (sklearn KMeans on all pixels, floor())."""
    from sklearn.cluster import KMeans

    pixels = china.reshape(-1, 3)
    km = KMeans(n_clusters=16, random_state=0, n_init="auto").fit(pixels)
    floor_pal = np.floor(km.cluster_centers_)
    notebook_mse = float(((floor_pal[km.labels_] - pixels) ** 2).mean())
    c, n = _hist(china)
    rng = np.random.default_rng(0)
    res = fit.fit_palette(pixels[rng.choice(len(pixels), 50000, replace=False)], c, n, 16, seed=0)
    assert res.mse <= notebook_mse
    assert len(res.palette) == 16


def test_fit_is_deterministic_and_sse_exact():
    img = photo_like(60, 70, seed=9)
    colours, counts = _hist(img)
    a = fit.fit_palette(None, colours, counts, 10, seed=4)
    b = fit.fit_palette(None, colours, counts, 10, seed=4)
    assert np.array_equal(a.palette, b.palette) and a.sse == b.sse
    px = img.reshape(-1, 3).astype(np.int64)
    d = ((px[:, None] - a.palette.astype(np.int64)[None]) ** 2).sum(2)
    assert a.sse == int(d.min(1).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_runner_up_refined_on_a_coarse_near_tie(monkeypatch, seed):
    """A runner-up within RUNNER_UP_GAP of the best coarse error is refined as a second
    finalist: with an unbounded gap the fit is the two-finalist fit, with none the
    one-finalist fit, and the two-finalist fit is never worse."""
    img = photo_like(90, 110, seed=20 + seed)
    colours, counts = _hist(img)

    def run(finalists, gap):
        monkeypatch.setattr(DenseHistogram, "finalists", lambda self, k: finalists)
        monkeypatch.setattr(fit.tuning, "RUNNER_UP_GAP", gap)
        return fit.fit_palette(None, colours, counts, 8, seed=seed, restarts=2)

    always, never, two = run(1, np.inf), run(1, -1.0), run(2, -1.0)
    assert np.array_equal(always.palette, two.palette) and always.sse == two.sse
    assert always.sse <= never.sse


def test_fit_at_least_as_good_as_single_seeding_without_moves():
    img = photo_like(80, 80, seed=10)
    colours, counts = _hist(img)
    full = fit.fit_palette(None, colours, counts, 16, seed=0)
    bare = fit.fit_palette(None, colours, counts, 16, seed=0, restarts=0, swaps=0)
    assert full.sse <= bare.sse


def test_sample_fit_modes():
    img = photo_like(40, 40, seed=12)
    colours, counts = _hist(img)
    sample = img.reshape(-1, 3)
    with_sample = fit.fit_palette(sample, colours, counts, 6, seed=0, sample_fit="always")
    assert with_sample.sample_inertia is not None
    auto = fit.fit_palette(sample, colours, counts, 6, seed=0)  # small image: no dask-ml
    assert auto.sample_inertia is None
    from kquant.errors import ParameterError

    with pytest.raises(ParameterError):
        fit.fit_palette(sample, colours, counts, 6, sample_fit="sometimes")
