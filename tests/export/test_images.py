"""Exports: indexed PNG and palette TIFF round trips; refused outputs."""

import numpy as np
import pytest
from helpers import photo_like

import kquant
from kquant.errors import ParameterError
from kquant.params import QuantizeParams


@pytest.mark.parametrize("k", [2, 5, 16, 200])
def test_export_png_and_tiff_round_trip(tmp_path, k):
    import imageio.v3 as iio
    import tifffile
    from PIL import Image

    from kquant import export

    img = photo_like(300, 270, seed=16)  # more than one 256-px TIFF tile
    src = tmp_path / "p.png"
    iio.imwrite(src, img)
    res = kquant.quantize(src, tmp_path / "s.kq", QuantizeParams(k=k, chunk=128, restarts=0))
    st = kquant.open_store(res.target)
    labels, rgb = np.asarray(st.labels.compute()), np.asarray(st.rgb.compute())
    png = export.export(res.target, tmp_path / "s.png")
    with Image.open(png) as im:
        assert im.mode == "P"
        assert np.array_equal(np.asarray(im), labels)
        assert np.array_equal(np.asarray(im.convert("RGB")), rgb)
    tif = export.export(res.target, tmp_path / "s.tif")
    with tifffile.TiffFile(tif) as tf:
        page = tf.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        assert np.array_equal(page.asarray(), labels)
        cmap = page.colormap
        assert np.array_equal(cmap[:, : len(st.palette)].T // 257, st.palette)
    with Image.open(tif) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), rgb)


def test_export_refuses_bad_suffix_and_existing(tmp_path, photo_png):
    from kquant import export
    from kquant.errors import TargetExistsError

    path, _ = photo_png
    res = kquant.quantize(path, tmp_path / "s.kq", QuantizeParams(k=4, restarts=0))
    with pytest.raises(ParameterError):
        export.export(res.target, tmp_path / "s.jpg")
    out = export.export(res.target, tmp_path / "s.png")
    with pytest.raises(TargetExistsError):
        export.export(res.target, out)
    export.export(res.target, out, overwrite=True)


def test_indexed_png_of_a_masked_store_is_transparent_there(tmp_path):
    """The PNG export (streamed by bands of rows, 600 rows: more than one band) marks the
    nodata index transparent (tRNS) and keeps every label."""
    import imageio.v3 as iio
    from PIL import Image

    from kquant import export

    img = photo_like(600, 90, seed=4)
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    rgba[:50, :, 3] = 0
    iio.imwrite(tmp_path / "a.png", rgba)
    res = kquant.quantize(tmp_path / "a.png", tmp_path / "a.kq", QuantizeParams(k=4, chunk=128))
    labels = np.asarray(kquant.open_store(res.target).labels.compute())
    png = export.export(res.target, tmp_path / "x.png")
    with Image.open(png) as im:
        assert im.mode == "P" and np.array_equal(np.asarray(im), labels)
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
    assert (alpha[:50] == 0).all() and (alpha[50:] == 255).all()
