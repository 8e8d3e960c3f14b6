"""The 2^24-entry lookup table and the compiled label-and-pack kernel, against numpy oracles."""

import numpy as np
import pytest
from helpers import photo_like
from oracles import nearest_oracle

from kquant.colour import histogram
from kquant.label import lookup


@pytest.fixture(scope="module")
def palette():
    return np.random.default_rng(7).integers(0, 256, size=(16, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def table(palette):
    return lookup.build(palette)


def _check_label_pack(img, table, pal, bits):
    from kquant.label import packing

    n_colours = len(pal)
    packed, sse, counts = lookup.label_pack_block(img, table, pal, bits)
    ref = nearest_oracle(img, pal)
    assert np.array_equal(table[histogram.encode(img)], ref)  # the table itself
    assert np.array_equal(packed, packing.pack_rows(ref, bits))
    assert sse == int(((img.astype(np.int64) - pal[ref].astype(np.int64)) ** 2).sum())
    assert np.array_equal(counts, np.bincount(ref.ravel(), minlength=n_colours))


def test_lookup_table_equals_exact_argmin(palette, table):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1 << 24, size=50000)
    rgb = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], 1).astype(np.uint8)
    assert np.array_equal(table[codes], nearest_oracle(rgb, palette))


@pytest.mark.parametrize(
    "pal",
    [
        [[0, 0, 0], [2, 0, 0], [1, 5, 0], [1, -5 % 256, 0]],  # ties on whole planes
        [[10, 10, 10], [10, 10, 10], [250, 3, 7], [9, 11, 10]],  # a duplicate entry
        "random16",
        "random256",
    ],
)
def test_cell_pruned_table_equals_exact_argmin_with_ties(pal):
    rng = np.random.default_rng(3)
    if isinstance(pal, str):
        pal = rng.integers(0, 256, size=(int(pal[6:]), 3))
    pal = np.asarray(pal, np.uint8)
    table = lookup.build(pal)
    planes = np.arange(1 << 16)
    codes = np.concatenate(
        [(r << 16) | planes for r in (0, 1, 2, 7, 8, 100, 255)]
        + [rng.integers(0, 1 << 24, size=100_000)]
    )
    rgb = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], 1).astype(np.uint8)
    ref = np.concatenate([nearest_oracle(rgb[i : i + 8192], pal) for i in range(0, len(rgb), 8192)])
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
