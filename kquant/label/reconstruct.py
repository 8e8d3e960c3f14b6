"""Reconstruction of RGB pixels from labels and a palette."""

from __future__ import annotations

import numpy as np


def reconstruct_block(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 pixels of one (h, w) block of labels."""
    return np.asarray(palette, np.uint8)[np.asarray(labels)]


def reconstruct(labels, palette: np.ndarray):
    """Lazy (H, W, 3) uint8 image of a dask (H, W) label array (``(H, W, 4)`` for a palette
    of RGBA entries)."""
    palette = np.asarray(palette, np.uint8)
    return labels.map_blocks(
        reconstruct_block,
        palette,
        dtype=np.uint8,
        new_axis=2,
        chunks=labels.chunks + ((palette.shape[1],),),
    )


def output_palette(
    palette: np.ndarray, nodata_index: int | None, fill: tuple[int, int, int] | None = None
) -> np.ndarray:
    """The palette pixels are decoded through: ``palette`` itself without a nodata index;
    with one, RGBA entries (the nodata entry transparent, alpha 0), or, with ``fill``,
    RGB entries with the nodata entry ``fill``."""
    palette = np.asarray(palette, np.uint8)
    if nodata_index is None:
        return palette
    if fill is not None:
        out = palette.copy()
        out[nodata_index] = np.asarray(fill, np.uint8)
        return out
    out = np.full((len(palette), 4), 255, np.uint8)
    out[:, :3] = palette
    out[nodata_index, 3] = 0
    return out
