"""Run options end to end: perceptual spaces, dithered stores over chunkings."""

import numpy as np
import pytest
from helpers import photo_like
from oracles import nearest_oracle

import kquant
from kquant.colour import spaces
from kquant.label import dither, nearest_in_space
from kquant.params import QuantizeParams


def test_lab_mode_lowers_the_perceptual_error(tmp_path):
    import imageio.v3 as iio

    img = photo_like(96, 120, seed=21)
    src = tmp_path / "p.png"
    iio.imwrite(src, img)
    lab_err = {}
    for space in ("rgb", "lab"):
        res = kquant.quantize(src, tmp_path / f"{space}.kq", QuantizeParams(k=12, space=space))
        st = kquant.open_store(res.target)
        labels = np.asarray(st.labels.compute())
        # labels are the nearest entries in that space
        assert np.array_equal(
            labels.ravel(), nearest_in_space.nearest(img.reshape(-1, 3), st.palette, space)
        )
        diff = spaces.from_rgb(img, "lab") - spaces.from_rgb(st.palette[labels], "lab")
        lab_err[space] = float((diff**2).sum())
        assert st.meta.params["space"] == space
    assert lab_err["lab"] < lab_err["rgb"]


@pytest.mark.parametrize("method", ["bayer", "blue-noise"])
def test_dithered_store_is_the_same_over_chunkings(tmp_path, method):
    import imageio.v3 as iio

    img = photo_like(70, 90, seed=15)
    src = tmp_path / "p.png"
    iio.imwrite(src, img)
    labels = []
    for chunk in (16, 40, None):
        res = kquant.quantize(
            src,
            tmp_path / f"c{chunk}.kq",
            QuantizeParams(k=6, chunk=chunk, dither=method, restarts=0),
        )
        st = kquant.open_store(res.target)
        labels.append((st.palette, np.asarray(st.labels.compute())))
        assert st.meta.metrics["dither_amount"] == pytest.approx(dither.amount(st.palette))
    for pal, lab in labels[1:]:
        assert np.array_equal(pal, labels[0][0]) and np.array_equal(lab, labels[0][1])
    pal, lab = labels[0]
    expect = dither.label_block(img, pal, dither=method, dither_amount=dither.amount(pal))
    assert np.array_equal(lab, expect)
    assert not np.array_equal(lab, nearest_oracle(img, pal))
