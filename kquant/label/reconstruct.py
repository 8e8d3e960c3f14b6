"""Reconstruction of RGB pixels from labels and a palette."""

from __future__ import annotations

import numpy as np


def reconstruct_block(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 pixels of one (h, w) block of labels."""
    return np.asarray(palette, np.uint8)[np.asarray(labels)]


def reconstruct(labels, palette: np.ndarray):
    """Lazy (H, W, 3) uint8 image of a dask (H, W) label array."""
    palette = np.asarray(palette, np.uint8)
    return labels.map_blocks(
        reconstruct_block, palette, dtype=np.uint8, new_axis=2, chunks=labels.chunks + ((3,),)
    )
