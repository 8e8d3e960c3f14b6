import dask.array as da
import numpy as np
import pytest

from kquant.colour import histogram
from kquant.fit import sampling


def _oracle(img):
    codes = histogram.encode(img).ravel()
    return np.unique(codes, return_counts=True)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(1000, 3), dtype=np.uint8)
    assert np.array_equal(histogram.decode(histogram.encode(rgb)), rgb)


@pytest.mark.parametrize("chunks", [(60, 70), (7, 9), (13, 70), (60, 1)])
def test_tree_merged_histogram_equals_full(chunks):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 8, size=(60, 70, 3), dtype=np.uint8) * 30  # many repeats
    colours, counts = histogram.colour_histogram(
        da.from_array(img, chunks=chunks + (3,)), fan_in=3).compute()
    ref_c, ref_n = _oracle(img)
    assert np.array_equal(colours, ref_c) and np.array_equal(counts, ref_n)
    assert counts.sum() == 60 * 70


def test_large_block_counting_path():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(1500, 1500, 3), dtype=np.uint8)  # > 2**21 px: bincount path
    colours, counts = histogram.block_histogram(img)
    ref_c, ref_n = _oracle(img)
    assert np.array_equal(colours, ref_c) and np.array_equal(counts, ref_n)


def test_sampling_is_bounded_deterministic_and_chunk_proportional():
    img = np.zeros((100, 100, 3), np.uint8)
    img[:, 50:] = 200  # right half bright
    lazy = da.from_array(img, chunks=(100, 50, 3))
    s1 = sampling.sample_pixels(lazy, 1000, seed=5).compute()
    s2 = sampling.sample_pixels(lazy, 1000, seed=5).compute()
    assert s1.shape == (1000, 3) and np.array_equal(s1, s2)
    assert (s1[:, 0] == 200).sum() == 500
    assert sampling.sample_pixels(lazy, 10**6, seed=5).compute().shape == (10000, 3)
    assert sum(sampling.allocate([5, 3, 2], 7)) == 7


def test_dense_and_sorted_merges_agree(monkeypatch):
    rng = np.random.default_rng(4)
    parts = [histogram.block_histogram(rng.integers(0, 40, size=(50, 60, 3), dtype=np.uint8))
             for _ in range(5)]
    sorted_merge = histogram.merge_histograms(*parts)
    monkeypatch.setattr(histogram, "DENSE_MERGE", 0)
    dense_merge = histogram.merge_histograms(*parts)
    assert np.array_equal(sorted_merge[0], dense_merge[0])
    assert np.array_equal(sorted_merge[1], dense_merge[1])
    assert dense_merge[1].sum() == 5 * 50 * 60


@pytest.mark.parametrize("chains", [1, 2, 3])
def test_dense_chains_equal_the_tree(monkeypatch, chains):
    rng = np.random.default_rng(5)
    img = rng.integers(0, 12, size=(64, 80, 3), dtype=np.uint8) * 20
    lazy = da.from_array(img, chunks=(16, 16, 3))
    tree = histogram.colour_histogram(lazy).compute()
    monkeypatch.setattr(histogram, "CHAIN_MIN_PIXELS", 0)
    chained = histogram.colour_histogram(lazy, chains=chains).compute()
    assert np.array_equal(tree[0], chained[0]) and np.array_equal(tree[1], chained[1])
    ref_c, ref_n = _oracle(img)
    assert np.array_equal(chained[0], ref_c) and np.array_equal(chained[1], ref_n)
