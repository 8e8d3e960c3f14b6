"""``kquant export STORE OUT.tif --cog``: read back with rasterio (GDAL): a COG, the palette
as colour table, the nodata index, the georeferencing, overviews by mode down to one tile
(numpy oracle), full resolution equal to the store and to ``kquant decode``."""

import subprocess
import sys

import numpy as np
import pytest
import rasterio
from helpers import UTM33, WGS84, photo_like, write_geotiff

import kquant
from kquant.params import QuantizeParams

H, W, COLLAR = 1100, 1300, 230


def gdal_mode2x2(a: np.ndarray, nodata: int) -> np.ndarray:
    """The overview GDAL's MODE resampling makes of ``a`` at factor 2: each pixel the most
    frequent value of its 2x2 block (cut by the edge: its own pixels) other than ``nodata``
    (``nodata`` only where the whole block is), ties to the value that reaches the top
    count first in row-major order."""
    h, w = a.shape
    out = np.empty((-(-h // 2), -(-w // 2)), a.dtype)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            counts: dict = {}
            best, top = None, 0
            block = a[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].ravel()
            if (block != nodata).any():
                block = block[block != nodata]
            for v in block.tolist():
                counts[v] = counts.get(v, 0) + 1
                if counts[v] > top:
                    best, top = v, counts[v]
            out[i, j] = best
    return out


@pytest.fixture(
    scope="module",
    params=[(UTM33, True, "deflate"), (WGS84, False, "zstd")],
    ids=["projected-tiled-deflate", "geographic-striped-zstd"],
)
def cog(request, tmp_path_factory):
    (crs, transform), tiled, compress = request.param
    tmp = tmp_path_factory.mktemp("cog")
    img = photo_like(H, W, seed=7)
    rgba = np.dstack([img, np.full((H, W), 255, np.uint8)])
    rgba[:COLLAR, :, 3] = 0
    src = write_geotiff(tmp / "s.tif", rgba, crs=crs, transform=transform, tiled=tiled)
    store = tmp / "s.kquant"
    kquant.quantize(src, store, QuantizeParams(k=16, restarts=0, chunk=384))
    out = tmp / "s.cog.tif"
    proc = subprocess.run(
        [sys.executable, "-m", "kquant", "export", str(store), str(out), "--cog"]
        + ["--compress", compress],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return src, store, out, compress


def test_cog_structure_colour_table_nodata_and_georeferencing(cog):
    src, store, out, compress = cog
    st = kquant.open_store(store)
    with rasterio.open(src) as s, rasterio.open(out) as d:
        assert d.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert d.compression.value.lower() == compress
        assert d.count == 1 and d.dtypes == ("uint8",) and d.block_shapes == [(512, 512)]
        assert d.crs == s.crs and d.transform == s.transform
        assert d.nodata == st.meta.nodata_index == 15
        table = d.colormap(1)
        for i, colour in enumerate(st.palette.tolist()):
            assert table[i] == (*colour, 0 if i == 15 else 255)


def test_full_resolution_is_the_labels_and_the_decode(cog, tmp_path):
    _, store, out, _ = cog
    st = kquant.open_store(store)
    labels = np.asarray(st.labels.compute())
    proc = subprocess.run(
        [sys.executable, "-m", "kquant", "decode", str(store), str(tmp_path / "d.tif")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(out) as d, rasterio.open(tmp_path / "d.tif") as rgb:
        full = d.read(1)
        assert np.array_equal(full, labels)
        table = np.array([d.colormap(1)[i] for i in range(len(st.palette))], np.uint8)
        decoded = np.moveaxis(rgb.read(), 0, 2)
        assert decoded.shape[2] == 4  # masked pixels: alpha 0
        assert np.array_equal(table[full], decoded)
        assert (decoded[:COLLAR, :, 3] == 0).all() and (decoded[COLLAR:, :, 3] == 255).all()
        assert rgb.crs == d.crs and rgb.transform == d.transform


def test_overviews_are_modes_down_to_one_tile(cog):
    _, store, out, _ = cog
    labels = np.asarray(kquant.open_store(store).labels.compute())
    with rasterio.open(out) as d:
        factors = d.overviews(1)
        assert factors == [2, 4]
        below = labels
        for f in factors:
            shape = (-(-H // f), -(-W // f))
            ov = d.read(1, out_shape=shape)
            expected = gdal_mode2x2(below, 15)
            assert np.array_equal(ov, expected), f"overview {f}"
            below = ov
        assert max(below.shape) <= 512  # the last one is one tile


def test_cog_of_a_store_without_georeferencing_or_mask(tmp_path):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "p.png", photo_like(80, 100))
    kquant.quantize(tmp_path / "p.png", tmp_path / "p.kquant", QuantizeParams(k=4))
    from kquant import export

    out = export.export(tmp_path / "p.kquant", tmp_path / "p.tif", cog=True)
    with rasterio.open(out) as d:
        assert d.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert d.crs is None and d.nodata is None and d.overviews(1) == []
        st = kquant.open_store(tmp_path / "p.kquant")
        assert np.array_equal(d.read(1), np.asarray(st.labels.compute()))


def test_quantize_export_cog_writes_it_next_to_the_store(tmp_path):
    src = write_geotiff(tmp_path / "e.tif", photo_like(300, 400), block=128)
    proc = subprocess.run(
        [sys.executable, "-m", "kquant", "quantize", str(src), str(tmp_path / "e.kquant")]
        + ["-k", "8", "--export", "cog"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"export     {tmp_path / 'e.cog.tif'}" in proc.stdout
    with rasterio.open(src) as s, rasterio.open(tmp_path / "e.cog.tif") as d:
        assert d.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert d.crs == s.crs and d.transform == s.transform
        labels = np.asarray(kquant.open_store(tmp_path / "e.kquant").labels.compute())
        assert np.array_equal(d.read(1), labels)
