"""``kquant export STORE OUT.ome.zarr``: a standard OME-NGFF 0.5 image (RGB) with its label
image, read in a fresh process by ome-zarr-py and validated by ome-zarr-models, kquant not
even loaded."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile
from helpers import photo_like
from oracles import nearest_oracle, pyramid_oracle

import kquant
from kquant.params import QuantizeParams


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "kquant", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


_READ = """
import sys
import numpy as np, zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v05.image import Image

out, tmp, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
palette = np.load(f"{tmp}/palette.npy")
model = Image.from_zarr(zarr.open_group(out, mode="r"))  # the whole hierarchy, validated
assert model.labels is not None
nodes = {str(node.zarr.subpath() if hasattr(node.zarr, "subpath") else node): node
         for node in Reader(parse_url(out))()}
image = next(n_ for n_ in nodes.values() if any(type(s).__name__ == "OMERO" for s in n_.specs))
label = next(n_ for n_ in nodes.values() if any(type(s).__name__ == "Label" for s in n_.specs))
assert len(image.data) == len(label.data) == n, (len(image.data), len(label.data))
for i in range(n):
    expected = np.load(f"{tmp}/level{i}.npy")
    assert np.array_equal(np.asarray(label.data[i])[0], expected), i
    assert np.array_equal(np.asarray(image.data[i]), palette[expected].transpose(2, 0, 1)), i
colours = label.metadata["color"]
assert all(np.allclose(colours[i], [*(palette[i] / 255), 1.0]) for i in range(len(palette)))
assert not any(m == "kquant" or m.startswith("kquant.") for m in sys.modules), "kquant loaded"
print("ok")
"""


@pytest.mark.parametrize("pyramid", [True, False], ids=["store-pyramid", "made-by-export"])
def test_export_is_read_by_ome_zarr(tmp_path, pyramid):
    img = photo_like(140, 190, seed=5)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, img, photometric="rgb", tile=(16, 16))
    res = kquant.quantize(
        src, tmp_path / "s.kquant", QuantizeParams(k=6, chunk=48, pyramid=pyramid)
    )
    assert res.meta.levels == (3 if pyramid else 1)
    levels = pyramid_oracle(nearest_oracle(img, res.palette), 3)  # down to one 48x48 chunk
    for i, lv in enumerate(levels):
        np.save(tmp_path / f"level{i}.npy", lv)
    np.save(tmp_path / "palette.npy", res.palette)
    out = _cli("export", tmp_path / "s.kquant", tmp_path / "out.ome.zarr")
    assert out.returncode == 0, out.stderr
    read = subprocess.run(
        [sys.executable, "-c", _READ, str(tmp_path / "out.ome.zarr"), str(tmp_path), "3"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert read.returncode == 0 and read.stdout.startswith("ok"), read.stderr[-3000:]


def test_export_overwrites_only_an_earlier_export(tmp_path, photo_png):
    path, _ = photo_png
    kquant.quantize(path, tmp_path / "s.kquant", QuantizeParams(k=4))
    assert _cli("export", tmp_path / "s.kquant", tmp_path / "o.ome.zarr").returncode == 0
    again = _cli("export", tmp_path / "s.kquant", tmp_path / "o.ome.zarr")
    assert again.returncode == 2 and "exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert (
        _cli("export", tmp_path / "s.kquant", tmp_path / "o.ome.zarr", "--overwrite").returncode
        == 0
    )
    (tmp_path / "mine.zarr").mkdir()
    (tmp_path / "mine.zarr" / "notes.txt").write_text("keep")
    refused = _cli("export", tmp_path / "s.kquant", tmp_path / "mine.zarr", "--overwrite")
    assert refused.returncode == 2 and "not an OME-Zarr export" in refused.stderr
    assert (tmp_path / "mine.zarr" / "notes.txt").read_text() == "keep"
    inside = _cli("export", tmp_path / "s.kquant", tmp_path / "s.kquant" / "x.ome.zarr")
    assert inside.returncode == 2 and "inside the store" in inside.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mine.zarr",
        "o.ome.zarr",
        "photo.png",
        "s.kquant",
    ]
