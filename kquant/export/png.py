"""PNG outputs: the labels as an indexed PNG (the store's palette, 1, 2, 4 or 8 bits per
pixel), or the reconstructed RGB."""

from __future__ import annotations

from typing import BinaryIO

import numpy as np


def png_bits(n_colors: int) -> int:
    """PNG bit depth for a palette of ``n_colors`` entries (1, 2, 4 or 8)."""
    need = max(1, int(np.ceil(np.log2(max(int(n_colors), 1)))))
    return next(b for b in (1, 2, 4, 8) if b >= need)


def write_indexed(st, fh: BinaryIO) -> None:
    """The labels of the store ``st`` as an indexed PNG with its palette."""
    from PIL import Image

    labels = np.asarray(st.labels.compute(scheduler="threads"))
    im = Image.fromarray(labels, mode="P")
    im.putpalette(st.palette.ravel().tolist(), rawmode="RGB")
    im.save(fh, format="PNG", optimize=True, bits=png_bits(len(st.palette)))


def write_rgb(rgb, fh: BinaryIO) -> None:
    """A lazy (h, w, 3) uint8 array as an RGB PNG."""
    import imageio.v3 as iio

    iio.imwrite(fh, np.asarray(rgb.compute(scheduler="threads")), extension=".png")
