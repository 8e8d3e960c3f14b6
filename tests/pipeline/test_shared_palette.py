"""kquant.pipeline.fit_shared: one palette over several images (no Prefect involved)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import photo_like, write_png


@pytest.fixture
def halves(tmp_path):
    img = photo_like(96, 128, seed=51)
    a = write_png(tmp_path / "top.png", img[:48])
    b = write_png(tmp_path / "bottom.png", img[48:])
    whole = write_png(tmp_path / "whole.png", img)
    return a, b, whole


def test_exact_mode_merges_the_histograms(halves):
    from kquant import pipeline
    from kquant.params import QuantizeParams
    from kquant.pipeline import shared_palette

    a, b, whole = halves
    params = QuantizeParams(k=6, sample_size=4000, mode="exact")
    res = shared_palette.fit_shared([a, b], params)
    ref = pipeline.fit(whole, params)
    assert res.n_pixels == 96 * 128 and res.n_unique == ref.n_unique  # exact union histogram
    assert res.palette.shape == (6, 3) and res.palette.dtype == np.uint8
    assert res.sse <= 1.02 * ref.sse  # as good as fitting the stitched image
    # sse is the exact error of the palette over both images
    from kquant.io.readers import open_image
    from kquant.label import assign

    err = 0
    for p in (a, b):
        px = np.asarray(open_image(p).compute()).reshape(-1, 3)
        lab = assign.nearest_block(px[None], res.palette)[0]
        err += int(((px.astype(np.int64) - res.palette[lab].astype(np.int64)) ** 2).sum())
    assert err == res.sse


def test_sample_mode_reads_a_bounded_sample(halves):
    from kquant.params import QuantizeParams
    from kquant.pipeline import shared_palette

    a, b, _ = halves
    res = shared_palette.fit_shared([a, b], QuantizeParams(k=5, sample_size=3000, mode="sample"))
    assert res.palette.shape == (5, 3) and res.mode == "sample"
    assert res.n_pixels <= 3000


def test_no_images_is_a_parameter_error():
    from kquant.errors import ParameterError
    from kquant.pipeline import shared_palette

    with pytest.raises(ParameterError, match="no images"):
        shared_palette.fit_shared([])


@pytest.mark.parametrize("options", [{"space": "lab"}, {"target_psnr": 24.0, "k": 32}])
def test_space_and_target_psnr_as_for_one_image(halves, options):
    """In exact mode the union of the halves' histograms is the whole image's: the shared fit
    gives the palette that pipeline.fit gives the stitched image, with the same options."""
    from kquant import pipeline
    from kquant.params import QuantizeParams
    from kquant.pipeline import shared_palette

    a, b, whole = halves
    params = QuantizeParams(**({"k": 6, "mode": "exact"} | options))
    res = shared_palette.fit_shared([a, b], params)
    ref = pipeline.fit(whole, params)
    assert np.array_equal(res.palette, ref.palette) and res.sse == ref.sse
    plain = shared_palette.fit_shared([a, b], QuantizeParams(k=params.k, mode="exact"))
    if "space" in options:  # the perceptual fit is another palette
        assert not np.array_equal(res.palette, plain.palette)
    else:  # the smallest K that reaches the target
        assert res.target_met and len(res.palette) < params.k
        assert 10 * np.log10(255**2 * 3 * res.n_pixels / res.sse) >= 24.0
