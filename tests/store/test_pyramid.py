"""Multiscale labels: the 2x2 mode against a numpy oracle, the levels of a store, their
OME-NGFF 0.5 metadata read by ome-zarr-py in a fresh process, direct writes against zarr's."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from helpers import files, photo_like
from oracles import mode_oracle, pyramid_oracle

import kquant
from kquant.label.downsample import mode2x2
from kquant.params import QuantizeParams


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (3, 5), (16, 16), (17, 33)])
@pytest.mark.parametrize("k", [2, 3, 16, 256])
def test_mode2x2_equals_the_oracle(shape, k):
    labels = np.random.default_rng(k + shape[0]).integers(0, k, shape).astype(np.uint8)
    assert np.array_equal(mode2x2(labels), mode_oracle(labels))


def test_mode_ties_and_majorities():
    block = np.array([[5, 3], [3, 5]], np.uint8)  # 2-2 tie: the smaller
    assert mode2x2(block)[0, 0] == 3
    assert mode2x2(np.array([[9, 9], [1, 2]], np.uint8))[0, 0] == 9  # a pair beats singles
    assert mode2x2(np.array([[7, 4], [2, 1]], np.uint8))[0, 0] == 1  # all different
    assert mode2x2(np.array([[7, 2, 9]], np.uint8)).tolist() == [[2, 9]]  # edge: own pixels


@pytest.fixture(scope="module")
def pyramid_store(tmp_path_factory):
    """A tiled TIFF quantized with a pyramid, small chunks: several levels, edge chunks."""
    tmp = tmp_path_factory.mktemp("pyr")
    img = photo_like(301, 453, seed=8)
    src = tmp / "in.tif"
    tifffile.imwrite(src, img, photometric="rgb", tile=(32, 32))
    res = kquant.quantize(src, tmp / "p.kquant", QuantizeParams(k=11, chunk=64, pyramid=True))
    st = kquant.open_store(res.target)
    levels = pyramid_oracle(np.asarray(st.labels), st.meta.levels)
    for n, lv in enumerate(levels):
        np.save(tmp / f"level{n}.npy", lv)
    np.save(tmp / "palette.npy", st.palette)
    return tmp, st, levels


def test_levels_are_the_mode_pyramid_down_to_one_chunk(pyramid_store):
    tmp, st, levels = pyramid_store
    meta = st.meta
    assert meta.levels == len(levels) >= 4
    rows, cols = meta.level_chunks
    last = meta.level_shape(meta.levels - 1)
    assert last[0] <= rows and last[1] <= cols  # the last level is one chunk
    prev = meta.level_shape(meta.levels - 2)
    assert prev[0] > rows or prev[1] > cols  # and the one before is not
    for n, lv in enumerate(levels):
        assert np.array_equal(np.asarray(st.level(n)), lv), n
    window = np.asarray(st.window(10, 60, 20, 90, level=2))
    assert np.array_equal(window, st.palette[levels[2][10:60, 20:90]])
    with pytest.raises(kquant.KquantError, match="levels 0 to"):
        st.level(meta.levels)
    st.verify()


def test_no_pyramid_below_the_default_size_or_when_refused(tmp_path, photo_png):
    path, _ = photo_png
    res = kquant.quantize(path, tmp_path / "a.kq", QuantizeParams(k=4, chunk=32))
    assert res.meta.levels == 1 and not (tmp_path / "a.kq" / "levels").exists()
    from kquant.pipeline.plan import pyramid_levels

    one_chunk = QuantizeParams(pyramid=True)
    assert pyramid_levels(one_chunk, 2000, 2048, (2048, 2048)) == 1  # one chunk anyway
    assert pyramid_levels(QuantizeParams(), 4096, 4096, (2048, 2048)) == 2
    assert pyramid_levels(QuantizeParams(pyramid=False), 4096, 4096, (2048, 2048)) == 1
    assert pyramid_levels(QuantizeParams(pyramid=True), 300, 4100, (64, 64)) == 8
    assert pyramid_levels(QuantizeParams(), 4095, 4096, (2048, 2048)) == 1  # below 2^24


def test_direct_level_writes_equal_zarr_writes(tmp_path, monkeypatch):
    img = photo_like(150, 203, seed=2)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, img, photometric="rgb", tile=(16, 16))
    params = QuantizeParams(k=5, chunk=48, pyramid=True)
    pal = kquant.quantize(src, tmp_path / "direct.kq", params).palette
    monkeypatch.setattr("kquant.store.writer.DIRECT_CHUNK_WRITES", False)
    kquant.quantize(src, tmp_path / "zarr.kq", params, palette=pal)
    monkeypatch.setattr("kquant.store.writer.DIRECT_CHUNK_WRITES", True)
    kquant.quantize(src, tmp_path / "direct2.kq", params, palette=pal)
    direct, via_zarr = files(tmp_path / "direct2.kq"), files(tmp_path / "zarr.kq")
    assert any(n.startswith("levels/3/c/") for n in direct)
    assert direct == via_zarr


_OME_READ = """
import json, sys
import numpy as np
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v05.image_label import ImageLabelAttrs

store, tmp, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
nodes = list(Reader(parse_url(store))())
node = nodes[0]
specs = sorted(type(s).__name__ for s in node.specs)
assert specs == ["Label", "Multiscales"], specs
assert len(node.data) == n, len(node.data)
for i, data in enumerate(node.data):
    assert np.array_equal(np.asarray(data), np.load(f"{tmp}/level{i}.npy")), i
palette = np.load(f"{tmp}/palette.npy")
colours = node.metadata["color"]
assert sorted(colours) == list(range(len(palette)))
for i, rgb in enumerate(palette):
    assert np.allclose(colours[i], [*(rgb / 255), 1.0]), (i, colours[i])
scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
assert scales == [[2.0 ** i, 2.0 ** i] for i in range(n)], scales
attrs = json.load(open(f"{store}/zarr.json"))["attributes"]["ome"]
ImageLabelAttrs.model_validate(attrs)  # the NGFF 0.5 schema of a label image's attributes
print("ok", sorted(m.split(".")[0] for m in sys.modules if m.startswith("kquant")) [:1])
"""


def test_ome_zarr_reader_finds_the_levels_and_colours(pyramid_store):
    """A fresh process importing ome-zarr (and numpy, the oracles' files) only."""
    tmp, st, levels = pyramid_store
    res = subprocess.run(
        [sys.executable, "-c", _OME_READ, str(tmp / "p.kquant"), str(tmp), str(len(levels))],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]


def test_group_metadata_says_the_levels(pyramid_store):
    tmp, st, levels = pyramid_store
    ome = json.loads((tmp / "p.kquant" / "zarr.json").read_text())["attributes"]["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [d["path"] for d in ms["datasets"]] == ["labels"] + [
        f"levels/{n}" for n in range(1, len(levels))
    ]
    assert ms["axes"] == [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    assert ms["datasets"][2]["coordinateTransformations"] == [
        {"type": "scale", "scale": [4.0, 4.0]},
        {"type": "translation", "translation": [1.5, 1.5]},
    ]
    assert ms["type"] == "mode"
    for n in range(1, len(levels)):
        doc = json.loads((tmp / "p.kquant" / "levels" / str(n) / "zarr.json").read_text())
        assert doc["dimension_names"] == ["y", "x"]
        assert doc["shape"] == list(levels[n].shape)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("valid", [(8, 16), (7, 13), (1, 1), (5, 8), (8, 3)])
def test_mode_of_packed_chunks_equals_the_oracle(bits, valid):
    """Chunks as stored (packbits bytes, padded with 0 past the image's edge)."""
    from kquant.label import packing
    from kquant.label.downsample import mode2x2_packbits

    rng = np.random.default_rng(bits * 31 + valid[1])
    chunk = rng.integers(0, 1 << bits, (8, 16)).astype(np.uint8)
    chunk[valid[0] :, :] = 0
    chunk[:, valid[1] :] = 0
    data = packing.packbits_encode(chunk, 0, bits - 1).reshape(8, 16 * bits // 8)
    got = mode2x2_packbits(data, valid[0], valid[1], bits)
    assert np.array_equal(got, mode_oracle(chunk[: valid[0], : valid[1]]))


def test_decode_a_level_from_the_command_line(pyramid_store, tmp_path):
    import imageio.v3 as iio

    tmp, st, levels = pyramid_store
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "kquant", *map(str, a)], capture_output=True, text=True, timeout=120
    )
    out = run("decode", tmp / "p.kquant", tmp_path / "l2.png", "--level", 2)
    assert out.returncode == 0, out.stderr
    assert np.array_equal(iio.imread(tmp_path / "l2.png"), st.palette[levels[2]])
    out = run("decode", tmp / "p.kquant", tmp_path / "w.png", "--level", 1, "--window", "5:40,7:99")
    assert out.returncode == 0, out.stderr
    assert np.array_equal(iio.imread(tmp_path / "w.png"), st.palette[levels[1][5:40, 7:99]])
    for bad in (["--level", len(levels)], ["--level", 1, "--window", "0:10,0:300"]):
        out = run("decode", tmp / "p.kquant", tmp_path / "bad.png", *bad)
        assert out.returncode == 2 and out.stderr.startswith("kquant: error:"), out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad.png").exists()


def test_pyramid_options_of_the_command_line():
    from kquant import cli

    parse = cli.build_parser().parse_args
    assert QuantizeParams.from_args(parse(["quantize", "a", "b", "--pyramid"])).pyramid is True
    assert QuantizeParams.from_args(parse(["quantize", "a", "b", "--no-pyramid"])).pyramid is False
    assert QuantizeParams.from_args(parse(["quantize", "a", "b"])).pyramid is None
    with pytest.raises(kquant.KquantError, match="pyramid"):
        QuantizeParams(pyramid="yes")
