import os
from pathlib import Path

import numpy as np
import pytest

from helpers import photo_like

os.environ.setdefault("OMP_NUM_THREADS", "1")


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
