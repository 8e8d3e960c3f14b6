"""Sources and stores on S3-compatible object storage (moto's server on 127.0.0.1)."""

import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from helpers import moto_s3, photo_like
from oracles import nearest_oracle

import kquant
from kquant import QuantizeParams, pipeline
from kquant.errors import KquantError


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback, with the environment pointing at it; bucket ``kqtest``."""
    with moto_s3(tmp_path_factory.mktemp("moto"), "kqtest") as fs:
        yield fs


def test_store_on_s3_round_trips(s3, photo_png):
    path, img = photo_png
    res = kquant.quantize(
        path, "s3://kqtest/a/photo.kquant", QuantizeParams(k=8, chunk=64, restarts=1)
    )
    assert res.target == "s3://kqtest/a/photo.kquant"
    assert s3.exists("kqtest/a/photo.kquant/zarr.json")
    assert not [p for p in s3.ls("kqtest/a") if "kquant-tmp" in p]
    st = kquant.open_store("s3://kqtest/a/photo.kquant")
    assert np.array_equal(st.labels.compute(), nearest_oracle(img, st.palette))
    assert np.array_equal(st.window(10, 50, 60, 130).compute(), st.rgb.compute()[10:50, 60:130])
    st.verify()
    p = subprocess.run(
        [sys.executable, "-m", "kquant", "info", "s3://kqtest/a/photo.kquant", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    with pytest.raises(KquantError, match="exists"):
        kquant.quantize(path, "s3://kqtest/a/photo.kquant", QuantizeParams(k=8))


@pytest.mark.parametrize("kind", ["tif", "png", "zarr"])
def test_sources_on_s3_equal_local(s3, tmp_path, kind):
    img = photo_like(90, 130, seed=21)
    local = tmp_path / f"img.{kind}"
    if kind == "tif":
        tifffile.imwrite(local, img, tile=(32, 32), compression="zlib", photometric="rgb")
        s3.put(str(local), f"kqtest/src/img.{kind}")
    elif kind == "png":
        iio.imwrite(local, img)
        s3.put(str(local), f"kqtest/src/img.{kind}")
    else:
        import zarr

        z = zarr.create_array(str(local), shape=img.shape, dtype="uint8", chunks=(32, 32, 3))
        z[...] = img
        s3.put(str(local), f"kqtest/src/img.{kind}", recursive=True)
    remote = f"s3://kqtest/src/img.{kind}"
    assert np.array_equal(kquant.open_image(remote, chunks=40).compute(), img)
    if kind == "tif":  # tiles fetched by ranged requests and decoded directly
        from kquant.io import tiff_tiles

        reader = tiff_tiles.open_reader(remote)
        assert reader is not None and np.array_equal(reader[7:83, 5:129], img[7:83, 5:129])
    src = kquant.inspect_image(remote)
    assert src.etag and src.size_bytes > 0
    p = QuantizeParams(k=6, chunk=40, restarts=1)
    a = kquant.quantize(local, tmp_path / "local.kq", p)
    b = kquant.quantize(remote, tmp_path / "remote.kq", p)
    assert np.array_equal(a.palette, b.palette)
    assert a.meta.checksum == b.meta.checksum


def test_failed_overwrite_on_s3_keeps_the_old_store(s3, tmp_path, photo_png):
    path, _ = photo_png
    target = "s3://kqtest/b/photo.kquant"
    kquant.quantize(path, target, QuantizeParams(k=4, restarts=0))
    old = kquant.open_store(target).meta.checksum
    # a tiled TIFF whose later tiles are garbage: the header reads, the write pass fails
    bad = tmp_path / "bad.tif"
    tifffile.imwrite(
        bad, photo_like(256, 256), tile=(64, 64), compression="zlib", photometric="rgb"
    )
    data = bytearray(bad.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4000] = os.urandom(4000)
    bad.write_bytes(bytes(data))
    with pytest.raises(KquantError):
        pipeline.write(
            bad, target, np.zeros((4, 3), np.uint8), QuantizeParams(k=4, chunk=64), overwrite=True
        )
    assert kquant.open_store(target).meta.checksum == old
    assert not [p for p in s3.ls("kqtest/b") if "kquant-tmp" in p]
    # and a successful overwrite replaces it
    kquant.quantize(path, target, QuantizeParams(k=5, restarts=0), overwrite=True)
    assert kquant.open_store(target).meta.n_colors == 5


def test_lock_on_s3_is_exclusive(s3):
    from kquant.store import locking

    target = "s3://kqtest/c/photo.kquant"
    locking.acquire(target)
    try:
        assert s3.exists("kqtest/c/.photo.kquant.kquant-lock")
        # another process's view: our in-process hold does not count for it
        p = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from kquant.store import locking\n"
                "try:\n    locking.acquire(sys.argv[1])\n"
                "except Exception as e:\n    print(type(e).__name__, e); sys.exit(3)",
                target,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 3 and "TargetLockedError" in p.stdout, p.stdout + p.stderr
    finally:
        locking.release(target)
    assert not s3.exists("kqtest/c/.photo.kquant.kquant-lock")


@pytest.mark.slow
def test_store_with_a_pyramid_on_s3(s3, tmp_path):
    """Format 3 through zarr and the packbits codec (no direct writes), levels included;
    then upgraded in place from format 2."""
    from oracles import pyramid_oracle

    img = photo_like(130, 170, seed=9)
    src = tmp_path / "p.tif"
    tifffile.imwrite(src, img, photometric="rgb", tile=(16, 16))
    res = kquant.quantize(
        src, "s3://kqtest/pyr.kquant", QuantizeParams(k=5, chunk=32, pyramid=True)
    )
    st = kquant.open_store("s3://kqtest/pyr.kquant")
    levels = pyramid_oracle(nearest_oracle(img, res.palette), st.meta.levels)
    assert st.meta.levels == 4 and s3.exists("kqtest/pyr.kquant/levels/3/zarr.json")
    for n, lv in enumerate(levels):
        assert np.array_equal(np.asarray(st.level(n)), lv), n
    from kquant.pipeline.upgrade import upgrade
    from kquant.store import format as store_format

    store_format.WRITE_VERSION = 2
    try:
        kquant.quantize(src, "s3://kqtest/old.kquant", QuantizeParams(k=5, chunk=32))
    finally:
        store_format.WRITE_VERSION = store_format.FORMAT_VERSION
    meta, changed = upgrade("s3://kqtest/old.kquant", pyramid=True)
    assert changed and meta.format_version == 3 and meta.levels == 4
    up = kquant.open_store("s3://kqtest/old.kquant")
    for n, lv in enumerate(levels):
        assert np.array_equal(np.asarray(up.level(n)), lv), n
    up.verify()
    assert not [p for p in s3.ls("kqtest") if "kquant-tmp" in p]


def test_geotiff_on_s3_keeps_its_georeferencing_and_mask(s3, tmp_path):
    import rasterio
    from helpers import write_geotiff

    img = photo_like(96, 128, seed=8)
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    rgba[:20, :, 3] = 0
    local = write_geotiff(tmp_path / "g.tif", rgba, block=64)
    s3.put(str(local), "kqtest/geo/g.tif")
    res = kquant.quantize(
        "s3://kqtest/geo/g.tif", tmp_path / "g.kquant", QuantizeParams(k=8, restarts=0)
    )
    with rasterio.open(local) as ds:
        assert res.meta.geo["spatial:transform"] == list(ds.transform)[:6]
        assert res.meta.geo["proj:code"] == "EPSG:32633"
    assert res.meta.nodata_index == 7 and res.meta.metrics["masked_pixels"] == 20 * 128


def test_cog_export_to_s3(s3, tmp_path):
    import rasterio
    from helpers import write_geotiff

    src = write_geotiff(tmp_path / "e.tif", photo_like(96, 128, seed=9), block=64)
    res = kquant.quantize(
        src,
        tmp_path / "e.kquant",
        QuantizeParams(k=8, restarts=0, export="s3://kqtest/cogs/e.tif"),
    )
    assert res.export == "s3://kqtest/cogs/e.tif"
    s3.get("kqtest/cogs/e.tif", str(tmp_path / "back.tif"))
    with rasterio.open(tmp_path / "back.tif") as d, rasterio.open(src) as s:
        assert d.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert d.crs == s.crs and d.transform == s.transform
        labels = np.asarray(kquant.open_store(res.target).labels.compute())
        assert np.array_equal(d.read(1), labels)
    with pytest.raises(KquantError, match="exists"):  # not replaced without overwrite
        kquant.quantize(
            src, tmp_path / "f.kquant", QuantizeParams(k=8, export="s3://kqtest/cogs/e.tif")
        )
    assert not (tmp_path / "f.kquant").exists()  # refused before any work
