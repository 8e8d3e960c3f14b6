"""Nearest palette entry, exact in integer RGB, ties to the lowest index."""

import dask.array as da
import numpy as np
import pytest
from oracles import nearest_oracle

from kquant.label import assign, reconstruct


@pytest.mark.parametrize("k", [2, 3, 16, 100, 256])
def test_nearest_equals_integer_argmin(k):
    rng = np.random.default_rng(k)
    pixels = rng.integers(0, 256, size=(20000, 3), dtype=np.uint8)
    palette = rng.integers(0, 256, size=(k, 3), dtype=np.uint8)
    assert np.array_equal(assign.nearest(pixels, palette), nearest_oracle(pixels, palette))


def test_ties_go_to_lowest_index():
    palette = np.array([[10, 10, 10], [0, 0, 0], [10, 10, 10], [20, 20, 20]], np.uint8)
    pixels = np.array([[10, 10, 10], [5, 5, 5], [15, 15, 15], [255, 255, 255]], np.uint8)
    assert assign.nearest(pixels, palette).tolist() == [
        0,
        0,
        0,
        3,
    ]  # 5 is equidistant from 0 and 10
    assert np.array_equal(assign.nearest(pixels, palette), nearest_oracle(pixels, palette))


def test_extreme_colours_are_exact():
    """Distances up to 3*255^2 stay exact: corner colours against corner palettes."""
    corners = np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)], np.uint8)
    shifted = np.clip(corners.astype(int) + np.array([1, -1, 0]), 0, 255).astype(np.uint8)
    palette = np.concatenate([shifted, corners])
    assert np.array_equal(assign.nearest(corners, palette), nearest_oracle(corners, palette))


@pytest.mark.parametrize("chunks", [(97, 131), (7, 13), (64, 32), (97, 1), (1, 131)])
def test_blockwise_labels_equal_full_argmin(chunks):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(97, 131, 3), dtype=np.uint8)
    palette = rng.integers(0, 256, size=(16, 3), dtype=np.uint8)
    lazy = da.from_array(img, chunks=chunks + (3,))
    labels = lazy.map_blocks(  # labelled block by block, as the write pass does
        assign.nearest_block, palette, dtype=np.uint8, drop_axis=2, chunks=lazy.chunks[:2]
    )
    assert labels.chunks == lazy.chunks[:2]
    assert np.array_equal(labels.compute(), nearest_oracle(img, palette))
    rgb = reconstruct.reconstruct(labels, palette).compute()
    assert np.array_equal(rgb, palette[nearest_oracle(img, palette)])
