"""Export a store as an indexed image other tools open: PNG (palette) or TIFF (colormap).

The labels are written as they are, with the store's palette: no pixel is
re-quantized. PNG uses 1, 2, 4 or 8 bits per pixel (the smallest that holds the
palette); TIFF is a tiled, deflate-compressed palette image (``Photometric =
Palette`` with a 16-bit ``ColorMap``), written tile by tile.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from kquant.errors import ParameterError

SUFFIXES = (".png", ".tif", ".tiff")
TIFF_TILE = 256


def png_bits(n_colors: int) -> int:
    """PNG bit depth for a palette of ``n_colors`` entries (1, 2, 4 or 8)."""
    need = max(1, int(np.ceil(np.log2(max(int(n_colors), 1)))))
    return next(b for b in (1, 2, 4, 8) if b >= need)


def _write_png(st, fh: BinaryIO) -> None:
    from PIL import Image

    labels = np.asarray(st.labels.compute(scheduler="threads"))
    im = Image.fromarray(labels, mode="P")
    im.putpalette(st.palette.ravel().tolist(), rawmode="RGB")
    im.save(fh, format="PNG", optimize=True, bits=png_bits(len(st.palette)))


def _write_tiff(st, fh: BinaryIO) -> None:
    import tifffile

    h, w = st.shape
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, :len(st.palette)] = st.palette.T.astype(np.uint16) * 257
    if h >= TIFF_TILE and w >= TIFF_TILE:
        labels = st.labels.rechunk((TIFF_TILE, TIFF_TILE))

        def tiles():
            for i in range(labels.numblocks[0]):
                for j in range(labels.numblocks[1]):
                    block = np.asarray(labels.blocks[i, j].compute(scheduler="threads"))
                    pad = np.zeros((TIFF_TILE, TIFF_TILE), np.uint8)
                    pad[:block.shape[0], :block.shape[1]] = block
                    yield pad

        tifffile.imwrite(fh, tiles(), shape=(h, w), dtype=np.uint8, tile=(TIFF_TILE, TIFF_TILE),
                         photometric="palette", colormap=colormap, compression="zlib",
                         bigtiff=h * w > 2**31)
    else:
        tifffile.imwrite(fh, np.asarray(st.labels.compute(scheduler="threads")),
                         photometric="palette", colormap=colormap, compression="zlib")


def export(store_uri: str | os.PathLike, out: str | os.PathLike, *,
           overwrite: bool = False) -> Path:
    """Write the store at ``store_uri`` as an indexed PNG or a palette TIFF at ``out``.

    The format follows the suffix of ``out`` (``.png``, ``.tif``, ``.tiff``).
    The file is written whole or not at all (:func:`kquant.atomicfile.replacing`);
    ``overwrite`` replaces a plain file only (:func:`kquant.store.check_output`).

    Returns
    -------
    Path
        ``out``, absolute.

    Raises
    ------
    ParameterError
        If the suffix is not one of :data:`SUFFIXES`.
    TargetExistsError
        If ``out`` exists and ``overwrite`` is false.
    UnsafeTargetError
        If ``out`` lies inside the store, or is a folder (checked before any work).
    StoreError, IncompleteStoreError
        If the store cannot be opened.
    """
    from kquant import store
    from kquant.io import atomicfile

    out = Path(out)
    ext = out.suffix.lower()
    if ext not in SUFFIXES:
        raise ParameterError(f"export output must end in .png, .tif or .tiff, got {out.name!r}")
    out = store.check_output(out, overwrite=overwrite, stores=[store_uri])
    st = store.open_store(store_uri)
    with atomicfile.replacing(out, overwrite=overwrite) as fh:
        (_write_png if ext == ".png" else _write_tiff)(st, fh)
    return out
