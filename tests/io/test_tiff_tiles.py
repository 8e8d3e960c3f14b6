"""Direct tile/strip decoding of local TIFFs against tifffile's own reader."""

import numpy as np
import pytest
import tifffile
from helpers import photo_like

import kquant
from kquant.errors import InputError
from kquant.io import tiff, tiff_tiles

LAYOUTS = [
    dict(tile=(64, 48), compression="zlib"),
    dict(tile=(32, 32), compression="zlib", predictor=True),
    dict(tile=(48, 64), compression="lzw"),
    dict(tile=(16, 16)),
    dict(rowsperstrip=7, compression="zlib"),
    dict(rowsperstrip=1000),
]


@pytest.mark.parametrize("kind", ["rgb8", "grey8", "rgb16", "rgba8"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()))
def test_windows_equal_tifffile(tmp_path, kind, layout):
    img = photo_like(157, 211, seed=len(kind))
    if kind == "grey8":
        img = img[..., 1]
    elif kind == "rgb16":
        img = img.astype(np.uint16) * 257 + 3
    elif kind == "rgba8":
        img = np.dstack([img, img[..., :1]])
    path = tmp_path / "x.tif"
    tifffile.imwrite(
        path,
        img,
        photometric="minisblack" if img.ndim == 2 else "rgb",
        **({"extrasamples": ["unassalpha"]} if kind == "rgba8" else {}),
        **layout,
    )
    reader = tiff_tiles.open_reader(str(path))
    assert reader is not None and reader.shape == img.shape
    ref = tifffile.imread(path)
    rng = np.random.default_rng(1)
    for _ in range(12):
        y0, x0 = rng.integers(0, 157), rng.integers(0, 211)
        y1, x1 = rng.integers(y0 + 1, 158), rng.integers(x0 + 1, 212)
        assert np.array_equal(reader[y0:y1, x0:x1], ref[y0:y1, x0:x1])
    assert np.array_equal(reader[:, :], ref)


def test_whole_pipeline_reads_the_same_through_both_readers(tmp_path, monkeypatch):
    img = photo_like(300, 260, seed=5)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, img, photometric="rgb", tile=(64, 64), compression="zlib")
    direct = np.asarray(kquant.open_image(str(path), chunks=128).compute())

    monkeypatch.setattr(tiff, "_tile_reader", lambda path, stamp: None)  # the zarr path
    via_zarr = np.asarray(kquant.open_image(str(path), chunks=96).compute())
    assert np.array_equal(direct, img) and np.array_equal(via_zarr, img)


def test_planar_and_multipage_are_left_to_the_zarr_reader(tmp_path):
    img = photo_like(40, 50)
    planar = tmp_path / "p.tif"
    tifffile.imwrite(
        planar, np.moveaxis(img, 2, 0), photometric="rgb", planarconfig="separate", tile=(16, 16)
    )
    assert tiff_tiles.open_reader(str(planar)) is None
    assert np.array_equal(np.asarray(kquant.open_image(str(planar)).compute()), img)


def test_a_corrupt_tile_is_one_input_error(tmp_path):
    img = photo_like(128, 128, seed=2)
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, img, photometric="rgb", tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path) as tf:
        off, n = tf.pages[0].dataoffsets[3], tf.pages[0].databytecounts[3]
    raw = bytearray(path.read_bytes())
    raw[off + 2 : off + n] = bytes(n - 2)  # keep the zlib header, zero the stream
    path.write_bytes(bytes(raw))
    reader = tiff_tiles.open_reader(str(path))
    assert reader[0:64, 0:64].shape == (64, 64, 3)  # intact tiles still read
    with pytest.raises(InputError, match="cannot decode TIFF data") as exc:
        reader[64:128, 64:128]
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("compression", ["jpeg", "webp", "zstd", "packbits"])
def test_other_codecs_equal_tifffile(tmp_path, compression):
    img = photo_like(140, 150, seed=9)
    path = tmp_path / "j.tif"
    try:
        tifffile.imwrite(path, img, photometric="rgb", tile=(64, 64), compression=compression)
    except Exception as exc:  # pragma: no cover - codec missing from imagecodecs
        pytest.fail(f"imagecodecs cannot write {compression}: {exc}")
    reader = tiff_tiles.open_reader(str(path))
    assert reader is not None
    assert np.array_equal(reader[5:133, 7:150], tifffile.imread(path)[5:133, 7:150])
