"""The pyramid of a format-3 store: levels 1, 2, ... of mode-downsampled labels
(:func:`kquant.label.downsample.mode2x2`), written after the labels and before the store is
committed, one level after the other, each chunk-parallel: a chunk of level L is made from
the 2x2 chunks of level L - 1 beneath it (four chunks of labels in memory a task), so each
chunk is read once. Levels have the chunks of the labels (bench/README.md, "Open stores":
smaller chunks compress worse).

On a local disk the chunks below are read as files and downsampled without unpacking
(:func:`kquant.label.downsample.mode2x2_packbits`); elsewhere (object storage, shards)
through zarr.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from kquant.io import uri as uri_mod
from kquant.store.format import StoreMeta, level_path


@functools.lru_cache(maxsize=64)
def _source(root: str, path: str):
    import zarr

    from kquant.store import codecs  # noqa: F401  (registers packbits)

    return zarr.open_array(store=uri_mod.zarr_store(root), path=path, mode="r")


def _quarter_from_file(
    root: str, path: str, index: tuple[int, int], valid: tuple[int, int], meta: StoreMeta, level
) -> np.ndarray:
    """The 2x2 modes of one chunk of ``root/path`` read as a file (absent: all 0)."""
    from numcodecs.zstd import Zstd

    from kquant.label import downsample
    from kquant.store import direct

    rows, cols = meta.label_chunks
    f = Path(root) / path / direct.chunk_key(*index)
    try:
        raw = f.read_bytes()
    except FileNotFoundError:  # a chunk of the fill value
        return np.zeros((-(-valid[0] // 2), -(-valid[1] // 2)), np.uint8)
    data = np.frombuffer(Zstd().decode(raw), np.uint8).reshape(rows, cols * meta.bits // 8)
    return downsample.mode2x2_packbits(data, valid[0], valid[1], meta.bits)


def _level_chunk(root: str, meta: StoreMeta, level: int, i: int, j: int) -> None:
    """Chunk (i, j) of ``level`` from the pixels of the level below it."""
    from kquant.label import downsample
    from kquant.store import writer

    rows, cols = meta.level_chunks
    below = level_path(level - 1)
    bh, bw = meta.level_shape(level - 1)
    layout = writer._layout(root, below)
    if layout.direct and not layout.sharded and rows % 2 == 0:  # whole chunks of files below
        h, w = meta.level_shape(level)
        out = np.zeros((min(rows, h - i * rows), min(cols, w - j * cols)), np.uint8)
        for a in (0, 1):
            for b in (0, 1):
                r0, c0 = (2 * i + a) * rows, (2 * j + b) * cols
                if r0 >= bh or c0 >= bw:
                    continue
                valid = (min(rows, bh - r0), min(cols, bw - c0))
                q = _quarter_from_file(root, below, (2 * i + a, 2 * j + b), valid, meta, level)
                top, left = a * rows // 2, b * cols // 2
                out[top : top + q.shape[0], left : left + q.shape[1]] = q
    else:
        region = _source(root, below)[
            2 * i * rows : 2 * (i + 1) * rows, 2 * j * cols : 2 * (j + 1) * cols
        ]
        out = downsample.mode2x2(np.asarray(region))
    writer.write_level_chunk(root, level, out, i * rows, j * cols)


def level_tasks(root: str, meta: StoreMeta, level: int) -> list:
    """Dask tasks writing level ``level`` (>= 1) of the store being written at ``root`` from
    level ``level - 1`` (complete before they run), one per chunk of the level."""
    import dask

    rows, cols = meta.level_chunks
    h, w = meta.level_shape(level)
    task = dask.delayed(_level_chunk, pure=False)
    return [
        task(root, meta, level, i, j) for i in range(-(-h // rows)) for j in range(-(-w // cols))
    ]


def build(root: str, meta: StoreMeta, *, compute) -> None:
    """Write every level of ``meta.levels`` after the first, one level after the other, each
    chunk-parallel through ``compute`` (e.g. :func:`kquant.cluster.compute`)."""
    try:
        for level in range(1, meta.levels):
            compute(*level_tasks(root, meta, level))
    finally:
        _source.cache_clear()
