"""The smallest K that reaches a target PSNR."""

import numpy as np
from helpers import photo_like

from kquant import fit
from kquant.colour import histogram


def _hist(img):
    c, n = np.unique(histogram.encode(img).ravel(), return_counts=True)
    return c.astype(np.uint32), n.astype(np.int64)


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
