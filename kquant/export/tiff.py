"""TIFF outputs, deflate-compressed and tiled (written tile by tile): the labels as a palette
TIFF (``Photometric = Palette`` with a 16-bit ``ColorMap``), or the reconstructed RGB."""

from __future__ import annotations

from typing import BinaryIO

import numpy as np

#: Tile edge of the TIFFs written (images smaller than a tile are written as one strip).
TILE = 256


def _tiles(arr, fill_shape: tuple[int, ...]):
    """The blocks of a lazy array rechunked to TILE, each padded to ``fill_shape``, row by row."""
    for i in range(arr.numblocks[0]):
        for j in range(arr.numblocks[1]):
            block = np.asarray(arr.blocks[i, j].compute(scheduler="threads"))
            pad = np.zeros(fill_shape, np.uint8)
            pad[: block.shape[0], : block.shape[1]] = block
            yield pad


def _write(arr, fh: BinaryIO, **tags) -> None:
    import tifffile

    h, w = arr.shape[:2]
    if h >= TILE and w >= TILE:
        arr = arr.rechunk((TILE, TILE) + arr.shape[2:])
        tifffile.imwrite(
            fh,
            _tiles(arr, (TILE, TILE) + arr.shape[2:]),
            shape=arr.shape,
            dtype=np.uint8,
            tile=(TILE, TILE),
            compression="zlib",
            bigtiff=arr.size > 2**31,
            **tags,
        )
    else:
        tifffile.imwrite(
            fh, np.asarray(arr.compute(scheduler="threads")), compression="zlib", **tags
        )


def write_indexed(st, fh: BinaryIO) -> None:
    """The labels of the store ``st`` as a palette TIFF with its colour map."""
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, : len(st.palette)] = st.palette.T.astype(np.uint16) * 257
    _write(st.labels, fh, photometric="palette", colormap=colormap)


def write_rgb(rgb, fh: BinaryIO) -> None:
    """A lazy (h, w, 3) uint8 array as an RGB TIFF ((h, w, 4): RGBA, unassociated alpha)."""
    if rgb.shape[2] == 4:
        _write(rgb, fh, photometric="rgb", extrasamples=("unassalpha",))
    else:
        _write(rgb, fh, photometric="rgb")
