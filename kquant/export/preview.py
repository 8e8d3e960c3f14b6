"""Side-by-side preview: original | reconstruction, palette swatches beneath."""

from __future__ import annotations

import math

import numpy as np

GAP = 8
SWATCH_HEIGHT = 32


def stride_for(height: int, width: int, max_width: int = 1600) -> int:
    """Subsampling step so that two images side by side fit in ``max_width``."""
    half = max(1, (max_width - GAP) // 2)
    return max(1, math.ceil(width / half), math.ceil(height / (2 * half)))


def checkerboard(height: int, width: int, *, square: int = 8) -> np.ndarray:
    """(height, width, 3) uint8 light and mid grey squares: where pixels are transparent."""
    y, x = np.indices((height, width))
    light = ((y // square + x // square) % 2).astype(bool)
    out = np.full((height, width, 3), 153, np.uint8)
    out[light] = 204
    return out


def compose(original: np.ndarray, reconstruction: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """One (h', w', 3) uint8 picture of both images and the palette as a strip of swatches."""
    h, w = original.shape[:2]
    width = 2 * w + GAP
    n = len(palette)
    canvas = np.full((h + GAP + SWATCH_HEIGHT, width, 3), 255, np.uint8)
    canvas[:h, :w] = original
    canvas[:h, w + GAP :] = reconstruction
    edges = np.linspace(0, width, n + 1).round().astype(int)
    for i, colour in enumerate(np.asarray(palette, np.uint8)):
        canvas[h + GAP :, edges[i] : edges[i + 1]] = colour
    return canvas


def write_png(path, picture: np.ndarray, *, overwrite: bool = True) -> None:
    """Write a picture as PNG, whole or not at all (:func:`kquant.atomicfile.replacing`).

    Raises
    ------
    TargetExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    import imageio.v3 as iio

    from kquant.io import atomicfile

    with atomicfile.replacing(path, overwrite=overwrite) as fh:
        iio.imwrite(fh, picture, extension=".png")
