"""Masked pixels (``nodata``): one reserved palette index (the last), left out of the fit,
the counts and the metrics; decoded transparent or filled; bad masks refused in one line."""

import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from helpers import UTM33, WGS84, photo_like, write_geotiff

import kquant
from kquant.errors import InputError
from kquant.params import QuantizeParams

COLLAR = 40  # the top rows are transparent


def _collar(h=200, w=264, seed=3):
    img = photo_like(h, w, seed=seed)
    rgba = np.dstack([img, np.full((h, w), 255, np.uint8)])
    rgba[:COLLAR, :, 3] = 0
    rgba[:COLLAR, :, :3] = 17  # what a transparent collar hides: never fitted nor counted
    return img, rgba


def _psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


SOURCES = [
    pytest.param("geotiff-tiled", UTM33, id="projected-tiled"),
    pytest.param("geotiff-striped", WGS84, id="geographic-striped"),
    pytest.param("png", None, id="png-in-memory"),
]


def _write(kind, georef, path, img):
    if kind == "png":
        iio.imwrite(path.with_suffix(".png"), img)
        return path.with_suffix(".png")
    crs, transform = georef
    return write_geotiff(
        path.with_suffix(".tif"),
        img,
        crs=crs,
        transform=transform,
        tiled=kind.endswith("tiled"),
        block=128,
    )


@pytest.mark.parametrize(("kind", "georef"), SOURCES)
def test_collar_palette_is_the_valid_pixels_palette(tmp_path, kind, georef):
    img, rgba = _collar()
    chunk = None if kind == "png" else 64
    src = _write(kind, georef, tmp_path / "a", rgba)
    res = kquant.quantize(src, tmp_path / "a.kquant", QuantizeParams(k=16, restarts=0, chunk=chunk))
    valid_only = _write(kind, georef, tmp_path / "v", img[COLLAR:])
    ref = kquant.quantize(
        valid_only, tmp_path / "v.kquant", QuantizeParams(k=15, restarts=0, chunk=chunk)
    )
    meta = res.meta
    # K=16 with a mask: 15 colours + the reserved index, in 4 bits
    assert (meta.n_colors, meta.bits, meta.nodata_index) == (16, 4, 15)
    assert np.array_equal(res.palette[:-1], ref.palette)
    assert meta.metrics["masked_pixels"] == COLLAR * img.shape[1]
    assert meta.metrics["n_pixels"] == img[COLLAR:].shape[0] * img.shape[1]
    assert meta.metrics["palette_counts"][15] == COLLAR * img.shape[1]
    st = kquant.open_store(res.target)
    labels = np.asarray(st.labels.compute())
    assert (labels[:COLLAR] == 15).all() and (labels[COLLAR:] != 15).all()
    assert st.to_xarray().labels.attrs["nodata"] == 15
    recon = st.palette[labels]
    assert meta.metrics["psnr"] == pytest.approx(_psnr(recon[COLLAR:], img[COLLAR:]), abs=1e-9)
    assert meta.metrics["psnr"] == pytest.approx(ref.meta.metrics["psnr"], abs=1e-9)


def test_gdal_nodata_value_masks_those_pixels(tmp_path):
    img = photo_like(96, 128, seed=1)
    img[img.sum(axis=2) == 0] = 1  # no valid pixel is the nodata value
    img[10:30, 20:60] = 0
    src = write_geotiff(tmp_path / "n.tif", img, nodata=0, block=64)
    assert kquant.inspect_image(src).nodata == 0
    res = kquant.quantize(src, tmp_path / "n.kquant", QuantizeParams(k=8, restarts=0, chunk=64))
    labels = np.asarray(kquant.open_store(res.target).labels.compute())
    assert res.meta.nodata_index == 7 and res.meta.metrics["masked_pixels"] == 20 * 40
    assert ((labels == 7) == (img.sum(axis=2) == 0)).all()


def test_nodata_none_composites_as_before(tmp_path):
    img, rgba = _collar(64, 80)
    src = write_geotiff(tmp_path / "a.tif", rgba, block=64)
    res = kquant.quantize(
        src, tmp_path / "a.kquant", QuantizeParams(k=8, restarts=0, nodata="none")
    )
    assert res.meta.nodata is None and res.meta.n_colors == 8
    assert "masked_pixels" not in res.meta.metrics
    assert res.meta.metrics["n_pixels"] == 64 * 80


def test_opaque_alpha_reserves_nothing(tmp_path):
    img, rgba = _collar(64, 80)
    rgba[..., 3] = 255
    iio.imwrite(tmp_path / "o.png", rgba)
    res = kquant.quantize(tmp_path / "o.png", tmp_path / "o.kquant", QuantizeParams(k=8))
    assert res.meta.nodata is None and res.meta.n_colors == 8


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "kquant", *map(str, args)], capture_output=True, text=True
    )


def test_cli_colour_rule_decode_transparent_or_filled_and_info(tmp_path):
    img = photo_like(64, 96, seed=2)
    img[img.sum(axis=2) == 3 * 255] = 254
    img[:, :20] = 255  # a white margin, masked by --nodata 255,255,255
    iio.imwrite(tmp_path / "m.png", img)
    store = tmp_path / "m.kquant"
    proc = _run("quantize", tmp_path / "m.png", store, "-k", "8", "--nodata", "255,255,255")
    assert proc.returncode == 0, proc.stderr
    proc = _run("decode", store, tmp_path / "d.png")
    assert proc.returncode == 0, proc.stderr
    rgba = iio.imread(tmp_path / "d.png")
    assert rgba.shape == (64, 96, 4)
    assert (rgba[:, :20, 3] == 0).all() and (rgba[:, 20:, 3] == 255).all()
    proc = _run("decode", store, tmp_path / "f.tif", "--fill", "0,255,0")
    assert proc.returncode == 0, proc.stderr
    filled = iio.imread(tmp_path / "f.tif")
    assert filled.shape == (64, 96, 3) and (filled[:, :20] == (0, 255, 0)).all()
    info = _run("info", store).stdout
    assert (
        "nodata     index 7 (transparent): 1280 px masked (20.8 %); 7 colours + 1 reserved" in info
    )


def test_preview_shows_masked_pixels_as_a_checkerboard(tmp_path):
    from kquant.export.preview import checkerboard

    _, rgba = _collar(64, 64)
    iio.imwrite(tmp_path / "a.png", rgba)
    kquant.quantize(
        tmp_path / "a.png",
        tmp_path / "a.kquant",
        QuantizeParams(k=8),
        preview_path=tmp_path / "p.png",
    )
    pic = iio.imread(tmp_path / "p.png")
    board = checkerboard(64, 64)
    assert np.array_equal(pic[:COLLAR, :64], board[:COLLAR])  # original side
    assert np.array_equal(pic[:COLLAR, 64 + 8 : 128 + 8], board[:COLLAR])  # reconstruction


def test_every_pixel_masked_is_a_one_line_error(tmp_path):
    _, rgba = _collar(64, 64)
    rgba[..., 3] = 0
    src = write_geotiff(tmp_path / "t.tif", rgba, block=64)
    proc = _run("quantize", src, tmp_path / "t.kquant", "-k", "4")
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("kquant: error: ") and "every pixel is masked" in proc.stderr
    assert not (tmp_path / "t.kquant").exists()


def test_nodata_outside_the_data_type_is_a_one_line_error(tmp_path):
    import tifffile

    img = photo_like(32, 32)
    tifffile.imwrite(tmp_path / "b.tif", img, extratags=[(42113, "s", 0, "300", True)])
    with pytest.raises(InputError, match="nodata value 300 lies outside its uint8 samples"):
        kquant.quantize(tmp_path / "b.tif", tmp_path / "b.kquant", QuantizeParams(k=4))
    proc = _run("quantize", tmp_path / "b.tif", tmp_path / "b.kquant", "-k", "4")
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "b.kquant").exists()
    res = kquant.quantize(  # --nodata none does not use it
        tmp_path / "b.tif", tmp_path / "c.kquant", QuantizeParams(k=4, nodata="none")
    )
    assert res.meta.nodata is None


def test_imposed_palette_gets_the_reserved_entry_after_its_colours(tmp_path):
    _, rgba = _collar(64, 80)
    src = write_geotiff(tmp_path / "a.tif", rgba, block=64)
    pal = np.array([[0, 0, 0], [250, 250, 250], [200, 30, 30], [30, 90, 200], [90, 160, 60]])
    res = kquant.quantize(src, tmp_path / "a.kquant", QuantizeParams(), palette=pal)
    st = kquant.open_store(res.target)
    assert st.meta.nodata_index == 5 and np.array_equal(st.palette[:5], pal)
    labels = np.asarray(st.labels.compute())
    assert (labels[:COLLAR] == 5).all() and (labels[COLLAR:] < 5).all()
    # a store as the palette: its colours, not its reserved entry
    again = kquant.quantize(src, tmp_path / "b.kquant", QuantizeParams(), palette=res.target)
    assert np.array_equal(kquant.open_store(again.target).palette, st.palette)


@pytest.mark.slow
@pytest.mark.parametrize("dither", ["none", "bayer"])
def test_lookup_table_path_labels_valid_pixels_as_without_the_mask(tmp_path, dither):
    """From 2^20 pixels the write pass labels through the lookup table: blocks cut by the
    collar and whole valid blocks give the labels of the valid rows quantized alone onto
    the same colours (dithering in global coordinates: a collar of whole 8-row periods)."""
    img = photo_like(1080, 1000, seed=7)
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    rgba[:232, :, 3] = 0
    src = write_geotiff(tmp_path / "l.tif", rgba)
    params = QuantizeParams(k=16, restarts=0, chunk=384, dither=dither)
    res = kquant.quantize(src, tmp_path / "l.kquant", params)
    assert res.meta.metrics["assign"] == "lut"
    crop = write_geotiff(tmp_path / "c.tif", img[232:])
    ref = kquant.quantize(crop, tmp_path / "c.kquant", params, palette=res.palette[:15])
    labels = np.asarray(kquant.open_store(res.target).labels.compute())
    assert (labels[:232] == 15).all()
    assert np.array_equal(labels[232:], np.asarray(kquant.open_store(ref.target).labels.compute()))
    assert res.meta.metrics["sse"] == ref.meta.metrics["sse"]


def test_sample_mode_reserves_the_entry_whenever_pixels_may_be_masked(tmp_path):
    img, rgba = _collar(200, 264)
    src = write_geotiff(tmp_path / "s.tif", rgba, block=128)
    params = QuantizeParams(k=8, mode="sample", sample_size=8000, restarts=0)
    res = kquant.quantize(src, tmp_path / "s.kquant", params)
    labels = np.asarray(kquant.open_store(res.target).labels.compute())
    assert res.meta.nodata_index == 7 and res.meta.metrics["masked_pixels"] == COLLAR * 264
    assert (labels[:COLLAR] == 7).all() and (labels[COLLAR:] != 7).all()
    rgba[..., 3] = 255  # an alpha channel without a transparent pixel: the sample cannot tell
    opaque = write_geotiff(tmp_path / "o.tif", rgba, block=128)
    res = kquant.quantize(opaque, tmp_path / "o.kquant", params)
    assert res.meta.nodata_index == 7 and res.meta.metrics["masked_pixels"] == 0
