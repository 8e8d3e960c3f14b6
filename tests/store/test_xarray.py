"""Stores read by xarray and dask alone (fresh processes that do not import kquant), and the
xarray view (``to_xarray``, ``engine="kquant"``)."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile
from helpers import photo_like
from oracles import nearest_oracle, pyramid_oracle

import kquant
from kquant.params import QuantizeParams

pytest.importorskip("xarray")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xr")
    img = photo_like(130, 171, seed=4)
    src = tmp / "in.tif"
    tifffile.imwrite(src, img, photometric="rgb", tile=(16, 16))
    res = kquant.quantize(src, tmp / "s.kquant", QuantizeParams(k=3, chunk=48, pyramid=True))
    labels = nearest_oracle(img, res.palette)
    np.save(tmp / "labels.npy", labels)
    np.save(tmp / "level1.npy", pyramid_oracle(labels, 2)[1])
    np.save(tmp / "palette.npy", res.palette)
    return tmp, res


_PLAIN = """
import sys
import numpy as np, xarray as xr, dask.array as da
tmp = sys.argv[1]
store = f"{tmp}/s.kquant"
labels, palette = np.load(f"{tmp}/labels.npy"), np.load(f"{tmp}/palette.npy")
ds = xr.open_zarr(store, consolidated=False)
assert ds["labels"].dims == ("y", "x") and ds["palette"].dims == ("entry", "band"), ds
assert np.array_equal(ds["labels"].values, labels)
assert np.array_equal(ds["labels"][20:100, 33:150].values, labels[20:100, 33:150])
assert np.array_equal(ds["palette"].values, palette)
kq = ds.attrs["kquant"]
assert kq["metrics"]["psnr"] > 0 and kq["params"]["k"] == 3 and ds.attrs["ome"]["version"] == "0.5"
assert np.array_equal(da.from_zarr(f"{store}/labels").compute(), labels)
print("ok", sorted(m for m in sys.modules if m.startswith("kquant"))[:3])
"""

_ENGINE = """
import sys
import numpy as np, xarray as xr
tmp = sys.argv[1]
store = f"{tmp}/s.kquant"
labels, palette = np.load(f"{tmp}/labels.npy"), np.load(f"{tmp}/palette.npy")
ds = xr.open_dataset(store, engine="kquant")
assert ds["labels"].dims == ("y", "x") and ds["rgb"].dims == ("y", "x", "band")
assert list(ds["band"].values) == ["r", "g", "b"]
assert np.array_equal(ds["rgb"][10:50, 20:90].values, palette[labels[10:50, 20:90]])
assert ds.attrs["palette"] == palette.tolist() and ds.attrs["params"]["k"] == 3
assert ds.attrs["metrics"]["sse"] >= 0 and ds.attrs["psnr"] == ds.attrs["metrics"]["psnr"]
lv = xr.open_dataset(store, engine="kquant", level=1)
assert np.array_equal(lv["labels"].values, np.load(f"{tmp}/level1.npy"))
assert lv["x"].values[:2].tolist() == [0.5, 2.5]
print("ok")
"""


@pytest.mark.parametrize("program", [_PLAIN, _ENGINE], ids=["open_zarr", "engine"])
def test_fresh_process_reads_the_store(store, program):
    tmp, _ = store
    res = subprocess.run(
        [sys.executable, "-c", program, str(tmp)], capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]


def test_to_xarray_is_lazy(store):
    import dask.array as da

    tmp, res = store
    ds = kquant.open_store(tmp / "s.kquant").to_xarray()
    assert isinstance(ds["labels"].data, da.Array) and isinstance(ds["rgb"].data, da.Array)
    assert ds["rgb"].shape == (130, 171, 3)
    assert np.array_equal(ds["palette"].values, res.palette)
    with pytest.raises(kquant.KquantError):
        kquant.open_store(tmp / "s.kquant").to_xarray(level=9)
