"""Reconstruction error: sum of squared errors per chunk, MSE and PSNR."""

from __future__ import annotations

import math

import numpy as np

#: Pixels measured at a time: bounds the temporaries to a few MiB whatever the block.
_ROWS_PIXELS = 1 << 16


def _row_slabs(h: int, w: int):
    rows = max(1, _ROWS_PIXELS // max(1, w))
    for r in range(0, h, rows):
        yield r, min(h, r + rows)


def sse_block(block: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> int:
    """Exact integer sum of squared channel errors of one block's reconstruction.

    ``block`` is (h, w, 3) or (m, 3) and ``labels`` (h, w) or (m,); computed in slabs of
    rows, so that the temporaries stay small whatever the block.
    """
    block = np.asarray(block)
    labels = np.asarray(labels)
    if block.ndim == 2:
        block, labels = block[None], labels[None]
    pal = np.asarray(palette, np.int32)
    total = 0
    for r0, r1 in _row_slabs(*labels.shape[:2]):
        diff = block[r0:r1].astype(np.int32)
        diff -= pal[labels[r0:r1]]
        np.multiply(diff, diff, out=diff)  # at most 255**2: int32 holds it
        total += int(diff.sum(dtype=np.int64))
    return total


def label_counts(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixels (int64, length ``n``) per palette entry of a label array, in slabs."""
    flat = np.asarray(labels).reshape(-1)
    counts = np.zeros(n, np.int64)
    for s in range(0, len(flat), _ROWS_PIXELS * 16):
        counts += np.bincount(flat[s : s + _ROWS_PIXELS * 16], minlength=n)[:n]
    return counts


def mse(sse: int, n_pixels: int) -> float:
    """Mean squared error per channel sample (the convention of skimage and PSNR tools)."""
    return float(sse) / (3.0 * n_pixels) if n_pixels else 0.0


def psnr(mse_value: float, *, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for a lossless reconstruction."""
    return math.inf if mse_value <= 0 else 10.0 * math.log10(peak * peak / mse_value)


def format_bytes(n: float) -> str:
    """A byte count for people: ``"512 B"``, ``"40.1 KiB"``, ``"1.3 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
