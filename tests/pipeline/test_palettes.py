"""Imposed palettes: palette files and stores read, remapping onto them."""

import numpy as np
import pytest
from oracles import nearest_oracle

import kquant
from kquant.errors import InputError
from kquant.params import QuantizeParams
from kquant.pipeline import palettes

PAL = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 128, 255], [17, 200, 90]], np.uint8)


def _palette_files(tmp_path):
    from PIL import Image

    files = {}
    p = tmp_path / "p.gpl"
    p.write_text(
        "GIMP Palette\nName: test\nColumns: 4\n#\n"
        + "".join(f"{r:3d} {g:3d} {b:3d}\tc{i}\n" for i, (r, g, b) in enumerate(PAL))
    )
    files["gpl"] = p
    p = tmp_path / "p.txt"
    p.write_text("// hex and decimal\n#000000\nffffff\n255,0,0\n0 128 255\n\n#11C85A\n")
    files["txt"] = p
    p = tmp_path / "p.npy"
    np.save(p, PAL.astype(np.int64))
    files["npy"] = p
    p = tmp_path / "p.png"
    im = Image.fromarray(np.arange(5, dtype=np.uint8).reshape(1, 5), mode="P")
    im.putpalette(PAL.ravel().tolist())
    im.save(p)
    files["indexed png"] = p
    p = tmp_path / "swatch.png"
    Image.fromarray(PAL[None]).save(p)
    files["rgb swatch"] = p
    return files


def test_read_palette_formats(tmp_path):
    for name, path in _palette_files(tmp_path).items():
        assert np.array_equal(palettes.read_palette(path), PAL), name


def test_read_palette_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("#000000\nnot a colour\n")
    with pytest.raises(InputError, match="bad.txt:2"):
        palettes.read_palette(bad)
    big = tmp_path / "big.npy"
    np.save(big, np.zeros((300, 3), np.uint8))
    with pytest.raises(InputError):
        palettes.read_palette(big)
    neg = tmp_path / "neg.npy"
    np.save(neg, np.array([[0, 0, -1]]))
    with pytest.raises(InputError):
        palettes.read_palette(neg)
    with pytest.raises(InputError):
        palettes.read_palette(tmp_path / "missing.gpl")


@pytest.mark.parametrize("kind", ["gpl", "store", "array"])
def test_remap_onto_an_imposed_palette(tmp_path, photo_png, kind):
    path, img = photo_png
    if kind == "store":
        first = kquant.quantize(path, tmp_path / "first.kq", QuantizeParams(k=7, restarts=0))
        palette, expect_pal = first.target, kquant.open_store(first.target).palette
    elif kind == "gpl":
        palette, expect_pal = _palette_files(tmp_path)["gpl"], PAL
    else:
        palette, expect_pal = PAL, PAL
    res = kquant.quantize(path, tmp_path / "remap.kq", QuantizeParams(chunk=64), palette=palette)
    st = kquant.open_store(res.target)
    assert np.array_equal(st.palette, expect_pal)  # kept as given, in its order
    labels = np.asarray(st.labels.compute())
    assert np.array_equal(labels, nearest_oracle(img, expect_pal))
    sse = int(((img.astype(np.int64) - expect_pal.astype(np.int64)[labels]) ** 2).sum())
    assert res.fit.sse == sse == st.meta.metrics["sse"]
