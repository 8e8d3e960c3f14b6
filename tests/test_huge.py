"""Out-of-core paths: lookup-table assignment, bounded sampling, sample-mode fit."""

import threading

import dask.array as da
import numpy as np
import pytest
import tifffile

import kquant
from helpers import photo_like
from kquant import QuantizeParams, lut, pipeline, sampling
from oracles import nearest_oracle


@pytest.fixture(scope="module")
def palette():
    return np.random.default_rng(7).integers(0, 256, size=(16, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def table(palette):
    return lut.build(palette)


def test_lookup_table_equals_exact_argmin(palette, table):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1 << 24, size=50000)
    rgb = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], 1).astype(np.uint8)
    assert np.array_equal(table[codes], nearest_oracle(rgb, palette))


def test_coarse_cells_agree_with_the_full_table(palette, table):
    cells = lut.coarse(table)
    codes = np.arange(1 << 24, dtype=np.uint32)
    r, g, b = codes >> 16, (codes >> 8) & 255, codes & 255
    c = cells[((r >> 2) << 12) | ((g >> 2) << 6) | (b >> 2)]
    uniform = c != lut.MIXED
    assert 0.5 < uniform.mean() < 1.0  # most cells decided, some straddle a boundary
    assert np.array_equal(c[uniform], table[uniform])


@pytest.mark.parametrize("n_colours", [2, 5, 16, 40, 100, 200])
@pytest.mark.parametrize("width", [1, 7, 77])
def test_compiled_label_pack_equals_numpy_oracles(n_colours, width):
    from kquant import packing

    rng = np.random.default_rng(n_colours + width)
    pal = rng.integers(0, 256, size=(n_colours, 3), dtype=np.uint8)
    img = photo_like(23, width, seed=width)
    # a table built from the exact oracle on the colours present (the rest stays 0)
    table = np.zeros(1 << 24, np.uint8)
    codes = (img[..., 0].astype(np.int64) << 16) | (img[..., 1].astype(np.int64) << 8) | img[..., 2]
    table[codes] = nearest_oracle(img, pal)
    bits = packing.bits_for(n_colours)
    packed, sse, counts = lut.label_pack_block(img, (lut.coarse(table), table), pal, bits)
    ref = nearest_oracle(img, pal)
    assert np.array_equal(lut.label_block(img, table), ref)
    assert np.array_equal(packed, packing.pack_rows(ref, bits))
    assert sse == int(((img.astype(np.int64) - pal[ref].astype(np.int64)) ** 2).sum())
    assert np.array_equal(counts, np.bincount(ref.ravel(), minlength=n_colours))


def test_sample_windows_reads_only_the_chosen_blocks():
    img = photo_like(256, 320)
    seen = []
    lock = threading.Lock()

    def record(block, block_info=None):
        with lock:
            seen.append(tuple(block_info[0]["chunk-location"][:2]))
        return block

    lazy = da.from_array(img, chunks=(32, 32, 3)).map_blocks(record, dtype=np.uint8)
    sample = sampling.sample_windows(lazy, 3000, seed=1, n_windows=10).compute(scheduler="threads")
    chosen = sampling.choose_blocks(lazy.numblocks[:2], 10, seed=1)
    assert sorted(set(seen)) == sorted(chosen) and len(chosen) == 10
    assert sample.shape == (3000, 3)
    allowed = {tuple(p) for (i, j) in chosen
               for p in img[i * 32:(i + 1) * 32, j * 32:(j + 1) * 32].reshape(-1, 3)}
    assert {tuple(p) for p in sample} <= allowed


@pytest.mark.parametrize("chunk", [64, 200])
def test_sample_mode_with_lookup_table(tmp_path, monkeypatch, chunk):
    img = photo_like(300, 410, seed=5)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, img, tile=(64, 64), compression="zlib", photometric="rgb")
    monkeypatch.setattr(pipeline, "LUT_MIN_PIXELS", 0)  # force the table path on a small image
    res = kquant.quantize(path, tmp_path / "s.kq", QuantizeParams(k=16, mode="sample", chunk=chunk,
                                                                   sample_size=5000))
    st = kquant.open_store(tmp_path / "s.kq")
    assert res.fit.mode == "sample" and st.meta.metrics["fit_mode"] == "sample"
    assert st.meta.metrics["assign"] == "lut"
    ref = nearest_oracle(img, st.palette)
    assert np.array_equal(st.labels.compute(), ref)
    assert st.meta.metrics["sse"] == int(((img.astype(np.int64) - st.palette[ref]) ** 2).sum())
    st.verify()


def test_auto_mode_thresholds():
    p = QuantizeParams()
    from kquant.params import EXACT_MAX_PIXELS

    assert p.fit_mode(EXACT_MAX_PIXELS) == "exact"
    assert p.fit_mode(EXACT_MAX_PIXELS + 1) == "sample"
    assert QuantizeParams(mode="exact").fit_mode(10**10) == "exact"
    with pytest.raises(kquant.KquantError):
        QuantizeParams(mode="fast")
