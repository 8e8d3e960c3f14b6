"""The nearest entry in a colour space, against brute force."""

import numpy as np
import pytest

from kquant.colour import spaces
from kquant.label import nearest_in_space


@pytest.mark.parametrize("space", ["rgb", "oklab", "lab"])
def test_nearest_in_space_matches_brute_force(space):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(3000, 3), dtype=np.uint8)
    pal = rng.integers(0, 256, size=(13, 3), dtype=np.uint8)
    got = nearest_in_space.nearest(pixels, pal, space)
    p, c = spaces.from_rgb(pixels, space), spaces.from_rgb(pal, space)
    d = ((p[:, None] - c[None]) ** 2).sum(2)
    best = d.min(1)
    # the chosen entry is a nearest one (ties may go either way only within float noise)
    assert np.allclose(d[np.arange(len(p)), got], best, rtol=0, atol=1e-9 * best.max())
