"""OME-NGFF 0.5 metadata (the ``ome`` attribute of a zarr v3 group; docs/format.md).

A format-3 store is itself an NGFF **label image**: ``multiscales`` lists ``labels`` and the
pyramid's levels (``levels/1``, ``levels/2``, ...) with their scale (and half-pixel
translation: a level-L pixel is the 2^L x 2^L block of the image it stands for), and
``image-label`` gives each palette index its colour (``rgba``, opaque). ``kquant export ...
OUT.ome.zarr`` writes an NGFF **image** (RGB, axes c, y, x) with the labels under
``labels/``, for readers that cannot load the packbits codec.
"""

from __future__ import annotations

import numpy as np

NGFF_VERSION = "0.5"
#: How the levels are made, as NGFF's ``multiscales`` ``type`` and ``metadata`` say it.
DOWNSAMPLING = {
    "type": "mode",
    "metadata": {
        "description": "each pixel the most frequent label of a 2x2 block of the level "
        "before (ties to the smallest label; edge blocks count their own pixels)",
        "method": "kquant.label.downsample.mode2x2",
    },
}


def _axes(names: tuple[str, ...]) -> list[dict]:
    return [
        {"name": n, "type": "channel"} if n == "c" else {"name": n, "type": "space"} for n in names
    ]


def _transforms(level: int, ndim_extra: int = 0) -> list[dict]:
    f = float(1 << level)
    shift = (f - 1.0) / 2.0
    scale = [1.0] * ndim_extra + [f, f]
    out: list[dict] = [{"type": "scale", "scale": scale}]
    if level:
        out.append({"type": "translation", "translation": [0.0] * ndim_extra + [shift, shift]})
    return out


def multiscales(
    name: str, paths: list[str], *, axes: tuple[str, ...] = ("y", "x"), downsampling=None
) -> list[dict]:
    """The ``multiscales`` list of one image whose level ``i`` is ``paths[i]``, each level half
    the size of the one before."""
    extra = len(axes) - 2
    entry: dict = {
        "name": name,
        "axes": _axes(axes),
        "datasets": [
            {"path": p, "coordinateTransformations": _transforms(i, extra)}
            for i, p in enumerate(paths)
        ],
    }
    if downsampling:
        entry.update(downsampling)
    return [entry]


def colors(palette: np.ndarray) -> list[dict]:
    """``image-label`` ``colors``: label ``i`` shown as palette entry ``i``, opaque."""
    return [
        {"label-value": i, "rgba": [int(r), int(g), int(b), 255]}
        for i, (r, g, b) in enumerate(np.asarray(palette, np.uint8).tolist())
    ]


def label_image(
    name: str, paths: list[str], palette: np.ndarray, *, axes: tuple[str, ...] = ("y", "x")
) -> dict:
    """The ``ome`` attribute of a label image (a kquant store, or ``labels/NAME`` of an
    export)."""
    return {
        "version": NGFF_VERSION,
        "multiscales": multiscales(name, paths, axes=axes, downsampling=DOWNSAMPLING),
        "image-label": {"version": NGFF_VERSION, "colors": colors(palette)},
    }
