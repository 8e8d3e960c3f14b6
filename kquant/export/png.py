"""PNG outputs: the labels as an indexed PNG (the store's palette, 1, 2, 4 or 8 bits per
pixel), or the reconstructed RGB."""

from __future__ import annotations

from typing import BinaryIO

import numpy as np


def png_bits(n_colors: int) -> int:
    """PNG bit depth for a palette of ``n_colors`` entries (1, 2, 4 or 8)."""
    need = max(1, int(np.ceil(np.log2(max(int(n_colors), 1)))))
    return next(b for b in (1, 2, 4, 8) if b >= need)


#: Rows of labels read from the store at a time (each band is packed and compressed
#: before the next is read: memory ~ ROWS_PER_BAND x width bytes, whatever the height).
ROWS_PER_BAND = 256


def _chunk(fh: BinaryIO, kind: bytes, data: bytes) -> None:
    import struct
    import zlib

    fh.write(struct.pack(">I", len(data)) + kind + data)
    fh.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_indexed(st, fh: BinaryIO) -> None:
    """The labels of the store ``st`` as an indexed PNG with its palette, streamed band by
    band of rows (never the whole image in memory); a nodata index is transparent (``tRNS``).
    """
    import struct
    import zlib

    h, w = st.meta.height, st.meta.width
    bits = png_bits(len(st.palette))
    fh.write(b"\x89PNG\r\n\x1a\n")
    _chunk(fh, b"IHDR", struct.pack(">IIBBBBB", w, h, bits, 3, 0, 0, 0))
    _chunk(fh, b"PLTE", np.asarray(st.palette, np.uint8).tobytes())
    index = st.meta.nodata_index
    if index is not None:
        _chunk(fh, b"tRNS", bytes([255] * index + [0]))
    z = zlib.compressobj(9)
    band = max(ROWS_PER_BAND, st.meta.chunk_rows)
    for y0 in range(0, h, band):
        rows = np.asarray(st.labels[y0 : y0 + band].compute(scheduler="threads"), np.uint8)
        if bits < 8:  # most significant bits first, each row padded to whole bytes
            per = 8 // bits
            pad = -w % per
            if pad:
                rows = np.pad(rows, ((0, 0), (0, pad)))
            grouped = rows.reshape(rows.shape[0], -1, per).astype(np.uint16)
            shifts = (bits * np.arange(per - 1, -1, -1)).astype(np.uint16)
            rows = (grouped << shifts).sum(axis=2).astype(np.uint8)
        filtered = np.zeros((rows.shape[0], rows.shape[1] + 1), np.uint8)  # filter 0 (none)
        filtered[:, 1:] = rows
        data = z.compress(filtered.tobytes())
        if data:
            _chunk(fh, b"IDAT", data)
    _chunk(fh, b"IDAT", z.flush())
    _chunk(fh, b"IEND", b"")


def write_rgb(rgb, fh: BinaryIO) -> None:
    """A lazy (h, w, 3) uint8 array as an RGB PNG."""
    import imageio.v3 as iio

    iio.imwrite(fh, np.asarray(rgb.compute(scheduler="threads")), extension=".png")
