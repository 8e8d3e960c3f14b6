"""Exact colour histogram of an image: unique 24-bit colours with their counts.

Computed chunk by chunk and merged by a tree reduction of sparse (colour, count)
pairs, so memory is bounded by the number of distinct colours, never by pixels.
"""

from __future__ import annotations

import numpy as np


def encode(rgb: np.ndarray) -> np.ndarray:
    """Pack (..., 3) uint8 RGB into uint32 codes ``R << 16 | G << 8 | B``."""
    rgb = np.asarray(rgb)
    return ((rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8)
            | rgb[..., 2].astype(np.uint32))


def decode(codes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode`: uint32 codes to (..., 3) uint8 RGB."""
    codes = np.asarray(codes, dtype=np.uint32)
    return np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=-1).astype(np.uint8)


def block_histogram(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique colour codes (uint32) of one (h, w, 3) block and their counts (int64)."""
    codes = encode(np.asarray(block)).ravel()
    if codes.size > 1 << 21:  # large blocks: counting beats sorting
        counts = np.bincount(codes, minlength=0)
        colours = np.flatnonzero(counts).astype(np.uint32)
        return colours, counts[colours].astype(np.int64)
    colours, counts = np.unique(codes, return_counts=True)
    return colours.astype(np.uint32), counts.astype(np.int64)


#: Above this many entries in total, parts are merged through a dense 2**24 array
#: (a scatter-add per part and one scan) instead of sorting their concatenation.
DENSE_MERGE = 1 << 21


def merge_histograms(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Merge sparse histograms: the union of colours, counts added."""
    if len(parts) == 1:
        return parts[0]
    if sum(len(p[0]) for p in parts) > DENSE_MERGE:
        dense = np.zeros(1 << 24, np.int64)
        for colours, counts in parts:
            dense[colours] += counts  # colours are unique within a part
        colours = np.flatnonzero(dense).astype(np.uint32)
        return colours, dense[colours]
    colours = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    order = np.argsort(colours, kind="stable")
    colours, counts = colours[order], counts[order]
    if not colours.size:
        return colours, counts
    starts = np.flatnonzero(np.concatenate([[True], colours[1:] != colours[:-1]]))
    return colours[starts], np.add.reduceat(counts, starts)


def colour_histogram(image, *, fan_in: int = 8):
    """Delayed ``(colours, counts)`` of a dask image, merged by a tree of ``fan_in``."""
    import dask

    level = [dask.delayed(block_histogram)(b) for b in image.to_delayed().reshape(-1)]
    while len(level) > 1:
        level = [dask.delayed(merge_histograms)(*level[i:i + fan_in])
                 for i in range(0, len(level), fan_in)]
    return level[0]
