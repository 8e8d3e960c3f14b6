"""Assignment through a lookup table over all 2**24 RGB colours.

For images much larger than 2**24 pixels, labelling each pixel by a table lookup is far
cheaper than a distance computation. The table (16 MiB, one uint8 palette index per
colour) is built by exact integer distances with ties to the lowest index, so labels are
identical to direct assignment (:func:`kquant.label.assign.nearest`).
:func:`label_pack_block` then does, in one compiled pass over a chunk, the lookup, the exact
squared error against the palette, the per-entry pixel counts and the bit packing (the layout
of :mod:`kquant.label.packing`), releasing the GIL so that dask threads run in parallel.
"""

from __future__ import annotations

import functools
import hashlib
import threading

import numba
import numpy as np

from kquant.label import cell_candidates

N_COLOURS = 1 << 24


@numba.njit(nogil=True, cache=True)
def _build(palette, cand, ncand, table):  # pragma: no cover - compiled
    side = 1 << cell_candidates.SHIFT
    per = cell_candidates.PER
    for cell in range(per * per * per):
        r0 = (cell // (per * per)) * side
        g0 = ((cell // per) % per) * side
        b0 = (cell % per) * side
        m = ncand[cell]
        for r in range(r0, r0 + side):
            for g in range(g0, g0 + side):
                base = (r << 16) | (g << 8)
                for b in range(b0, b0 + side):
                    best = cand[cell, 0]
                    best_d = 1 << 30
                    for c in range(m):
                        i = cand[cell, c]
                        dr = r - palette[i, 0]
                        dg = g - palette[i, 1]
                        db = b - palette[i, 2]
                        d = dr * dr + dg * dg + db * db
                        if d < best_d:  # strict, in index order: ties keep the lowest
                            best_d = d
                            best = i
                    table[base | b] = best


def build(palette: np.ndarray) -> np.ndarray:
    """The (2**24,) uint8 table of nearest palette indices, by colour code ``R<<16|G<<8|B``.

    Exact integer distances, ties to the lowest index: the same labels as
    :func:`kquant.assign.nearest`.
    """
    palette = np.ascontiguousarray(palette, np.int64)
    table = np.empty(N_COLOURS, np.uint8)
    cand, ncand = cell_candidates.candidates(palette)  # the table is filled cell by cell
    _build(palette, cand, ncand, table)
    return table


_lock = threading.Lock()


@functools.lru_cache(maxsize=2)
def _cached(key: str, palette_bytes: bytes, n: int) -> np.ndarray:
    return build(np.frombuffer(palette_bytes, np.uint8).reshape(n, 3))


def table_for(palette: np.ndarray) -> np.ndarray:
    """The table of ``palette`` (:func:`build`), built once per process, shared by its threads."""
    palette = np.ascontiguousarray(palette, np.uint8)
    raw = palette.tobytes()
    key = hashlib.blake2b(raw, digest_size=16).hexdigest()
    with _lock:
        return _cached(key, raw, len(palette))


# A plain lookup (the 16 MiB table stays in L3 cache), two pixels per step and two banks of
# counts (no store-to-load stalls); measured against a two-level table: bench/README.md.


@numba.njit(nogil=True, cache=True, inline="always")
def _one(row, x, table, pr, pg, pb):  # pragma: no cover - compiled
    r = np.int64(row[x, 0])
    g = np.int64(row[x, 1])
    b = np.int64(row[x, 2])
    lab = np.int64(table[(r << 16) | (g << 8) | b])
    dr = r - pr[lab]
    dg = g - pg[lab]
    db = b - pb[lab]
    return lab, dr * dr + dg * dg + db * db


@numba.njit(nogil=True, cache=True)
def _label_pack(block, table, palette, bits, packed, counts):  # pragma: no cover - compiled
    h, w = block.shape[0], block.shape[1]
    pr = palette[:, 0].copy()
    pg = palette[:, 1].copy()
    pb = palette[:, 2].copy()
    banks = np.zeros((2, 256), np.int64)
    sse = 0
    for y in range(h):
        row = block[y]
        out = packed[y]
        if bits == 8:
            for x in range(w):
                lab, e = _one(row, x, table, pr, pg, pb)
                sse += e
                banks[x & 1, lab] += 1
                out[x] = lab
        elif bits == 4:
            for x2 in range(w // 2):
                lab, e = _one(row, 2 * x2, table, pr, pg, pb)
                lab2, e2 = _one(row, 2 * x2 + 1, table, pr, pg, pb)
                sse += e + e2
                banks[0, lab] += 1
                banks[1, lab2] += 1
                out[x2] = (lab << 4) | lab2
            if w & 1:
                lab, e = _one(row, w - 1, table, pr, pg, pb)
                sse += e
                banks[0, lab] += 1
                out[w // 2] = lab << 4
        else:  # any width: a bit accumulator, most significant bits first
            acc = 0
            nacc = 0
            o = 0
            for x in range(w):
                lab, e = _one(row, x, table, pr, pg, pb)
                sse += e
                banks[x & 1, lab] += 1
                acc = (acc << bits) | lab
                nacc += bits
                if nacc >= 8:
                    nacc -= 8
                    out[o] = (acc >> nacc) & 0xFF
                    o += 1
                    acc &= (1 << nacc) - 1
            if nacc > 0:
                out[o] = (acc << (8 - nacc)) & 0xFF
    for j in range(counts.shape[0]):
        counts[j] = banks[0, j] + banks[1, j]
    return sse


def label_pack_block(
    block: np.ndarray, table: np.ndarray, palette: np.ndarray, bits: int
) -> tuple[np.ndarray, int, np.ndarray]:
    """Packed labels, exact squared error and per-entry counts of one (h, w, 3) block.

    ``table`` is the palette's table from :func:`table_for` (or :func:`build`).

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
    sse = _label_pack(block, table, pal, np.int64(bits), packed, counts)
    return packed, int(sse), counts


def warm() -> None:
    """Load (or compile) this module's kernels now, on a throw-away palette and block.

    For a cluster worker that is idle while the client fits: its first chunk of the
    write pass then does not wait for numba's cache. Nothing is kept.
    """
    palette = np.array([[0, 0, 0], [255, 255, 255]], np.uint8)
    table = build(palette)
    label_pack_block(np.zeros((2, 8, 3), np.uint8), table, palette, 1)
