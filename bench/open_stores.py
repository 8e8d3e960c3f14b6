"""Open stores: format 3 (packbits codec) against format 2, the pyramid's cost, window reads.

* the 12 bundled images (bench/quality/run.py's set), K = 16 and 256: store bytes and write
  time (the write pass with a fixed palette, best of ``--repeat``, formats interleaved);
* a gigapixel mosaic (bench/make_mosaic.py): the same, plus the pyramid's extra time and
  bytes and the peak RSS of each run (each run in its own process, interleaved);
* a 4096 x 4096 window of the mosaic's store read through plain zarr-python (no kquant
  import, the packbits codec found by its entry point) against kquant's own window decode.

Usage: python bench/open_stores.py --mosaic /path/mosaic-1g.tif [--repeat 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_RUN = """
import json, os, sys, time
import numpy as np
import kquant
from kquant import pipeline
from kquant.store import format as fmt
def peak_rss_gib():  # VmHWM: this process's own peak (ru_maxrss keeps the forking parent's)
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 2**20
src, out, version, pyramid, palette = sys.argv[1:6]
fmt.WRITE_VERSION = int(version)
params = kquant.QuantizeParams(k=len(np.load(palette)), seed=0, pyramid=pyramid == "1")
t, c = time.perf_counter(), time.process_time()
meta = pipeline.write(src, out, np.load(palette), params, overwrite=True)
print(json.dumps({"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
                  "store_bytes": meta.metrics["store_bytes"], "levels": meta.levels,
                  "peak_rss_gib": peak_rss_gib()}))
"""

_WINDOW_ZARR = """
import sys, time
import numpy as np, zarr
a = zarr.open_array(sys.argv[1] + "/labels", mode="r")
y0, x0, n = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
best = 1e9
for _ in range(int(sys.argv[5])):
    t = time.perf_counter()
    w = a[y0:y0 + n, x0:x0 + n]
    best = min(best, time.perf_counter() - t)
print(best, int(w.sum()))
"""


def _write(src, out, version, pyramid, palette) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", _RUN, str(src), str(out), str(version), str(int(pyramid)), palette],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def small_images(repeat: int, tmp: Path) -> list[dict]:
    """Format 2 vs 3 on the 12 images, in this process (the in-memory path)."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent / "quality"))
    import imageio.v3 as iio
    from run import images

    import kquant
    from kquant import pipeline
    from kquant.store import format as fmt

    rows = []
    for name, img in images().items():
        src = tmp / f"{name}.png"
        iio.imwrite(src, img)
        for k in (16, 256):
            params = kquant.QuantizeParams(k=k, seed=0)
            palette = kquant.quantize(src, tmp / "fit.kq", params, overwrite=True).palette
            best = {2: 1e9, 3: 1e9}
            size = {}
            for _ in range(repeat):
                for version in (2, 3):
                    fmt.WRITE_VERSION = version
                    t = time.perf_counter()
                    meta = pipeline.write(
                        src, tmp / f"v{version}.kq", palette, params, overwrite=True
                    )
                    best[version] = min(best[version], time.perf_counter() - t)
                    size[version] = meta.metrics["store_bytes"]
            fmt.WRITE_VERSION = fmt.FORMAT_VERSION
            rows.append({"image": name, "k": k, "bytes": size, "seconds": best})
            print(name, k, size, {v: round(s, 4) for v, s in best.items()}, flush=True)
    del np
    return rows


def mosaic(path: str, repeat: int, tmp: Path) -> dict:
    import numpy as np

    import kquant
    from kquant.pipeline.fitting import fit, inspect

    palette = tmp / "mosaic-palette.npy"
    np.save(palette, fit(inspect(path), kquant.QuantizeParams(k=16, seed=0)).palette)
    runs: dict[str, list[dict]] = {"v2": [], "v3": [], "v3-pyramid": []}
    for _ in range(repeat):  # interleaved: the machine's load hits every variant alike
        runs["v2"].append(_write(path, tmp / "m2.kq", 2, False, str(palette)))
        runs["v3"].append(_write(path, tmp / "m3.kq", 3, False, str(palette)))
        runs["v3-pyramid"].append(_write(path, tmp / "m3p.kq", 3, True, str(palette)))
        print({k: v[-1] for k, v in runs.items()}, flush=True)
    return {"runs": runs, "windows": windows(tmp, repeat=5)}


def windows(tmp: Path, *, repeat: int, n: int = 4096) -> dict:
    """A 4096 x 4096 window: plain zarr (labels) vs kquant (labels, RGB; format 2 labels)."""
    import numpy as np

    import kquant

    out = {}
    for name in ("m3.kq", "m2.kq"):
        st = kquant.open_store(tmp / name)
        y0, x0 = st.shape[0] // 3, st.shape[1] // 3
        for what in ("labels", "rgb"):
            best = 1e9
            for _ in range(repeat):
                t = time.perf_counter()
                if what == "labels":
                    np.asarray(st.labels[y0 : y0 + n, x0 : x0 + n])
                else:
                    np.asarray(st.window(y0, y0 + n, x0, x0 + n))
                best = min(best, time.perf_counter() - t)
            out[f"kquant {what} ({name})"] = best
    res = subprocess.run(
        [sys.executable, "-c", _WINDOW_ZARR, str(tmp / "m3.kq"), str(y0), str(x0), str(n),
         str(repeat)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    out["zarr-python labels (m3.kq)"] = float(res.stdout.split()[0])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mosaic", help="a gigapixel TIFF (bench/make_mosaic.py)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--skip-images", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="kquant-open-") as d:
        tmp = Path(d)
        result = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
        if not args.skip_images:
            result["images"] = small_images(max(args.repeat, 5), tmp)
        if args.mosaic:
            result["mosaic"] = mosaic(args.mosaic, args.repeat, tmp)
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
