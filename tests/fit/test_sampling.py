"""Samples: bounded, deterministic, proportional to blocks; sample windows spread over the image."""

import threading

import dask.array as da
import numpy as np
import pytest
from helpers import photo_like

from kquant.fit import sampling


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
    allowed = {
        tuple(p)
        for (i, j) in chosen
        for p in img[i * 32 : (i + 1) * 32, j * 32 : (j + 1) * 32].reshape(-1, 3)
    }
    assert {tuple(p) for p in sample} <= allowed


@pytest.mark.parametrize(
    "chunks,rechunk", [((32, 32, 3), None), ((48, 40, 3), None), ((64, 64, 3), (40, 56, 3))]
)
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
    oracle = np.concatenate(
        [
            sampling.sample_block(
                img[rows[i] : rows[i + 1], cols[j] : cols[j + 1]], c, seed=2, block_id=(i, j)
            )
            for (i, j), c in zip(chosen, sampling.allocate(sizes, 2000))
            if c
        ]
    )
    assert np.array_equal(sample.compute(scheduler="threads"), oracle)


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
    cells = [
        (np.searchsorted(edges, i, "right") - 1, np.searchsorted(edges, j, "right") - 1)
        for i, j in chosen
    ]
    assert len(chosen) == 256 and sorted(set(cells)) == [
        (a, b) for a in range(16) for b in range(16)
    ]
    assert chosen == sorted(chosen) == sampling.choose_blocks((62, 62), 256, seed=5)
    assert chosen != sampling.choose_blocks((62, 62), 256, seed=6)
    for shape, n in [((7, 300), 50), ((1, 10), 3), ((300, 2), 77), ((5, 5), 24), ((3, 3), 20)]:
        got = sampling.choose_blocks(shape, n, seed=1)
        assert len(got) == len(set(got)) == min(n, shape[0] * shape[1])
        assert all(0 <= i < shape[0] and 0 <= j < shape[1] for i, j in got)
    rng = np.random.default_rng(0)  # the old uniform draw, for contrast
    flat = rng.choice(62 * 62, 256, replace=False)
    uniform = {
        (np.searchsorted(edges, f // 62, "right"), np.searchsorted(edges, f % 62, "right"))
        for f in flat
    }
    assert len(uniform) < 256
