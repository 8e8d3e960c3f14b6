"""Store formats: format 1 stores still read, new stores in format 2 with compact metadata."""

import numpy as np
import pytest
from oracles import nearest_oracle

import kquant
from kquant.errors import StoreError
from kquant.params import QuantizeParams


def test_format_1_stores_still_read(tmp_path):
    """A version-1 store (3 bits a pixel for 5 colours) decodes as before."""
    from kquant import store
    from kquant.label import packing

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 5, size=(20, 27)).astype(np.uint8)
    pal = rng.integers(0, 256, size=(5, 3), dtype=np.uint8)
    meta = store.StoreMeta(
        height=20, width=27, k=5, n_colors=5, bits=3, chunk_rows=8, chunk_cols=16, format_version=1
    )
    with store.StoreWriter(tmp_path / "v1.kq", meta, pal) as w:
        digests = {}
        for i, r0 in enumerate(range(0, 20, 8)):
            for j, c0 in enumerate(range(0, 27, 16)):
                packed = packing.pack_rows(labels[r0 : r0 + 8, c0 : c0 + 16], 3)
                store.write_packed_chunk(w.root, packed, r0, c0 * 3 // 8, meta.packed_chunks)
                digests[(i, j)] = store.chunk_digest(packed)
        w.commit(metrics={}, checksum=store.combine_digests(digests))
    st = kquant.open_store(tmp_path / "v1.kq")
    assert st.meta.format_version == 1 and st.meta.bits == 3
    assert np.array_equal(np.asarray(st.labels.compute()), labels)
    st.verify()
    with pytest.raises(StoreError):  # a version-2 store must use 4 bits for 5 colours
        store.StoreMeta(height=20, width=27, k=5, n_colors=5, bits=3, chunk_rows=8, chunk_cols=16)


def test_new_stores_are_format_2_with_compact_metadata(tmp_path, photo_png):
    import json

    path, img = photo_png
    res = kquant.quantize(path, tmp_path / "s.kq", QuantizeParams(k=8, restarts=0))
    st = kquant.open_store(res.target)
    assert st.meta.format_version == 2 and st.meta.bits == 4
    text = (tmp_path / "s.kq" / "zarr.json").read_text()
    assert "\n" not in text.strip() and json.loads(text)["attributes"]["kquant"]["bits"] == 4
    assert np.array_equal(np.asarray(st.labels.compute()), nearest_oracle(img, st.palette))
