"""Out-of-core paths: lookup-table assignment, bounded sampling, sample-mode fit."""

import threading

import dask.array as da
import numpy as np
import pytest
import tifffile

import kquant
from helpers import photo_like
from kquant import QuantizeParams
from kquant.label import lookup
from kquant.fit import sampling
from oracles import nearest_oracle


@pytest.fixture(scope="module")
def palette():
    return np.random.default_rng(7).integers(0, 256, size=(16, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def table(palette):
    return lookup.build(palette)


def test_lookup_table_equals_exact_argmin(palette, table):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1 << 24, size=50000)
    rgb = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], 1).astype(np.uint8)
    assert np.array_equal(table[codes], nearest_oracle(rgb, palette))


@pytest.mark.parametrize("pal", [
    [[0, 0, 0], [2, 0, 0], [1, 5, 0], [1, -5 % 256, 0]],  # ties on whole planes
    [[10, 10, 10], [10, 10, 10], [250, 3, 7], [9, 11, 10]],  # a duplicate entry
    "random16", "random256"])
def test_cell_pruned_table_equals_exact_argmin_with_ties(pal):
    rng = np.random.default_rng(3)
    if isinstance(pal, str):
        pal = rng.integers(0, 256, size=(int(pal[6:]), 3))
    pal = np.asarray(pal, np.uint8)
    table = lookup.build(pal)
    planes = np.arange(1 << 16)
    codes = np.concatenate([(r << 16) | planes for r in (0, 1, 2, 7, 8, 100, 255)]
                           + [rng.integers(0, 1 << 24, size=100_000)])
    rgb = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], 1).astype(np.uint8)
    ref = np.concatenate([nearest_oracle(rgb[i:i + 8192], pal) for i in range(0, len(rgb), 8192)])
    assert np.array_equal(table[codes], ref)


@pytest.mark.parametrize("n_colours", [2, 3, 5, 16, 40, 100, 200])
@pytest.mark.parametrize("width", [1, 2, 7, 77, 80])
def test_compiled_label_pack_equals_numpy_oracles(n_colours, width):
    from kquant.label import packing

    rng = np.random.default_rng(n_colours + width)
    pal = rng.integers(0, 256, size=(n_colours, 3), dtype=np.uint8)
    img = photo_like(23, width, seed=width)
    # a table built from the exact oracle on the colours present (the rest stays 0)
    table = np.zeros(1 << 24, np.uint8)
    codes = (img[..., 0].astype(np.int64) << 16) | (img[..., 1].astype(np.int64) << 8) | img[..., 2]
    table[codes] = nearest_oracle(img, pal)
    for bits in sorted({packing.bits_for(n_colours), packing.storage_bits(n_colours)}):
        _check_label_pack(img, table, pal, bits)


def _check_label_pack(img, table, pal, bits):
    from kquant.label import packing

    n_colours = len(pal)
    packed, sse, counts = lookup.label_pack_block(img, table, pal, bits)
    ref = nearest_oracle(img, pal)
    assert np.array_equal(lookup.label_block(img, table), ref)
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


@pytest.mark.parametrize("chunks,rechunk", [((32, 32, 3), None), ((48, 40, 3), None),
                                             ((64, 64, 3), (40, 56, 3))])
def test_sample_windows_match_a_numpy_oracle(chunks, rechunk):
    img = photo_like(256, 320, seed=3)
    lazy = da.from_array(img, chunks=chunks)
    if rechunk:  # as an oriented TIFF is: the chosen blocks depend on several source blocks
        lazy = lazy.rechunk(rechunk)
    sample = sampling.sample_windows(lazy, 2000, seed=2, n_windows=6)
    chosen = sampling.choose_blocks(lazy.numblocks[:2], 6, seed=2)
    graph = dict(sample.__dask_graph__())
    own = {k[1:3] for k in graph if isinstance(k, tuple) and k[0] == lazy.name}
    assert own == set(chosen)  # tasks for the chosen blocks only, not one per block
    rows, cols = np.cumsum((0,) + lazy.chunks[0]), np.cumsum((0,) + lazy.chunks[1])
    sizes = [lazy.chunks[0][i] * lazy.chunks[1][j] for i, j in chosen]
    oracle = np.concatenate([
        sampling.sample_block(img[rows[i]:rows[i + 1], cols[j]:cols[j + 1]], c, seed=2,
                              block_id=(i, j))
        for (i, j), c in zip(chosen, sampling.allocate(sizes, 2000)) if c])
    assert np.array_equal(sample.compute(scheduler="threads"), oracle)


@pytest.mark.parametrize("chunk", [64, 200])
def test_sample_mode_with_lookup_table(tmp_path, monkeypatch, chunk):
    img = photo_like(300, 410, seed=5)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, img, tile=(64, 64), compression="zlib", photometric="rgb")
    monkeypatch.setattr("kquant.pipeline.core.LUT_MIN_PIXELS", 0)  # force the table path on a small image
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


def test_sample_windows_grow_with_the_square_root_of_the_size():
    g = 1 << 30
    assert sampling.windows_for(100) == sampling.windows_for(g // 4) == sampling.WINDOWS
    assert sampling.windows_for(g) == sampling.WINDOWS_PER_GPX
    assert sampling.windows_for(4 * g) == 2 * sampling.WINDOWS_PER_GPX
    assert sampling.windows_for(16 * g) == sampling.windows_for(10**15) == sampling.MAX_WINDOWS


def test_windows_are_spread_over_the_image():
    """One window in each of n equal rectangles of the block grid (a uniform draw of 256
    of a 62x62 grid leaves some of these rectangles empty, and others with several)."""
    chosen = sampling.choose_blocks((62, 62), 256, seed=5)
    edges = np.linspace(0, 62, 17).astype(int)
    cells = [(np.searchsorted(edges, i, "right") - 1, np.searchsorted(edges, j, "right") - 1)
             for i, j in chosen]
    assert len(chosen) == 256 and sorted(set(cells)) == [(a, b) for a in range(16)
                                                         for b in range(16)]
    assert chosen == sorted(chosen) == sampling.choose_blocks((62, 62), 256, seed=5)
    assert chosen != sampling.choose_blocks((62, 62), 256, seed=6)
    for shape, n in [((7, 300), 50), ((1, 10), 3), ((300, 2), 77), ((5, 5), 24), ((3, 3), 20)]:
        got = sampling.choose_blocks(shape, n, seed=1)
        assert len(got) == len(set(got)) == min(n, shape[0] * shape[1])
        assert all(0 <= i < shape[0] and 0 <= j < shape[1] for i, j in got)
    rng = np.random.default_rng(0)  # the old uniform draw, for contrast
    flat = rng.choice(62 * 62, 256, replace=False)
    uniform = {(np.searchsorted(edges, f // 62, "right"), np.searchsorted(edges, f % 62, "right"))
               for f in flat}
    assert len(uniform) < 256
