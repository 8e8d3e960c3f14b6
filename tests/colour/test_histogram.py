"""Colour codes and histograms: blocks, merges, dense chains, samples drawn while counting."""

import dask.array as da
import numpy as np
import pytest
from helpers import photo_like

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
        da.from_array(img, chunks=chunks + (3,)), fan_in=3
    ).compute()
    ref_c, ref_n = _oracle(img)
    assert np.array_equal(colours, ref_c) and np.array_equal(counts, ref_n)
    assert counts.sum() == 60 * 70


def test_large_block_counting_path():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(1500, 1500, 3), dtype=np.uint8)  # > 2**21 px: bincount path
    colours, counts = histogram.block_histogram(img)
    ref_c, ref_n = _oracle(img)
    assert np.array_equal(colours, ref_c) and np.array_equal(counts, ref_n)


def test_dense_and_sorted_merges_agree(monkeypatch):
    rng = np.random.default_rng(4)
    parts = [
        histogram.block_histogram(rng.integers(0, 40, size=(50, 60, 3), dtype=np.uint8))
        for _ in range(5)
    ]
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


@pytest.mark.parametrize("chain", [True, False])
def test_histogram_draws_the_sample_in_the_counting_tasks(monkeypatch, chain):
    img = photo_like(256, 192, seed=6)
    image = da.from_array(img, chunks=(64, 48, 3))
    if chain:
        monkeypatch.setattr(histogram, "CHAIN_MIN_PIXELS", 1)
    (colours, counts), parts = histogram.colour_histogram(
        image, per_block=sampling.block_samplers(image, 5000, seed=3)
    ).compute(scheduler="threads")
    ref_colours, ref_counts = histogram.block_histogram(img)
    assert np.array_equal(colours, ref_colours) and np.array_equal(counts, ref_counts)
    ref_sample = sampling.sample_pixels(image, 5000, seed=3).compute(scheduler="threads")
    assert np.array_equal(np.concatenate(parts), ref_sample)


def test_each_chain_link_gets_its_own_block_callable_only(monkeypatch):
    """Building the chained graph is linear in the blocks: a link is tokenized with its
    block's callable, not the whole list (which made it quadratic: 1.9 s at 1 Gpx)."""
    tokenized = []

    class Counted:
        def __init__(self, fn):
            self.fn = fn

        def __call__(self, block):
            return self.fn(block)

        def __dask_tokenize__(self):
            tokenized.append(id(self))
            return ("counted", id(self))

    img = photo_like(240, 320, seed=9)
    image = da.from_array(img, chunks=(16, 16, 3))  # 300 blocks
    monkeypatch.setattr(histogram, "CHAIN_MIN_PIXELS", 1)
    samplers = [
        Counted(f) if f is not None else None for f in sampling.block_samplers(image, 6000, seed=4)
    ]
    graph = histogram.colour_histogram(image, per_block=samplers)
    n = sum(f is not None for f in samplers)
    assert n == 300 and len(tokenized) <= 2 * n  # was n * n
    (colours, counts), parts = graph.compute(scheduler="threads")
    ref = sampling.sample_pixels(image, 6000, seed=4).compute(scheduler="threads")
    assert np.array_equal(np.concatenate(parts), ref)
