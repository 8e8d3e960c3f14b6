"""kquant against the origin notebook's method on scikit-learn's china.jpg at K=16.

Run: .venv/bin/python bench/china.py
Prints PSNR of both, kquant's wall time (in-process, after imports) and store bytes.
"""

import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import sklearn
from sklearn.cluster import KMeans

import kquant
from kquant import pipeline

CHINA = Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg"


def main(k: int = 16) -> None:
    img = iio.imread(CHINA)
    pixels = img.reshape(-1, 3)
    t = time.perf_counter()
    km = KMeans(n_clusters=k, random_state=0, n_init="auto").fit(pixels)
    t_nb = time.perf_counter() - t
    pal = np.floor(km.cluster_centers_)
    mse_nb = float(((pal[km.labels_] - pixels) ** 2).mean())
    with tempfile.TemporaryDirectory() as d:
        pipeline.quantize(CHINA, Path(d) / "warm.kq", kquant.QuantizeParams(k=k))  # imports
        t = time.perf_counter()
        res = pipeline.quantize(CHINA, Path(d) / "china.kq", kquant.QuantizeParams(k=k))
        t_kq = time.perf_counter() - t
    m = res.meta.metrics
    print(f"image        china.jpg {img.shape[0]}x{img.shape[1]}, K={k}")
    print(f"notebook     PSNR {10 * np.log10(255**2 / mse_nb):.3f} dB  ({t_nb:.2f} s, floor())")
    print(
        f"kquant       PSNR {m['psnr']:.3f} dB  ({t_kq:.2f} s in-process; "
        f"fit {res.timings['fit']:.2f} s, assign+write {res.timings['assign_write']:.2f} s)"
    )
    print(
        f"store        {m['store_bytes']} bytes = {m['store_bits_per_pixel']:.3f} bits/px "
        f"(labels {res.meta.bits} bits/px before compression)"
    )


if __name__ == "__main__":
    main()
