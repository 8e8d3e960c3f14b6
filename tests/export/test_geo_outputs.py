"""Outputs of georeferenced stores: RGB GeoTIFF decodes (whole, windows, levels) carry the
store's CRS and the shifted transform; the xarray view has CRS coordinates and a
rioxarray-compatible ``spatial_ref``."""

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers import UTM33, WGS84, photo_like, write_geotiff
from rasterio.windows import Window

import kquant
from kquant import export
from kquant.params import QuantizeParams


@pytest.fixture(params=[UTM33, WGS84], ids=["projected", "geographic"])
def geo_store(request, tmp_path):
    crs, transform = request.param
    src = write_geotiff(
        tmp_path / "g.tif", photo_like(300, 420, seed=5), crs=crs, transform=transform, block=128
    )
    params = QuantizeParams(k=8, restarts=0, chunk=128, pyramid=True)
    res = kquant.quantize(src, tmp_path / "g.kquant", params)
    return src, res.target


def test_decode_is_a_geotiff_of_the_store(tmp_path, geo_store):
    src, store = geo_store
    out, _ = export.decode(store, tmp_path / "d.tif")
    rgb = np.asarray(kquant.open_store(store).rgb.compute())
    with rasterio.open(src) as s, rasterio.open(out) as d:
        assert d.crs == s.crs and d.transform == s.transform
        assert d.count == 3 and d.dtypes == ("uint8",) * 3
        assert np.array_equal(np.moveaxis(d.read(), 0, 2), rgb)


@pytest.mark.parametrize("window", [(100, 200, 50, 300), (7, 299, 13, 419), (0, 1, 0, 1)])
def test_window_decode_carries_the_shifted_transform(tmp_path, geo_store, window):
    src, store = geo_store
    y0, y1, x0, x1 = window
    out, _ = export.decode(store, tmp_path / "w.tif", window=window)
    with rasterio.open(src) as s, rasterio.open(out) as d:
        assert d.crs == s.crs
        assert d.transform == s.window_transform(Window(x0, y0, x1 - x0, y1 - y0))
        full = np.asarray(kquant.open_store(store).rgb.compute())
        assert np.array_equal(np.moveaxis(d.read(), 0, 2), full[y0:y1, x0:x1])


def test_level_decode_transform_scales_the_pixels(tmp_path, geo_store):
    src, store = geo_store
    out, _ = export.decode(store, tmp_path / "l.tif", level=1, window=(10, 60, 20, 90))
    with rasterio.open(src) as s, rasterio.open(out) as d:
        assert d.transform == s.transform @ Affine.translation(40, 20) @ Affine.scale(2)
        assert d.crs == s.crs


def test_xarray_has_crs_coordinates_and_spatial_ref(geo_store):
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    src, store = geo_store
    ds = kquant.open_store(store).to_xarray()
    with rasterio.open(src) as s:
        assert ds.rio.crs == s.crs
        assert ds.labels.rio.transform() == s.transform
        xs, _ = s.xy(np.zeros(s.width, int), np.arange(s.width))  # pixel centres
        _, ys = s.xy(np.arange(s.height), np.zeros(s.height, int))
        assert np.allclose(ds.x.values, xs) and np.allclose(ds.y.values, ys)
        assert ds.labels.attrs["grid_mapping"] == "spatial_ref"
        lv = xr.open_dataset(store, engine="kquant", level=1)
        assert lv.rio.crs == s.crs
        assert lv.labels.rio.transform() == s.transform @ Affine.scale(2)
