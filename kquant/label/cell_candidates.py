"""Per cell of 8x8x8 colours, the palette entries that can be nearest to some colour in it.

Both the 2**24 lookup table (:mod:`kquant.lut`) and the fit's passes over colour codes
(:mod:`kquant.fit.compact`) find, for many colours, the nearest of K entries. Colours of one
cell share a short candidate list: an entry nearest to some colour ``x`` of the cell (ties
included) lies within the nearest entry's distance from the cell's centre plus twice the
cell's half-diagonal, since moving from the centre to ``x`` changes every distance by at
most the half-diagonal. Lists keep the entries in index order, so a strict ``<`` over them
keeps the lowest index in a tie, as a search over all entries does.
"""

from __future__ import annotations

import numpy as np

from kquant.jit import compiled

#: log2 of a cell's side: cells of 8x8x8 colours, 32**3 of them.
SHIFT = 3
#: Cells per channel.
PER = 256 >> SHIFT
#: Number of cells.
N_CELLS = PER**3


def _candidates_py(centers, occupied, cand, ncand):  # pragma: no cover - compiled
    k = centers.shape[0]
    side = 1 << SHIFT
    half = (side - 1) / 2.0
    reach = 2.0 * np.sqrt(3.0) * half + 1e-6  # twice the distance from a cell's centre to a corner
    dist = np.empty(k, np.float64)
    for cell in range(PER * PER * PER):
        if occupied.shape[0] > 0 and not occupied[cell]:
            ncand[cell] = 0
            continue
        r = (cell // (PER * PER)) * side + half
        g = ((cell // PER) % PER) * side + half
        b = (cell % PER) * side + half
        dmin = np.inf
        for j in range(k):
            dr = r - centers[j, 0]
            dg = g - centers[j, 1]
            db = b - centers[j, 2]
            dist[j] = np.sqrt(dr * dr + dg * dg + db * db)
            dmin = min(dmin, dist[j])
        m = 0
        for j in range(k):
            if dist[j] <= dmin + reach:
                cand[cell, m] = j
                m += 1
        ncand[cell] = m


def candidates(centers: np.ndarray, occupied: np.ndarray | None = None):
    """Candidate entries of every cell (cell ``(R>>3)<<10 | (G>>3)<<5 | B>>3``).

    Parameters
    ----------
    centers : ndarray (k, 3)
        Palette entries or centres, in RGB units.
    occupied : ndarray of bool (N_CELLS,), optional
        Cells to fill (:func:`occupied_cells`); the others get no candidates. All by default.

    Returns
    -------
    cand : ndarray (N_CELLS, k) of uint8
        Row ``cell`` lists its candidates, in index order, in its first ``ncand[cell]`` places.
    ncand : ndarray (N_CELLS,) of int64
    """
    centers = np.ascontiguousarray(centers, np.float64)
    cand = np.empty((N_CELLS, len(centers)), np.uint8 if len(centers) <= 256 else np.int64)
    ncand = np.empty(N_CELLS, np.int64)
    flags = np.zeros(0, np.bool_) if occupied is None else np.asarray(occupied, np.bool_)
    compiled(_candidates_py)(centers, flags, cand, ncand)
    return cand, ncand


def occupied_cells(codes: np.ndarray) -> np.ndarray:
    """Flags of the cells that hold at least one of ``codes`` (``R<<16 | G<<8 | B``)."""
    codes = np.asarray(codes, np.uint32)
    cell = (
        ((codes >> (16 + SHIFT)) << (2 * (8 - SHIFT)))
        | (((codes >> (8 + SHIFT)) & (PER - 1)) << (8 - SHIFT))
        | ((codes & 255) >> SHIFT)
    )
    flags = np.zeros(N_CELLS, np.bool_)
    flags[cell] = True
    return flags
