"""Bit packing of palette indices.

Labels are packed row by row: each image row of ``W`` labels becomes
``ceil(W * bits / 8)`` bytes, most significant bit first (the order PNG uses for
indexed images), the last byte of a row padded with zero bits. Because rows are
packed independently and column blocks are whole multiples of 8 pixels, any
rectangular window of packed chunks decodes on its own.
"""

from __future__ import annotations

import math

import numpy as np

from kquant.errors import ParameterError

#: Column blocks of packed labels must hold a multiple of this many pixels so
#: that every block starts on a byte boundary, whatever the bit width.
PIXEL_ALIGN = 8


def bits_for(n_colors: int) -> int:
    """Bits per pixel needed for ``n_colors`` palette entries: ``ceil(log2 n)``, at least 1.

    Raises
    ------
    ParameterError
        If ``n_colors`` is not in ``1..256``.
    """
    n = int(n_colors)
    if not 1 <= n <= 256:
        raise ParameterError(f"palette size must be between 1 and 256, got {n_colors}")
    return max(1, math.ceil(math.log2(n)))


def storage_bits(n_colors: int) -> int:
    """Bits per pixel a store (format 2) packs ``n_colors`` entries in: 1, 2, 4 or 8.

    The smallest byte-friendly width that holds :func:`bits_for` bits. A pixel
    never straddles two bytes, so repeated patterns stay byte-aligned and
    compress far better (zstd: 3-bit labels take 5-10 % more bytes than the
    same labels at 4 bits, 6-bit ones 10-20 % more than at 8; as in PNG).

    Raises
    ------
    ParameterError
        If ``n_colors`` is not in ``1..256``.
    """
    need = bits_for(n_colors)
    return next(b for b in (1, 2, 4, 8) if b >= need)


def packed_width(width: int, bits: int) -> int:
    """Number of bytes one packed row of ``width`` labels takes."""
    return (int(width) * int(bits) + 7) // 8


def pack_rows(labels: np.ndarray, bits: int) -> np.ndarray:
    """Pack a 2-D array of labels into ``bits`` bits each, row by row, MSB first.

    Parameters
    ----------
    labels : ndarray of uint8, shape (H, W)
        Palette indices, each below ``2**bits``.
    bits : int
        Bit width, 1 to 8.

    Returns
    -------
    ndarray of uint8, shape (H, ceil(W * bits / 8))

    Raises
    ------
    ParameterError
        If ``bits`` is not in 1..8 or a label does not fit in ``bits`` bits.
    """
    if not 1 <= bits <= 8:
        raise ParameterError(f"bits must be between 1 and 8, got {bits}")
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ParameterError(f"labels must be 2-D, got shape {labels.shape}")
    labels = labels.astype(np.uint8, copy=False)
    if bits == 8:
        return np.ascontiguousarray(labels)
    if labels.size and int(labels.max()) >> bits:
        raise ParameterError(f"a label does not fit in {bits} bits")
    h, w = labels.shape
    if bits == 4:  # fast path: two pixels a byte
        if w % 2:
            labels = np.concatenate([labels, np.zeros((h, 1), np.uint8)], axis=1)
        return (labels[:, 0::2] << 4) | labels[:, 1::2]
    if bits in (1, 2):
        per = 8 // bits
        pad = (-w) % per
        if pad:
            labels = np.concatenate([labels, np.zeros((h, pad), np.uint8)], axis=1)
        grouped = labels.reshape(h, -1, per)
        out = np.zeros(grouped.shape[:2], np.uint8)
        for i in range(per):
            out |= grouped[:, :, i] << (8 - bits * (i + 1))
        return out
    # general widths (3, 5, 6, 7): through a bit plane
    bitplane = np.unpackbits(labels[:, :, None], axis=2)[:, :, 8 - bits :]
    return np.packbits(bitplane.reshape(h, w * bits), axis=1, bitorder="big")


def unpack_rows(packed: np.ndarray, bits: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_rows`: ``width`` labels per row as uint8.

    Raises
    ------
    ParameterError
        If ``bits`` is not in 1..8 or ``packed`` is too narrow for ``width``.
    """
    if not 1 <= bits <= 8:
        raise ParameterError(f"bits must be between 1 and 8, got {bits}")
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.ndim != 2 or packed.shape[1] < packed_width(width, bits):
        raise ParameterError(
            f"packed rows of shape {packed.shape} cannot hold {width} labels of {bits} bits"
        )
    h = packed.shape[0]
    if bits == 8:
        return np.ascontiguousarray(packed[:, :width])
    if bits == 4:
        out = np.empty((h, packed.shape[1] * 2), np.uint8)
        out[:, 0::2] = packed >> 4
        out[:, 1::2] = packed & 0x0F
        return out[:, :width]
    if bits in (1, 2):
        per = 8 // bits
        mask = (1 << bits) - 1
        out = np.empty((h, packed.shape[1], per), np.uint8)
        for i in range(per):
            out[:, :, i] = (packed >> (8 - bits * (i + 1))) & mask
        return out.reshape(h, -1)[:, :width]
    bitplane = np.unpackbits(packed, axis=1, bitorder="big")[:, : width * bits]
    bitplane = bitplane.reshape(h, width, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.uint8)
    return (bitplane * weights).sum(axis=2, dtype=np.uint8)


# The zarr-extensions ``packbits`` codec (docs/format.md, "labels"): elements in
# lexicographic order, element i in bits [i*b, (i+1)*b) of one bit sequence whose bit j is
# bit ``j % 8`` (least significant first) of byte ``j // 8``; padded with 0 bits to a byte.


def _reorder_table(bits: int) -> np.ndarray:
    """Byte table between the MSB-first row packing and the packbits order (its own inverse:
    field ``i`` of ``8 // bits`` moves to field ``8 // bits - 1 - i``)."""
    values = np.arange(256, dtype=np.uint16)
    if bits >= 8:
        return values.astype(np.uint8)
    per, mask = 8 // bits, (1 << bits) - 1
    out = np.zeros(256, np.uint16)
    for i in range(per):
        out |= ((values >> (8 - bits * (i + 1))) & mask) << (bits * i)
    return out.astype(np.uint8)


_REORDER = {b: _reorder_table(b) for b in (1, 2, 4, 8)}


def reorder_packed(packed: np.ndarray, bits: int) -> np.ndarray:
    """Rows packed MSB-first (:func:`pack_rows`) in the packbits order, or back.

    For ``bits`` in 1, 2, 4, 8 a pixel never straddles two bytes, so the two orders differ
    only inside each byte: one table lookup per byte. Rows of a whole number of bytes
    (``width * bits`` a multiple of 8) concatenated are then the packbits encoding of the
    (H, W) labels.

    Raises
    ------
    ParameterError
        If ``bits`` is not 1, 2, 4 or 8.
    """
    table = _REORDER.get(int(bits))
    if table is None:
        raise ParameterError(f"the packbits order is kept for 1, 2, 4 or 8 bits, not {bits}")
    packed = np.asarray(packed, np.uint8)
    if bits == 8:
        return packed
    return table[packed]


def packbits_encode(values: np.ndarray, first_bit: int, last_bit: int) -> np.ndarray:
    """The packbits encoding (no padding byte) of an integer array, in C order.

    Each element keeps its bits ``first_bit..last_bit`` (0 is the least significant),
    elements follow one another in one bit sequence, least significant bit first in each
    byte; the last byte is padded with 0 bits.

    Raises
    ------
    ParameterError
        If the bit range is empty or outside the data type.
    """
    values = np.ascontiguousarray(values)
    nbits = values.dtype.itemsize * 8
    if values.dtype.kind not in "biu" or not 0 <= first_bit <= last_bit < nbits:
        raise ParameterError(f"bits {first_bit}..{last_bit} of {values.dtype} cannot be packed")
    b = last_bit - first_bit + 1
    flat = values.reshape(-1)
    if values.dtype.kind == "b":
        flat = flat.view(np.uint8)
    if values.dtype.itemsize == 1 and first_bit == 0 and b in (1, 2, 4, 8):
        if b == 8:
            return flat.view(np.uint8).copy()
        per, mask = 8 // b, np.uint8((1 << b) - 1)
        u = flat.view(np.uint8)
        pad = (-u.size) % per
        if pad:
            u = np.concatenate([u, np.zeros(pad, np.uint8)])
        grouped = (u & mask).reshape(-1, per)
        out = grouped[:, 0].copy()
        for i in range(1, per):
            out |= grouped[:, i] << np.uint8(b * i)
        return out
    le = flat.astype(flat.dtype.newbyteorder("<"), copy=False).view(np.uint8)
    bitplane = np.unpackbits(le.reshape(flat.size, -1), axis=1, bitorder="little")
    return np.packbits(bitplane[:, first_bit : last_bit + 1].reshape(-1), bitorder="little")


def packbits_decode(
    data, shape: tuple[int, ...], dtype, first_bit: int, last_bit: int
) -> np.ndarray:
    """Inverse of :func:`packbits_encode`: an array of ``shape`` and ``dtype``; the bits are
    shifted back to ``first_bit``, then sign-extended (signed types) or zero-extended.

    Raises
    ------
    ParameterError
        If ``data`` is shorter than the elements need, or the bit range does not fit.
    """
    dtype = np.dtype(dtype)
    nbits = dtype.itemsize * 8
    if dtype.kind not in "biu" or not 0 <= first_bit <= last_bit < nbits:
        raise ParameterError(f"bits {first_bit}..{last_bit} of {dtype} cannot be unpacked")
    b = last_bit - first_bit + 1
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.frombuffer(memoryview(data), np.uint8) if not isinstance(data, np.ndarray) else data
    raw = raw.reshape(-1).view(np.uint8)
    if raw.size < (n * b + 7) // 8:
        raise ParameterError(f"{raw.size} bytes cannot hold {n} elements of {b} bits")
    if dtype.kind != "b" and dtype.itemsize == 1 and first_bit == 0 and b in (1, 2, 4, 8):
        per, mask = 8 // b, np.uint8((1 << b) - 1)
        if b == 8:
            out = raw[:n].copy()
        else:
            nbytes = (n * b + 7) // 8
            fields = np.empty((nbytes, per), np.uint8)
            for i in range(per):
                fields[:, i] = (raw[:nbytes] >> np.uint8(b * i)) & mask
            out = fields.reshape(-1)[:n]
            if dtype.kind == "i" and b < 8:  # sign extension from bit b - 1
                out = np.where(out >> np.uint8(b - 1), out | np.uint8(0xFF ^ mask), out)
        return np.ascontiguousarray(out.view(dtype)).reshape(shape)
    bits_seq = np.unpackbits(raw, bitorder="little")[: n * b].reshape(n, b)
    plane = np.zeros((n, nbits), np.uint8)
    plane[:, first_bit : last_bit + 1] = bits_seq
    if dtype.kind == "i":
        plane[:, last_bit + 1 :] = bits_seq[:, -1:]
    le = np.packbits(plane, axis=1, bitorder="little").reshape(-1)
    out = le.view(dtype.newbyteorder("<")).astype(dtype)
    if dtype.kind == "b":
        out = le.view(np.uint8).astype(bool)
    return out.reshape(shape)
