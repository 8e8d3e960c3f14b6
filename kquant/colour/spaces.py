"""Colour spaces for the perceptual mode: sRGB (uint8) to OKLab or CIELAB and back.

Pure float kernels. Coordinates are scaled so that one unit is about one
just-noticeable step (OKLab x 100, CIELAB as is), which keeps the fit's
tolerances meaningful in every space.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from kquant.errors import ParameterError

#: Spaces the palette can be fitted and pixels assigned in.
Space = Literal["rgb", "oklab", "lab"]
SPACES: tuple[str, ...] = get_args(Space)

_M1 = np.array(
    [
        [0.4122214708, 0.5363325363, 0.0514459929],
        [0.2119034982, 0.6806995451, 0.1073969566],
        [0.0883024619, 0.2817188376, 0.6299787005],
    ]
)
_M2 = np.array(
    [
        [0.2104542553, 0.7936177850, -0.0040720468],
        [1.9779984951, -2.4285922050, 0.4505937099],
        [0.0259040371, 0.7827717662, -0.8086757660],
    ]
)
_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_WHITE = _XYZ.sum(axis=1)  # D65 white of sRGB
_OKLAB_SCALE = 100.0


def check_space(space: str) -> str:
    """Validate a colour-space name.

    Raises
    ------
    ParameterError
        If ``space`` is not one of :data:`SPACES`.
    """
    if space not in SPACES:
        raise ParameterError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    return space


def _linear(rgb: np.ndarray) -> np.ndarray:
    c = np.asarray(rgb, np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _gamma(lin: np.ndarray) -> np.ndarray:
    lin = np.clip(lin, 0.0, 1.0)
    c = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * np.power(lin, 1 / 2.4) - 0.055)
    return c * 255.0


def _lab_f(t):
    d = 6.0 / 29.0
    return np.where(t > d**3, np.cbrt(t), t / (3 * d * d) + 4.0 / 29.0)


def _lab_finv(f):
    d = 6.0 / 29.0
    return np.where(f > d, f**3, 3 * d * d * (f - 4.0 / 29.0))


def from_rgb(rgb: np.ndarray, space: str) -> np.ndarray:
    """(..., 3) sRGB values 0-255 to ``space`` coordinates (float64).

    Raises
    ------
    ParameterError
        If ``space`` is unknown.
    """
    check_space(space)
    rgb = np.asarray(rgb)
    if space == "rgb":
        return rgb.astype(np.float64)
    lin = _linear(rgb)
    if space == "oklab":
        lms = np.cbrt(lin @ _M1.T)
        return (lms @ _M2.T) * _OKLAB_SCALE
    xyz = (lin @ _XYZ.T) / _WHITE
    f = _lab_f(xyz)
    return np.stack(
        [
            116.0 * f[..., 1] - 16.0,
            500.0 * (f[..., 0] - f[..., 1]),
            200.0 * (f[..., 1] - f[..., 2]),
        ],
        axis=-1,
    )


def to_rgb(coords: np.ndarray, space: str) -> np.ndarray:
    """Inverse of :func:`from_rgb`: float sRGB 0-255 (clipped to the gamut, not rounded).

    Raises
    ------
    ParameterError
        If ``space`` is unknown.
    """
    check_space(space)
    coords = np.asarray(coords, np.float64)
    if space == "rgb":
        return np.clip(coords, 0.0, 255.0)
    if space == "oklab":
        lms = (coords / _OKLAB_SCALE) @ np.linalg.inv(_M2).T
        lin = (lms**3) @ np.linalg.inv(_M1).T
    else:
        fy = (coords[..., 0] + 16.0) / 116.0
        f = np.stack([fy + coords[..., 1] / 500.0, fy, fy - coords[..., 2] / 200.0], axis=-1)
        lin = (_lab_finv(f) * _WHITE) @ np.linalg.inv(_XYZ).T
    return _gamma(lin)
