import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


def photo_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, many-coloured RGB image with a little noise (not flat noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / max(w, 1) * 6.0 + 1.0) * np.cos(y / max(h, 1) * 3.0)
    g = 128 + 90 * np.cos((x + y) / max(h + w, 1) * 9.0)
    b = 128 + 110 * np.sin(y / max(h, 1) * 5.0 - x / max(w, 1) * 2.0)
    img = np.stack([r, g, b], axis=2) + rng.normal(0, 6, (h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def china() -> np.ndarray:
    import imageio.v3 as iio
    import sklearn

    return iio.imread(Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg")


@pytest.fixture(scope="session")
def china_path() -> Path:
    import sklearn

    return Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg"


@pytest.fixture
def photo_png(tmp_path) -> tuple[Path, np.ndarray]:
    import imageio.v3 as iio

    img = photo_like(150, 213, seed=3)
    path = tmp_path / "photo.png"
    iio.imwrite(path, img)
    return path, img
