"""Geospatial path: a georeferenced RGB mosaic -> kquant store -> paletted COG, against GDAL.

Each step runs as its own command under ``/usr/bin/time`` (wall seconds, peak RSS), one
after the other in this one command:

1. ``kquant quantize SRC STORE -k K`` (georeferencing read with rasterio);
2. ``kquant export STORE OUT.tif --cog --compress C`` (the export alone);
3. ``gdal_translate -of COG -co COMPRESS=C SRC rgb-cog.tif`` (the RGB source as a COG, the
   export's yardstick: same compression, same threads);
4. GDAL's palette path: ``rgb2pct.py -n K SRC pct.tif`` then ``gdal_translate -of COG``
   (Debian's gdal-bin and python3-gdal; skipped, and said so, when absent);

then the PSNR of kquant's and of rgb2pct's palettes against the source (read whole: keep
the mosaic to a few hundred Mpx, or pass ``--no-psnr``).

The source must be georeferenced; ``--georeference`` writes a tiled georeferenced copy of
a plain TIFF first (EPSG:32633, 0.5 m pixels, gdal_translate ``-a_srs -a_ullr``).

Usage: python bench/geo.py SRC.tif --work DIR [-k 16] [--compress deflate] [--georeference]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path


def timed(cmd: list[str]) -> dict:
    """Run ``cmd`` under /usr/bin/time: wall seconds and peak RSS (GiB)."""
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "TIME %e %M", *cmd], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    line = [x for x in proc.stderr.splitlines() if x.startswith("TIME ")][-1]
    _, wall, kib = line.split()
    return {"seconds": float(wall), "peak_rss_gib": round(int(kib) / 2**20, 3)}


def psnr(a_path: str, b_path: str) -> float:
    """PSNR of the RGB of ``b_path`` (a paletted or RGB GeoTIFF) against ``a_path``."""
    import numpy as np
    import rasterio

    def rgb(path):
        with rasterio.open(path) as ds:
            if ds.count == 1:  # paletted: through its colour table
                table = ds.colormap(1)
                lut = np.array([table.get(i, (0, 0, 0, 0))[:3] for i in range(256)], np.uint8)
                return lut[ds.read(1)]
            return np.moveaxis(ds.read([1, 2, 3]), 0, 2)

    a, b = rgb(a_path), rgb(b_path)
    sse = 0
    for y in range(0, a.shape[0], 1024):  # in row bands: int64 squares of a slice at a time
        d = a[y : y + 1024].astype(np.int32) - b[y : y + 1024]
        sse += int(np.einsum("ijk,ijk->", d, d, dtype=np.int64))
    mse = sse / a.size
    return float(10 * np.log10(255.0**2 / mse))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("--work", required=True)
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--compress", choices=("deflate", "zstd"), default="deflate")
    ap.add_argument("--georeference", action="store_true")
    ap.add_argument("--no-psnr", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src = args.src
    results: dict = {"source": src, "k": args.k, "compress": args.compress}
    if args.georeference:
        import rasterio

        with rasterio.open(src) as ds:
            h, w = ds.height, ds.width
        geo = str(work / "source-geo.tif")
        x0, y0 = 500000.0, 5200000.0
        if not Path(geo).exists():
            subprocess.run(
                ["gdal_translate", "-q", "-a_srs", "EPSG:32633"]
                + ["-a_ullr", str(x0), str(y0), str(x0 + 0.5 * w), str(y0 - 0.5 * h)]
                + ["-co", "TILED=YES", "-co", "COMPRESS=DEFLATE", "-co", "NUM_THREADS=ALL_CPUS"]
                + ["-co", "BIGTIFF=IF_SAFER", src, geo],
                check=True,
            )
        src = results["source"] = geo
    kq = [sys.executable, "-m", "kquant"]
    store, cog = str(work / "m.kquant"), str(work / "m-cog.tif")
    results["kquant_quantize"] = timed(
        kq + ["quantize", src, store, "-k", str(args.k), "--overwrite"]
    )
    results["kquant_export_cog"] = timed(
        kq + ["export", store, cog, "--cog", "--compress", args.compress, "--overwrite"]
    )
    comp = ["-co", f"COMPRESS={args.compress.upper()}", "-co", "NUM_THREADS=ALL_CPUS"]
    comp += ["-co", "BIGTIFF=IF_SAFER"]
    rgb_cog = str(work / "rgb-cog.tif")
    results["gdal_translate_rgb_cog"] = timed(
        ["gdal_translate", "-q", "-of", "COG", *comp, src, rgb_cog]
    )
    rgb2pct = shutil.which("rgb2pct.py") or shutil.which("rgb2pct")
    if rgb2pct is None:
        results["gdal_palette_path"] = "absent (install gdal-bin and python3-gdal)"
    else:
        pct, pct_cog = str(work / "pct.tif"), str(work / "pct-cog.tif")
        a = timed([rgb2pct, "-n", str(args.k), src, pct])
        b = timed(
            ["gdal_translate", "-q", "-of", "COG", *comp, "-co", "RESAMPLING=MODE", pct, pct_cog]
        )
        results["gdal_rgb2pct"] = a
        results["gdal_translate_pct_cog"] = b
    results["kquant_whole_path_seconds"] = round(
        results["kquant_quantize"]["seconds"] + results["kquant_export_cog"]["seconds"], 2
    )
    if rgb2pct is not None:
        results["gdal_whole_path_seconds"] = round(
            results["gdal_rgb2pct"]["seconds"] + results["gdal_translate_pct_cog"]["seconds"], 2
        )
    if not args.no_psnr:
        results["psnr_kquant"] = round(psnr(src, cog), 2)
        if rgb2pct is not None:
            results["psnr_rgb2pct"] = round(psnr(src, pct_cog), 2)
    for name in ("m-cog.tif", "rgb-cog.tif", "pct-cog.tif"):
        p = work / name
        if p.exists():
            results[f"bytes_{name}"] = p.stat().st_size
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
