"""Test helpers shared by test modules (a plain module, not a conftest)."""

import numpy as np


def photo_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, many-coloured RGB image with a little noise (not flat noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / max(w, 1) * 6.0 + 1.0) * np.cos(y / max(h, 1) * 3.0)
    g = 128 + 90 * np.cos((x + y) / max(h + w, 1) * 9.0)
    b = 128 + 110 * np.sin(y / max(h, 1) * 5.0 - x / max(w, 1) * 2.0)
    img = np.stack([r, g, b], axis=2) + rng.normal(0, 6, (h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
