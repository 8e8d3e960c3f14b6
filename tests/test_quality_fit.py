"""Issue 5: the faster, better fit (coarse seeding, swap moves, Hamerly-bounded Lloyd)."""

import numpy as np
import pytest

from helpers import photo_like
from kquant import fit
from kquant.colour import histogram
from kquant.fit.histograms import DenseHistogram
from oracles import pixel_lloyd


def _hist(img):
    c, n = np.unique(histogram.encode(img).ravel(), return_counts=True)
    return c.astype(np.uint32), n.astype(np.int64)


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


def test_target_psnr_smallest_k():
    img = photo_like(50, 60, seed=13)
    colours, counts = _hist(img)
    res, met = fit.fit_for_psnr(None, colours, counts, 24.0, k_max=64, seed=0)
    k = len(res.palette)
    assert met and 10 * np.log10(255**2 / res.mse) >= 24.0
    smaller = fit.fit_palette(None, colours, counts, k - 1, seed=0)
    assert 10 * np.log10(255**2 / smaller.mse) < 24.0


def test_target_psnr_unreachable_gives_k_max():
    img = photo_like(50, 60, seed=13)
    colours, counts = _hist(img)
    res, met = fit.fit_for_psnr(None, colours, counts, 80.0, k_max=8, seed=0)
    assert not met and len(res.palette) == 8


def test_target_psnr_lossless_when_few_colours():
    rng = np.random.default_rng(1)
    cols = rng.integers(0, 256, size=(5, 3), dtype=np.uint8)
    img = cols[rng.integers(0, 5, size=(20, 20))]
    colours, counts = _hist(img)
    res, met = fit.fit_for_psnr(None, colours, counts, 60.0, k_max=256, seed=0)
    assert met and res.lossless and len(res.palette) == 5


def test_coarse_histogram_splits_heavy_cells():
    """A dense dark region (one 5-bit cell) must offer several points to seed from."""
    rng = np.random.default_rng(3)
    dark = rng.integers(0, 8, size=(5000, 3))          # all in the cell (0, 0, 0)
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
