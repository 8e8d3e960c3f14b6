"""The pyramid of a format-3 store: levels 1, 2, ... of mode-downsampled labels
(:func:`kquant.label.downsample.mode2x2`). Level 1 is made by the write pass itself, from each
block of labels as it is written (:func:`kquant.store.writer.write_packed_chunk`); the others
after it and before the store is committed, chunk-parallel: each chunk of level L from the
region of level L - 1 beneath it (four chunks of labels in memory a task)."""

from __future__ import annotations

import functools

import numpy as np

from kquant.io import uri as uri_mod
from kquant.store.format import StoreMeta, level_path


@functools.lru_cache(maxsize=64)
def _source(root: str, path: str):
    import zarr

    return zarr.open_array(store=uri_mod.zarr_store(root), path=path, mode="r")


def _level_chunk(root: str, level: int, i: int, j: int, chunks: tuple[int, int]) -> None:
    """Chunk (i, j) of ``level`` from the pixels of the level below it."""
    from kquant.label import downsample
    from kquant.store.writer import write_level_chunk

    rows, cols = chunks
    below = _source(root, level_path(level - 1))
    region = np.asarray(below[2 * i * rows : 2 * (i + 1) * rows, 2 * j * cols : 2 * (j + 1) * cols])
    write_level_chunk(root, level, downsample.mode2x2(region), i * rows, j * cols)


def level_tasks(root: str, meta: StoreMeta, level: int) -> list:
    """Dask tasks writing level ``level`` (>= 1) of the store being written at ``root`` from
    level ``level - 1`` (complete before they run), one per chunk of the level."""
    import dask

    rows, cols = meta.level_chunks
    h, w = meta.level_shape(level)
    task = dask.delayed(_level_chunk, pure=False)
    return [
        task(root, level, i, j, (rows, cols))
        for i in range(-(-h // rows))
        for j in range(-(-w // cols))
    ]


def build(root: str, meta: StoreMeta, *, compute) -> None:
    """Write the levels of ``meta.levels`` the write pass did not (level 1 when
    :attr:`StoreMeta.level1_in_write_pass` is false, then 2, 3, ...), one level after the
    other, each chunk-parallel through ``compute`` (e.g. :func:`kquant.cluster.compute`)."""
    first = 2 if meta.level1_in_write_pass else 1
    try:
        for level in range(first, meta.levels):
            compute(*level_tasks(root, meta, level))
    finally:
        _source.cache_clear()
