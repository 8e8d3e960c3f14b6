"""Generate a photo-like tiled BigTIFF of any size from tiles of a real bundled photo.

Each 512x512 tile is a window of the bundled sample photo (kquant/data/sample.jpg) or of
scikit-learn's china.jpg, flipped/transposed, with a smooth colour cast and brightness
ramp that vary across the mosaic and a little sensor noise: real photographic texture and
a realistic number of distinct colours, not flat noise. Memory stays flat (tiles are
generated one at a time).

Usage: python bench/make_mosaic.py OUT.tif --gigapixels 1 [--compression zlib] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time
from importlib import resources
from pathlib import Path

import numpy as np

TILE = 512


def _photos() -> list[np.ndarray]:
    import imageio.v3 as iio

    photos = []
    with resources.as_file(resources.files("kquant") / "data" / "sample.jpg") as p:
        photos.append(iio.imread(p))
    try:
        import sklearn

        photos.append(
            iio.imread(Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg")
        )
    except ImportError:  # pragma: no cover
        pass
    return photos


def tiles(rows: int, cols: int, seed: int = 0):
    """Yield rows*cols tiles of (TILE, TILE, 3) uint8, row by row."""
    photos = _photos()
    rng = np.random.default_rng(seed)
    for i in range(rows):
        for j in range(cols):
            src = photos[(i * 7 + j * 3) % len(photos)]
            h, w = src.shape[:2]
            y0 = int(rng.integers(0, max(1, h - TILE + 1))) if h > TILE else 0
            x0 = int(rng.integers(0, max(1, w - TILE + 1))) if w > TILE else 0
            t = src[y0 : y0 + TILE, x0 : x0 + TILE]
            if t.shape[0] < TILE or t.shape[1] < TILE:
                t = np.pad(
                    t, ((0, TILE - t.shape[0]), (0, TILE - t.shape[1]), (0, 0)), mode="reflect"
                )
            op = (i + 2 * j) % 4
            t = (
                t[::-1]
                if op == 1
                else t[:, ::-1]
                if op == 2
                else t.transpose(1, 0, 2)
                if op == 3
                else t
            )
            # colour cast and brightness that drift smoothly over the mosaic
            u, v = i / max(rows - 1, 1), j / max(cols - 1, 1)
            cast = np.array(
                [
                    1.0 + 0.15 * math.sin(6 * u),
                    1.0 + 0.1 * math.cos(5 * v),
                    1.0 + 0.12 * math.sin(4 * (u + v)),
                ],
                np.float32,
            )
            gain = 0.85 + 0.3 * v
            f = t.astype(np.float32) * (cast * gain)
            f += rng.normal(0.0, 2.0, size=f.shape).astype(np.float32)
            yield np.clip(f, 0, 255).astype(np.uint8)


def make(
    out: Path, gigapixels: float, *, compression: str = "zlib", seed: int = 0
) -> tuple[int, int]:
    import tifffile

    side = int(math.sqrt(gigapixels * 1e9) // TILE) + 1
    rows = cols = side
    shape = (rows * TILE, cols * TILE, 3)
    tmp = out.with_name(out.name + ".tmp")
    tifffile.imwrite(
        tmp,
        tiles(rows, cols, seed),
        shape=shape,
        dtype=np.uint8,
        tile=(TILE, TILE),
        photometric="rgb",
        compression=compression,
        bigtiff=True,
        maxworkers=2,
    )
    tmp.rename(out)
    return shape[0], shape[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--gigapixels", type=float, default=1.0)
    ap.add_argument("--compression", default="zlib")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t = time.perf_counter()
    h, w = make(a.out, a.gigapixels, compression=a.compression, seed=a.seed)
    print(
        f"wrote {a.out}: {h} x {w} = {h * w / 1e9:.2f} gigapixels, "
        f"{a.out.stat().st_size / 2**30:.2f} GiB, {time.perf_counter() - t:.0f} s"
    )


if __name__ == "__main__":
    main()
