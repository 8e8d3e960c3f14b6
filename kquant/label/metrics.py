"""Reconstruction error: sum of squared errors per chunk, MSE and PSNR."""

from __future__ import annotations

import math

import numpy as np


def sse_block(block: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> int:
    """Exact integer sum of squared channel errors of one block's reconstruction."""
    diff = np.asarray(block, np.int64) - np.asarray(palette, np.int64)[np.asarray(labels)]
    return int(np.square(diff, dtype=np.int64).sum())


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
