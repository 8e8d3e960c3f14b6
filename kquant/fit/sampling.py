"""Deterministic, bounded sampling of pixels from a chunked image."""

from __future__ import annotations

import math

import numpy as np


def allocate(sizes: list[int], n: int) -> list[int]:
    """Split ``n`` draws over blocks in proportion to their sizes (largest remainder).

    Every block gets at most its size; the result sums to ``min(n, sum(sizes))``.
    """
    sizes_a = np.asarray(sizes, dtype=np.int64)
    total = int(sizes_a.sum())
    if n >= total:
        return [int(s) for s in sizes_a]
    exact = sizes_a * (n / total)
    base = np.floor(exact).astype(np.int64)
    short = n - int(base.sum())
    order = np.argsort(-(exact - base), kind="stable")
    base[order[:short]] += 1
    return [int(b) for b in np.minimum(base, sizes_a)]


def sample_block(block: np.ndarray, n: int, *, seed: int, block_id: tuple[int, ...]) -> np.ndarray:
    """``n`` pixels drawn without replacement from one (h, w, 3) block, as (n, 3) uint8.

    The draw depends only on ``seed``, ``block_id`` and the block's size, so it
    is the same on any scheduler and in any order.
    """
    flat = np.asarray(block).reshape(-1, block.shape[-1])
    if n >= len(flat):
        return flat.copy()
    rng = np.random.default_rng([seed, *block_id])
    idx = np.sort(rng.choice(len(flat), size=n, replace=False))
    return flat[idx]


def block_samplers(image, n: int, *, seed: int = 0) -> list:
    """One callable per block (None where it draws nothing), in the order of
    ``image.to_delayed().ravel()``: concatenated in that order, their draws are
    :func:`sample_pixels`'s. For drawing in tasks that read the blocks anyway."""
    import functools

    locs = list(np.ndindex(*image.numblocks))
    sizes = [int(np.prod([image.chunks[d][i] for d, i in enumerate(loc[:2])])) for loc in locs]
    return [
        functools.partial(sample_block, n=c, seed=seed, block_id=loc) if c else None
        for c, loc in zip(allocate(sizes, int(n)), locs)
    ]


def sample_pixels(image, n: int, *, seed: int = 0):
    """A delayed (m, 3) uint8 array of ``m = min(n, H*W)`` pixels drawn from ``image``.

    Each chunk contributes in proportion to its size; only the drawn pixels
    leave the chunk's task.
    """
    import dask

    blocks = image.to_delayed().reshape(-1)
    locs = list(np.ndindex(*image.numblocks))
    sizes = [int(np.prod([image.chunks[d][i] for d, i in enumerate(loc[:2])])) for loc in locs]
    counts = allocate(sizes, int(n))
    parts = [
        dask.delayed(sample_block)(b, c, seed=seed, block_id=loc)
        for b, c, loc in zip(blocks, counts, locs)
        if c
    ]
    return dask.delayed(np.concatenate)(parts, axis=0)


def choose_blocks(
    numblocks: tuple[int, int], n_windows: int, *, seed: int
) -> list[tuple[int, int]]:
    """``n_windows`` distinct block indices spread over the image (all blocks if fewer), sorted.

    Stratified: the block grid is cut into about ``n_windows`` equal rectangles and one
    block is drawn in each (the rest, if the rectangles are fewer, uniformly among the
    others). A uniform draw can leave whole regions unseen, and an image whose colours
    drift across it then gets a palette for part of it (see :data:`WINDOWS_PER_GPX`).
    """
    rows, cols = int(numblocks[0]), int(numblocks[1])
    total = rows * cols
    if n_windows >= total:
        return [(i, j) for i in range(rows) for j in range(cols)]
    rng = np.random.default_rng([seed, 3])
    grid_rows = min(rows, n_windows, max(1, round(math.sqrt(n_windows * rows / cols))))
    grid_cols = min(cols, max(1, n_windows // grid_rows))
    row_edges = np.linspace(0, rows, grid_rows + 1).astype(np.int64)
    col_edges = np.linspace(0, cols, grid_cols + 1).astype(np.int64)
    chosen = {
        int(rng.integers(row_edges[a], row_edges[a + 1])) * cols
        + int(rng.integers(col_edges[b], col_edges[b + 1]))
        for a in range(grid_rows)
        for b in range(grid_cols)
    }
    if len(chosen) < n_windows:  # the remainder, uniformly among the blocks not chosen
        rest = np.setdiff1d(np.arange(total), np.fromiter(chosen, np.int64))
        chosen.update(rng.choice(rest, size=n_windows - len(chosen), replace=False).tolist())
    return [(f // cols, f % cols) for f in sorted(chosen)]


#: Windows (tiles) read for the sample of a gigapixel; an image of n pixels reads
#: ``WINDOWS_PER_GPX * sqrt(n / 2**30)``, at least WINDOWS, at most MAX_WINDOWS (measured:
#: bench/README.md, "The sample's tiles are spread over the image").
WINDOWS_PER_GPX = 256
WINDOWS = 128
MAX_WINDOWS = 1024


def windows_for(n_pixels: int) -> int:
    """Windows :func:`sample_windows` reads for an image of ``n_pixels`` pixels."""
    return int(min(MAX_WINDOWS, max(WINDOWS, round(WINDOWS_PER_GPX * math.sqrt(n_pixels / 2**30)))))


def sample_windows(image, n: int, *, seed: int = 0, n_windows: int = WINDOWS):
    """A delayed (m, 3) sample of about ``n`` pixels read from ``n_windows`` chunks only.

    For images too large for a full pass: with ``image`` chunked at the file's
    native tile size, only the chosen tiles are read and decoded, so the cost
    is bounded by ``n_windows`` tiles whatever the image size. Pixels are drawn
    from each chosen chunk in proportion to its size.
    """
    import dask
    from dask.delayed import Delayed

    chosen = choose_blocks(image.numblocks[:2], n_windows, seed=seed)
    sizes = [image.chunks[0][i] * image.chunks[1][j] for i, j in chosen]
    counts = allocate(sizes, int(n))
    keys = [(image.name, i, j) + (0,) * (image.ndim - 2) for i, j in chosen]
    # the graph of the chosen blocks only: ``image.to_delayed()`` would build and optimise
    # the tasks of every block (0.19 s at 1 Gpx, 0.8 s at 4 Gpx, against 0.03 / 0.07 s)
    graph = dict(image.__dask_graph__().cull(set(keys)))
    parts = [
        dask.delayed(sample_block)(Delayed(key, graph), c, seed=seed, block_id=(i, j))
        for key, (i, j), c in zip(keys, chosen, counts)
        if c
    ]
    return dask.delayed(np.concatenate)(parts, axis=0)
