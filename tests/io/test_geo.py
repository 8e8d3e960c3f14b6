"""Georeferencing of GeoTIFF sources (rasterio fixtures): read, kept in the store, shown by
``kquant info``; without rasterio a GeoTIFF is read as a TIFF with a one-line warning."""

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from helpers import UTM33, WGS84, photo_like, write_geotiff

import kquant
from kquant.params import QuantizeParams

CASES = [
    pytest.param(UTM33, True, id="projected-tiled"),
    pytest.param(UTM33, False, id="projected-striped"),
    pytest.param(WGS84, True, id="geographic-tiled"),
    pytest.param(WGS84, False, id="geographic-striped"),
]


@pytest.mark.parametrize(("georef", "tiled"), CASES)
def test_store_keeps_crs_and_transform(tmp_path, georef, tiled):
    crs, transform = georef
    src = write_geotiff(
        tmp_path / "g.tif",
        photo_like(200, 264, seed=3),
        crs=crs,
        transform=transform,
        tiled=tiled,
        block=128,
    )
    info = kquant.inspect_image(src)
    assert info.geo is not None and info.geo.code == crs
    res = kquant.quantize(src, tmp_path / "g.kquant", QuantizeParams(k=8, restarts=0))
    meta = kquant.read_meta(res.target)
    with rasterio.open(src) as ds:
        assert rasterio.crs.CRS.from_wkt(meta.geo["proj:wkt2"]) == ds.crs
        assert meta.geo["proj:code"] == crs
        assert tuple(meta.geo["spatial:transform"]) == tuple(ds.transform)[:6]
        left, bottom, right, top = ds.bounds
        assert meta.geo["spatial:bbox"] == pytest.approx([left, bottom, right, top])
    assert meta.geo["spatial:shape"] == [200, 264]
    group = json.loads((tmp_path / "g.kquant" / "zarr.json").read_text())["attributes"]
    assert group["proj:code"] == crs  # also where GeoZarr readers look


def test_plain_tiff_and_png_have_no_georeferencing(tmp_path):
    import tifffile

    img = photo_like(64, 64)
    tifffile.imwrite(tmp_path / "p.tif", img)
    res = kquant.quantize(tmp_path / "p.tif", tmp_path / "p.kquant", QuantizeParams(k=4))
    meta = kquant.read_meta(res.target)
    assert meta.geo is None and "geo" not in meta.to_json()
    assert kquant.inspect_image(tmp_path / "p.tif").geo is None


def test_info_shows_crs_and_transform(tmp_path):
    src = write_geotiff(tmp_path / "g.tif", photo_like(64, 80), crs="EPSG:32633")
    kquant.quantize(src, tmp_path / "g.kquant", QuantizeParams(k=4, restarts=0))
    out = subprocess.run(
        [sys.executable, "-m", "kquant", "info", str(tmp_path / "g.kquant")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "crs        EPSG:32633  WGS 84 / UTM zone 33N" in out
    assert "transform  pixel 0.5 x -0.5, top-left corner at (500000, 5200000)" in out


def test_without_rasterio_a_geotiff_reads_as_today_with_a_warning(tmp_path):
    src = write_geotiff(tmp_path / "g.tif", photo_like(64, 80), crs="EPSG:32633")
    code = (
        "import sys; sys.modules['rasterio'] = None\n"  # rasterio cannot be imported
        "from kquant.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "quantize", str(src), str(tmp_path / "g.kquant"), "-k", "4"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("kquant: warning: ") and "georeferencing is dropped" in lines[0]
    meta = kquant.read_meta(tmp_path / "g.kquant")
    assert meta.geo is None
    with rasterio.open(src) as ds:  # the pixels are read as from any TIFF
        rgb = np.moveaxis(ds.read(), 0, 2)
    res = kquant.quantize(src, tmp_path / "h.kquant", QuantizeParams(k=4))
    assert kquant.open_store(tmp_path / "h.kquant").palette.tolist() == (
        kquant.open_store(tmp_path / "g.kquant").palette.tolist()
    )
    assert (res.meta.height, res.meta.width) == rgb.shape[:2]


def test_without_rasterio_cog_export_and_geotiff_decode_say_so(tmp_path):
    src = write_geotiff(tmp_path / "g.tif", photo_like(64, 80), crs="EPSG:32633")
    kquant.quantize(src, tmp_path / "g.kquant", QuantizeParams(k=4, restarts=0))
    code = (
        "import sys; sys.modules['rasterio'] = None\n"
        "from kquant.cli import main; sys.exit(main(sys.argv[1:]))"
    )

    def run(*args):
        return subprocess.run(
            [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True
        )

    proc = run("export", tmp_path / "g.kquant", tmp_path / "c.tif", "--cog")
    assert proc.returncode == 2 and not (tmp_path / "c.tif").exists()
    assert proc.stderr.strip() == "kquant: error: --cog needs rasterio: install kquant[geo]"
    proc = run("decode", tmp_path / "g.kquant", tmp_path / "d.tif")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == (
        "kquant: warning: d.tif: the store's georeferencing is not written (install kquant[geo])"
    )
    assert (tmp_path / "d.tif").exists()
