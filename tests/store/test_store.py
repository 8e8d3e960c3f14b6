"""The store: attributes, writer and reader, aborts, alignment, checksums, direct writes."""

import json

import numpy as np
import pytest
import zarr

from kquant import store
from kquant.errors import IncompleteStoreError, StoreError, TargetExistsError
from kquant.store import writer as store_writer


def _meta(**kw):
    base = dict(height=10, width=20, k=16, n_colors=16, bits=4, chunk_rows=8, chunk_cols=8)
    base.update(kw)
    return store.StoreMeta(**base)


def _write(target, overwrite=False, fail=False):
    meta = _meta()
    pal = np.arange(48, dtype=np.uint8).reshape(16, 3)
    with store.StoreWriter(target, meta, pal, overwrite=overwrite) as w:
        packed = np.full((8, 4), 0x12, np.uint8)
        digests = {}
        for i, r0 in enumerate((0, 8)):
            for j, b0 in enumerate((0, 4, 8)):
                h = min(8, 10 - r0)
                wbytes = min(4, 10 - b0)
                store.write_packed_chunk(w.root, packed[:h, :wbytes], r0, b0, meta.packed_chunks)
                digests[(i, j)] = store.chunk_digest(packed[:h, :wbytes])
        if fail:
            raise RuntimeError("boom")
        return w.commit(metrics={"psnr": 1.0}, checksum=store.combine_digests(digests))


def test_meta_round_trips_through_json():
    m = _meta(params={"k": 16}, metrics={"psnr": 30.0}, source={"uri": "/x.png"})
    again = store.StoreMeta.from_json(json.loads(json.dumps(m.to_json())))
    assert again == m


@pytest.mark.parametrize(
    "bad",
    [
        dict(bits=3),
        dict(height=0),
        dict(chunk_cols=12),
        dict(format="other"),
        dict(status="done"),
        dict(format_version=99),
    ],
)
def test_meta_validates(bad):
    with pytest.raises(StoreError):
        _meta(**bad)


def test_meta_from_garbage():
    with pytest.raises(StoreError):
        store.StoreMeta.from_json("nope")
    with pytest.raises(StoreError):
        store.StoreMeta.from_json({"height": 3})


def test_writer_commits_and_reader_decodes(tmp_path):
    meta = _write(tmp_path / "s.kq")
    assert meta.complete and meta.metrics["store_bytes"] > 0
    st = store.open_store(tmp_path / "s.kq")
    assert st.labels.shape == (10, 20)
    assert np.all(st.labels.compute()[:, ::2] == 1) and np.all(st.labels.compute()[:, 1::2] == 2)
    assert np.array_equal(st.rgb.compute()[0, 0], st.palette[1])
    st.verify()
    assert [p.name for p in tmp_path.iterdir()] == ["s.kq"]  # no temporary left


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        _write(tmp_path / "s.kq", fail=True)
    assert list(tmp_path.iterdir()) == []


def test_existing_target_refused_and_overwrite_keeps_old_until_commit(tmp_path):
    _write(tmp_path / "s.kq")
    with pytest.raises(TargetExistsError):
        _write(tmp_path / "s.kq")
    with pytest.raises(RuntimeError):
        _write(tmp_path / "s.kq", overwrite=True, fail=True)
    store.open_store(tmp_path / "s.kq")  # the old store survived the failed overwrite
    _write(tmp_path / "s.kq", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.kq"]


def test_misaligned_write_is_refused(tmp_path):
    meta = _meta()
    with store.StoreWriter(tmp_path / "s.kq", meta, np.zeros((16, 3), np.uint8)) as w:
        with pytest.raises(StoreError, match="not aligned"):
            store.write_packed_chunk(w.root, np.zeros((8, 2), np.uint8), 0, 2, meta.packed_chunks)
        with pytest.raises(StoreError, match="not aligned"):
            store.write_packed_chunk(w.root, np.zeros((4, 4), np.uint8), 0, 0, meta.packed_chunks)


def test_incomplete_store_is_refused(tmp_path):
    g = zarr.open_group(str(tmp_path / "half.kq"), mode="w")
    g.attrs["kquant"] = _meta().to_json()  # status "writing", as a crashed run leaves it
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        store.open_store(tmp_path / "half.kq")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a kquant store"):
        store.open_store(tmp_path / "plain.zarr")
    with pytest.raises(StoreError, match="not a kquant store"):
        store.open_store(tmp_path / "missing")


def test_verify_detects_tampering(tmp_path):
    _write(tmp_path / "s.kq")
    arr = zarr.open_array(store=str(tmp_path / "s.kq"), path="labels", mode="r+")
    arr[0, 0] = 0xFF
    with pytest.raises(StoreError, match="checksum"):
        store.open_store(tmp_path / "s.kq").verify()


def test_writes_after_an_abort_do_not_resurrect_the_temporary_store(tmp_path):
    """A dask task still running after Ctrl-C must not write into the removed temp store."""
    import threading

    meta = _meta()
    started, release = threading.Event(), threading.Event()
    with pytest.raises(RuntimeError):
        with store.StoreWriter(tmp_path / "s.kq", meta, np.zeros((16, 3), np.uint8)) as w:
            root = w.root
            store_writer._labels_array(root)  # opened before the abort, as a running task has it

            def late_task():
                started.set()
                release.wait(10)
                store.write_packed_chunk(root, np.ones((8, 4), np.uint8), 0, 0, (8, 4))

            t = threading.Thread(target=late_task)
            t.start()
            started.wait(10)
            raise RuntimeError("interrupted")
    release.set()
    t.join(10)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "k,shard,chunk", [(16, None, 64), (3, None, 64), (200, None, 64), (16, 128, 64), (3, None, 512)]
)
def test_direct_chunk_writes_equal_zarr_writes(tmp_path, monkeypatch, k, shard, chunk):
    """Label chunks written as files are the bytes zarr writes through the packbits codec:
    edge chunks padded, chunks of label 0 only left out, a chunk spanning an odd width (250
    pixels of 2 bits) widened to whole bytes; sharded stores stay with zarr."""
    import tifffile
    from helpers import files, photo_like

    import kquant

    img = photo_like(300, 250, seed=k)
    img[:140, :130] = img[0, 0]  # a flat corner: chunks of label 0 only (the most used)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, img, photometric="rgb", tile=(32, 32))
    monkeypatch.setattr("kquant.pipeline.plan.LUT_MIN_PIXELS", 0)
    params = kquant.QuantizeParams(k=k, chunk=chunk, shard=shard, mode="exact")
    pal = kquant.quantize(path, tmp_path / "direct.kq", params).palette
    monkeypatch.setattr("kquant.store.writer.DIRECT_CHUNK_WRITES", False)
    kquant.quantize(path, tmp_path / "zarr.kq", params, palette=pal)
    monkeypatch.setattr("kquant.store.writer.DIRECT_CHUNK_WRITES", True)
    kquant.quantize(path, tmp_path / "direct2.kq", params, palette=pal)
    direct, via_zarr = files(tmp_path / "direct2.kq"), files(tmp_path / "zarr.kq")
    assert direct == via_zarr
    if shard is None and chunk == 64:
        chunks = [n for n in direct if n.startswith("labels/c/")]
        assert 0 < len(chunks) < 5 * 8  # some all-zero chunks were left out
    st = kquant.open_store(tmp_path / "direct.kq")
    st.verify()
    from oracles import nearest_oracle

    assert np.array_equal(st.labels.compute(), nearest_oracle(img, st.palette))
