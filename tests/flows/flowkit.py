"""Test images for the flow tests (imported as a top-level module by pytest's rootdir path)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, many-coloured RGB picture with a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / w * 6.0 + seed) * np.cos(y / h * 3.0)
    g = 128 + 90 * np.cos((x + y) / (h + w) * 9.0 + seed)
    b = 128 + 110 * np.sin(y / h * 5.0 - x / w * 2.0)
    img = np.stack([r, g, b], axis=2) + rng.normal(0, 6, (h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_png(path: Path, img: np.ndarray, *, age_seconds: float = 0.0) -> Path:
    import imageio.v3 as iio

    iio.imwrite(path, img, extension=".png")
    if age_seconds:
        t = time.time() - age_seconds
        os.utime(path, (t, t))
    return path


def truncated_png(path: Path) -> Path:
    """A file that starts like a PNG but is cut in half."""
    import imageio.v3 as iio

    data = iio.imwrite("<bytes>", photo(40, 56, seed=9), extension=".png")
    path.write_bytes(data[: len(data) // 2])
    return path


def wait_for(predicate, timeout: float, what: str, stack=None,
             interval: float = 0.5):
    from helpers import poll

    return poll(predicate, timeout, what, interval=interval,
                detail=stack.log_tail if stack is not None else None)
