"""Georeferencing that kquant refuses in one line (a CRS GDAL cannot parse) or keeps as it
is (a rotated, sheared transform)."""

import subprocess
import sys

import numpy as np
import pytest
import rasterio
import tifffile
from affine import Affine
from helpers import photo_like, write_geotiff

import kquant
from kquant import export
from kquant.errors import InputError
from kquant.params import QuantizeParams


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "kquant", *map(str, args)], capture_output=True, text=True
    )


def test_a_crs_gdal_cannot_parse_is_a_one_line_error(tmp_path):
    # GeoKeys: projected model, pixel-is-area, ProjectedCSTypeGeoKey 9999 (no such EPSG CRS);
    # GDAL falls back to an unnamed local CRS, which would place the image nowhere
    keys = [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 9999]
    path = tmp_path / "bad.tif"
    tifffile.imwrite(
        path,
        photo_like(32, 32),
        extratags=[
            (33550, "d", 3, (0.5, 0.5, 0.0), True),
            (33922, "d", 6, (0, 0, 0, 500000.0, 5200000.0, 0), True),
            (34735, "H", len(keys), keys, True),
        ],
    )
    with pytest.raises(InputError, match="GDAL cannot parse the CRS"):
        kquant.inspect_image(path)
    proc = _run("quantize", path, tmp_path / "bad.kquant", "-k", "4")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("kquant: error: ") and "ProjectedCSTypeGeoKey 9999" in proc.stderr
    assert not (tmp_path / "bad.kquant").exists()


def test_a_rotated_transform_is_kept_through_store_decode_and_cog(tmp_path):
    rotated = (0.5, 0.1, 500000.0, 0.05, -0.5, 5200000.0)
    src = write_geotiff(tmp_path / "r.tif", photo_like(120, 160), transform=rotated, block=64)
    kquant.quantize(src, tmp_path / "r.kquant", QuantizeParams(k=8, restarts=0))
    meta = kquant.read_meta(tmp_path / "r.kquant")
    assert meta.geo["spatial:transform"] == list(rotated)
    info = _run("info", tmp_path / "r.kquant").stdout
    assert "rotation/shear terms 0.1, 0.05" in info
    out, _ = export.decode(tmp_path / "r.kquant", tmp_path / "w.tif", window=(10, 50, 20, 60))
    cog = export.export(tmp_path / "r.kquant", tmp_path / "r.cog.tif", cog=True)
    with rasterio.open(src) as s, rasterio.open(out) as d, rasterio.open(cog) as c:
        assert d.transform == s.transform @ Affine.translation(20, 10)
        assert c.transform == s.transform and c.crs == s.crs
        labels = np.asarray(kquant.open_store(tmp_path / "r.kquant").labels.compute())
        assert np.array_equal(c.read(1), labels)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # while writing
def test_ground_control_points_are_refused_in_one_line(tmp_path):
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    path = tmp_path / "gcp.tif"
    img = photo_like(40, 50)
    gcps = [
        GroundControlPoint(row=0, col=0, x=500000.0, y=5200000.0),
        GroundControlPoint(row=0, col=50, x=500025.0, y=5200001.0),
        GroundControlPoint(row=40, col=0, x=500001.0, y=5199980.0),
    ]
    with rasterio.open(
        path, "w", driver="GTiff", height=40, width=50, count=3, dtype="uint8"
    ) as dst:
        dst.write(np.moveaxis(img, 2, 0))
        dst.gcps = (gcps, CRS.from_epsg(32633))
    proc = _run("quantize", path, tmp_path / "gcp.kquant", "-k", "4")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "ground control points" in proc.stderr and "gdalwarp" in proc.stderr
    assert not (tmp_path / "gcp.kquant").exists()
