"""Assignment through a lookup table over all 2**24 RGB colours.

For images much larger than 2**24 pixels, labelling each pixel by a table lookup is far
cheaper than a distance computation. The table (16 MiB, one uint8 palette index per
colour) is built by exact integer distances with ties to the lowest index, so labels are
identical to direct assignment (:func:`kquant.assign.nearest`). :func:`label_pack_block` then does, in one compiled pass over a chunk, the
lookup, the exact squared error against the palette, the per-entry pixel counts and the
bit packing (the layout of :mod:`kquant.packing`), releasing the GIL so that dask threads
run in parallel.
"""

from __future__ import annotations

import functools
import hashlib
import threading

import numba
import numpy as np


N_COLOURS = 1 << 24


@numba.njit(nogil=True, cache=True)
def _build(palette, table):  # pragma: no cover - compiled
    n = palette.shape[0]
    for code in range(table.shape[0]):
        r = code >> 16
        g = (code >> 8) & 255
        b = code & 255
        best = 0
        best_d = 1 << 30
        for i in range(n):
            dr = r - palette[i, 0]
            dg = g - palette[i, 1]
            db = b - palette[i, 2]
            d = dr * dr + dg * dg + db * db
            if d < best_d:  # strict: ties keep the lowest index
                best_d = d
                best = i
        table[code] = best


def build(palette: np.ndarray) -> np.ndarray:
    """The (2**24,) uint8 table of nearest palette indices, by colour code ``R<<16|G<<8|B``.

    Exact integer distances, ties to the lowest index: the same labels as
    :func:`kquant.assign.nearest`.
    """
    palette = np.ascontiguousarray(palette, np.int64)
    table = np.empty(N_COLOURS, np.uint8)
    _build(palette, table)
    return table


_lock = threading.Lock()


MIXED = 0xFFFF


def coarse(table: np.ndarray) -> np.ndarray:
    """A 2**18-entry uint16 table over 4x4x4 colour cells: the label shared by every colour
    of the cell, or MIXED where the cell straddles a boundary (then the full table decides).

    At 512 KiB it stays in cache, while the 16 MiB full table does not: most pixels are
    labelled without a cache miss, and exactly as by the full table.
    """
    cells = table.reshape(64, 4, 64, 4, 64, 4).transpose(0, 2, 4, 1, 3, 5).reshape(1 << 18, 64)
    lo, hi = cells.min(axis=1), cells.max(axis=1)
    return np.where(lo == hi, lo.astype(np.uint16), np.uint16(MIXED))


@functools.lru_cache(maxsize=2)
def _cached(key: str, palette_bytes: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    table = build(np.frombuffer(palette_bytes, np.uint8).reshape(n, 3))
    return coarse(table), table


def tables_for(palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(coarse, table)`` of ``palette``, built once per process and shared by its threads."""
    palette = np.ascontiguousarray(palette, np.uint8)
    raw = palette.tobytes()
    key = hashlib.blake2b(raw, digest_size=16).hexdigest()
    with _lock:
        return _cached(key, raw, len(palette))


@numba.njit(nogil=True, cache=True)
def _label_pack(block, cells, table, palette, bits, packed, counts):  # pragma: no cover
    h, w = block.shape[0], block.shape[1]
    sse = 0
    for y in range(h):
        acc = 0
        nacc = 0
        out = 0
        for x in range(w):
            r = np.int64(block[y, x, 0])
            g = np.int64(block[y, x, 1])
            b = np.int64(block[y, x, 2])
            lab = np.int64(cells[((r >> 2) << 12) | ((g >> 2) << 6) | (b >> 2)])
            if lab == 0xFFFF:
                lab = np.int64(table[(r << 16) | (g << 8) | b])
            counts[lab] += 1
            dr = r - palette[lab, 0]
            dg = g - palette[lab, 1]
            db = b - palette[lab, 2]
            sse += dr * dr + dg * dg + db * db
            acc = (acc << bits) | lab
            nacc += bits
            if nacc >= 8:
                nacc -= 8
                packed[y, out] = (acc >> nacc) & 0xFF
                out += 1
                acc &= (1 << nacc) - 1
        if nacc > 0:
            packed[y, out] = (acc << (8 - nacc)) & 0xFF
    return sse


def label_pack_block(block: np.ndarray, tables: tuple[np.ndarray, np.ndarray],
                     palette: np.ndarray, bits: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Packed labels, exact squared error and per-entry counts of one (h, w, 3) block.

    ``tables`` is ``(coarse, table)`` from :func:`tables_for`.

    Returns
    -------
    packed : ndarray of uint8, shape (h, ceil(w * bits / 8))
    sse : int
    counts : ndarray of int64, shape (n,)
    """
    block = np.ascontiguousarray(block, np.uint8)
    h, w = block.shape[:2]
    packed = np.zeros((h, (w * bits + 7) // 8), np.uint8)
    counts = np.zeros(len(palette), np.int64)
    pal = np.ascontiguousarray(palette, np.int64)
    cells, table = tables
    sse = _label_pack(block, cells, table, pal, np.int64(bits), packed, counts)
    return packed, int(sse), counts


def label_block(block: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Labels (h, w) uint8 of one (h, w, 3) block by table lookup (numpy, no compilation)."""
    block = np.asarray(block)
    codes = ((block[..., 0].astype(np.uint32) << 16) | (block[..., 1].astype(np.uint32) << 8)
             | block[..., 2])
    return table[codes]
