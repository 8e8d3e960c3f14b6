"""The pipeline end to end: labels, windows, determinism, sharding, previews."""

import math

import imageio.v3 as iio
import numpy as np
import pytest
from helpers import files, photo_like
from oracles import nearest_oracle

import kquant
from kquant import QuantizeParams
from kquant.label import packing


@pytest.mark.parametrize("chunk", [None, 8, 40, 64])
def test_store_labels_equal_full_argmin(photo_png, tmp_path, chunk):
    path, img = photo_png
    res = kquant.quantize(path, tmp_path / "s.kq", QuantizeParams(k=16, chunk=chunk, restarts=1))
    st = kquant.open_store(tmp_path / "s.kq")
    assert st.meta.bits == 4 and st.palette.shape == (16, 3)
    expected = nearest_oracle(img, st.palette)
    assert np.array_equal(st.labels.compute(), expected)
    assert np.array_equal(st.rgb.compute(), st.palette[expected])
    mse = float(((st.palette[expected].astype(float) - img) ** 2).mean())
    assert st.meta.metrics["mse"] == pytest.approx(mse, rel=1e-12)
    assert st.meta.metrics["psnr"] == pytest.approx(10 * math.log10(255**2 / mse), rel=1e-12)
    assert res.fit.sse == st.meta.metrics["sse"]
    assert sum(st.meta.metrics["palette_counts"]) == img.shape[0] * img.shape[1]
    st.verify()


def test_window_decode_equals_slice_of_full(photo_png, tmp_path):
    path, img = photo_png
    kquant.quantize(path, tmp_path / "s.kq", QuantizeParams(k=5, chunk=32, restarts=0))
    st = kquant.open_store(tmp_path / "s.kq")
    full = st.rgb.compute()
    for y0, y1, x0, x1 in [(0, 150, 0, 213), (17, 90, 33, 70), (140, 150, 200, 213), (5, 6, 9, 10)]:
        assert np.array_equal(st.window(y0, y1, x0, x1).compute(), full[y0:y1, x0:x1])
    assert st.meta.bits == packing.storage_bits(5) == 4  # format 2: byte-friendly widths


def test_same_seed_gives_byte_identical_store(photo_png, tmp_path):
    path, _ = photo_png
    p = QuantizeParams(k=8, seed=3, chunk=64, restarts=1)
    kquant.quantize(path, tmp_path / "a.kq", p)
    kquant.quantize(path, tmp_path / "b.kq", p)
    a, b = files(tmp_path / "a.kq"), files(tmp_path / "b.kq")
    assert a.keys() == b.keys() and a == b


def test_the_store_records_its_source_identity(photo_png, tmp_path):
    """The store's ``source`` holds the file's identity; same_source tells the same file from
    another version of it (new mtime), another path, or a record without the identity."""
    import os
    import shutil

    from kquant import pipeline

    path, _ = photo_png
    src = shutil.copy(path, tmp_path / "in.png")
    kquant.quantize(src, tmp_path / "s.kq", QuantizeParams(k=4, restarts=0))
    record = kquant.open_store(tmp_path / "s.kq").meta.source
    st = os.stat(src)
    assert {k: record[k] for k in ("uri", "size_bytes", "mtime_ns", "etag")} == {
        "uri": str(src),
        "size_bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "etag": "",
    }
    assert pipeline.same_source(record, src)
    assert pipeline.same_source(record, f"file://{src}")
    assert not pipeline.same_source(record, path)  # another path
    assert not pipeline.same_source({k: v for k, v in record.items() if k != "mtime_ns"}, src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert not pipeline.same_source(record, src)
    os.unlink(src)
    assert not pipeline.same_source(record, src)


def test_few_colours_are_lossless(tmp_path):
    rng = np.random.default_rng(4)
    colours = rng.integers(0, 256, size=(6, 3), dtype=np.uint8)
    img = colours[rng.integers(0, 6, size=(33, 47))]
    iio.imwrite(tmp_path / "few.png", img)
    kquant.quantize(tmp_path / "few.png", tmp_path / "s.kq", QuantizeParams(k=16, chunk=16))
    st = kquant.open_store(tmp_path / "s.kq")
    assert np.array_equal(st.rgb.compute(), img)
    assert st.meta.metrics["lossless"] and st.meta.metrics["psnr"] is None
    assert st.meta.n_colors == 6 and st.meta.bits == 4  # format 2: 1, 2, 4 or 8 bits


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (29, 1)])
def test_tiny_images(tmp_path, shape):
    img = photo_like(*shape, seed=9)
    iio.imwrite(tmp_path / "t.png", img)
    kquant.quantize(tmp_path / "t.png", tmp_path / "s.kq", QuantizeParams(k=2, sample_size=2))
    st = kquant.open_store(tmp_path / "s.kq")
    assert st.rgb.shape == shape + (3,)
    assert np.array_equal(st.labels.compute(), nearest_oracle(img, st.palette))


def test_preview_picture(photo_png, tmp_path):
    path, img = photo_png
    res = kquant.quantize(
        path, tmp_path / "s.kq", QuantizeParams(k=4, restarts=0), preview_path=tmp_path / "p.png"
    )
    pic = iio.imread(tmp_path / "p.png")
    h, w = img.shape[:2]
    assert np.array_equal(pic[:h, :w], img)
    right = pic[:h, w + 8 : 2 * w + 8]
    assert np.array_equal(right, res.palette[nearest_oracle(img, res.palette)])
    strip = pic[h + 8 :, :, :].reshape(-1, 3)
    assert {tuple(c) for c in np.unique(strip, axis=0)} == {tuple(c) for c in res.palette}


@pytest.mark.parametrize("chunk,shard", [(32, 64), (16, 1000), (64, 64), (8, 40)])
def test_sharded_store_equals_unsharded(photo_png, tmp_path, chunk, shard):
    import zarr

    path, img = photo_png
    p = QuantizeParams(k=16, chunk=chunk, restarts=0)
    kquant.quantize(path, tmp_path / "plain.kq", p)
    kquant.quantize(
        path, tmp_path / "sharded.kq", QuantizeParams(k=16, chunk=chunk, restarts=0, shard=shard)
    )
    plain, sharded = (
        kquant.open_store(tmp_path / "plain.kq"),
        kquant.open_store(tmp_path / "sharded.kq"),
    )
    arr = zarr.open_array(str(tmp_path / "sharded.kq"), path="labels")
    assert arr.shards is not None and arr.chunks == plain.meta.label_chunks
    assert np.array_equal(sharded.labels.compute(), plain.labels.compute())
    assert np.array_equal(
        sharded.window(20, 90, 30, 170).compute(), plain.rgb.compute()[20:90, 30:170]
    )
    sharded.verify()


def test_writes_smaller_than_a_shard_are_refused(tmp_path):
    from kquant import store
    from kquant.errors import StoreError

    meta = store.StoreMeta(
        height=64,
        width=64,
        k=16,
        n_colors=16,
        bits=4,
        chunk_rows=16,
        chunk_cols=16,
        shard_rows=32,
        shard_cols=32,
    )
    with store.StoreWriter(tmp_path / "s.kq", meta, np.zeros((16, 3), np.uint8)) as w:
        with pytest.raises(StoreError, match="shards"):  # one inner chunk of a shard
            store.write_packed_chunk(w.root, np.zeros((16, 8), np.uint8), 0, 0, (16, 8))
        store.write_packed_chunk(w.root, np.ones((32, 16), np.uint8), 32, 16, (32, 16))


def test_compute_alongside_returns_the_compute_and_propagates_errors_at_once():
    import time

    import dask

    from kquant import cluster

    ran = []
    slow = dask.delayed(lambda: time.sleep(0.2) or 42)()
    assert cluster.compute_alongside(lambda: ran.append(1), slow) == (42,) and ran == [1]

    def boom():
        raise RuntimeError("work failed")

    t = time.perf_counter()
    very_slow = dask.delayed(lambda: time.sleep(3) or 0)()
    with pytest.raises(RuntimeError, match="work failed"):
        cluster.compute_alongside(boom, very_slow)
    assert time.perf_counter() - t < 2.5  # did not wait for the compute


def test_write_reports_its_progress_block_by_block(tmp_path):
    """A callable progress hears (0, n) first, then each block written, and (n, n) last;
    one-chunk images (written in memory) report (0, 1) and (1, 1)."""
    from helpers import photo_like, write_png

    from kquant import pipeline

    src = write_png(tmp_path / "p.png", photo_like(100, 140, seed=2))
    palette = pipeline.fit(str(src), QuantizeParams(k=4, seed=0)).palette
    for chunk, blocks in ((32, 4 * 5), (2048, 1)):
        calls = []
        pipeline.write(
            str(src),
            tmp_path / f"c{chunk}.kquant",
            palette,
            QuantizeParams(k=4, chunk=chunk),
            progress=lambda done, total, calls=calls: calls.append((done, total)),
        )
        assert calls[0] == (0, blocks) and calls[-1] == (blocks, blocks)
        assert [d for d, _ in calls] == list(range(blocks + 1))
