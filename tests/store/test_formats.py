"""Store formats: formats 1 and 2 still read, new stores in format 3 with compact metadata."""

import numpy as np
import pytest
from helpers import write_old_store
from oracles import nearest_oracle

import kquant
from kquant.errors import StoreError
from kquant.params import QuantizeParams


def test_format_1_stores_still_read(tmp_path):
    """A version-1 store (3 bits a pixel for 5 colours) decodes as before."""
    from kquant import store

    labels = np.random.default_rng(5).integers(0, 5, size=(20, 27)).astype(np.uint8)
    write_old_store(tmp_path / "v1.kq", labels, 5, 1)
    st = kquant.open_store(tmp_path / "v1.kq")
    assert st.meta.format_version == 1 and st.meta.bits == 3
    assert np.array_equal(np.asarray(st.labels.compute()), labels)
    st.verify()
    with pytest.raises(StoreError):  # a version-2 store must use 4 bits for 5 colours
        store.StoreMeta(height=20, width=27, k=5, n_colors=5, bits=3, chunk_rows=8, chunk_cols=16)


@pytest.mark.parametrize("n_colors", [2, 3, 16, 200])
def test_format_2_stores_still_read(tmp_path, n_colors):
    labels = np.random.default_rng(n_colors).integers(0, n_colors, (21, 35)).astype(np.uint8)
    write_old_store(tmp_path / "v2.kq", labels, n_colors, 2)
    st = kquant.open_store(tmp_path / "v2.kq")
    assert st.meta.format_version == 2 and "MSB-first" in st.meta.packing
    assert np.array_equal(np.asarray(st.labels.compute()), labels)
    assert np.array_equal(np.asarray(st.window(3, 20, 9, 30)), st.palette[labels[3:20, 9:30]])
    st.verify()


@pytest.mark.parametrize("chunk", [None, 64])
def test_new_stores_are_format_3_with_compact_metadata(tmp_path, photo_png, chunk):
    """(H, W) labels through the packbits codec, dimension names on every array; the
    in-memory path (one chunk, odd width) and the dask path (edge chunks) alike."""
    import json

    import zarr

    path, img = photo_png
    res = kquant.quantize(path, tmp_path / "s.kq", QuantizeParams(k=8, restarts=0, chunk=chunk))
    st = kquant.open_store(res.target)
    assert st.meta.format_version == 3 and st.meta.bits == 4
    text = (tmp_path / "s.kq" / "zarr.json").read_text()
    assert "\n" not in text.strip() and json.loads(text)["attributes"]["kquant"]["bits"] == 4
    labels = zarr.open_array(str(tmp_path / "s.kq" / "labels"), mode="r")
    assert labels.shape == img.shape[:2] and labels.metadata.dimension_names == ("y", "x")
    doc = json.loads((tmp_path / "s.kq" / "labels" / "zarr.json").read_text())
    assert [c["name"] for c in doc["codecs"]] == ["packbits", "zstd"]
    assert doc["codecs"][0]["configuration"] == {
        "padding_encoding": "none",
        "first_bit": 0,
        "last_bit": 3,
    }
    palette = zarr.open_array(str(tmp_path / "s.kq" / "palette"), mode="r")
    assert palette.metadata.dimension_names == ("entry", "band")
    oracle = nearest_oracle(img, st.palette)
    assert np.array_equal(labels[...], oracle)
    assert np.array_equal(np.asarray(st.labels.compute()), oracle)
    st.verify()
