"""Fit modes: sample mode with the lookup table, the auto thresholds."""

import numpy as np
import pytest
import tifffile
from helpers import photo_like
from oracles import nearest_oracle

import kquant
from kquant import QuantizeParams
from kquant.label import lookup


@pytest.fixture(scope="module")
def palette():
    return np.random.default_rng(7).integers(0, 256, size=(16, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def table(palette):
    return lookup.build(palette)


@pytest.mark.parametrize("chunk", [64, 200])
def test_sample_mode_with_lookup_table(tmp_path, monkeypatch, chunk):
    img = photo_like(300, 410, seed=5)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, img, tile=(64, 64), compression="zlib", photometric="rgb")
    monkeypatch.setattr(
        "kquant.pipeline.plan.LUT_MIN_PIXELS", 0
    )  # force the table path on a small image
    res = kquant.quantize(
        path, tmp_path / "s.kq", QuantizeParams(k=16, mode="sample", chunk=chunk, sample_size=5000)
    )
    st = kquant.open_store(tmp_path / "s.kq")
    assert res.fit.mode == "sample" and st.meta.metrics["fit_mode"] == "sample"
    assert st.meta.metrics["assign"] == "lut"
    ref = nearest_oracle(img, st.palette)
    assert np.array_equal(st.labels.compute(), ref)
    assert st.meta.metrics["sse"] == int(((img.astype(np.int64) - st.palette[ref]) ** 2).sum())
    st.verify()


def test_auto_mode_thresholds():
    p = QuantizeParams()
    from kquant.params import EXACT_MAX_PIXELS

    assert p.fit_mode(EXACT_MAX_PIXELS) == "exact"
    assert p.fit_mode(EXACT_MAX_PIXELS + 1) == "sample"
    assert QuantizeParams(mode="exact").fit_mode(10**10) == "exact"
    with pytest.raises(kquant.KquantError):
        QuantizeParams(mode="fast")
