"""Palettes of a fixed set of fits, to check that a change to the fit code changes no palette.

Every RGB sample image of scikit-learn and scikit-image (as ``bench/quality``) at K = 8, 16,
64, 256 in RGB, K = 16 in Lab and OKLab, K = 16 on a sample's histogram and with a target
PSNR; and, on a photo mosaic (``bench/make_mosaic.py``; millions of colours: the compact
kernels), the pipeline's exact fits at K = 16 and 64 and sample fits at K = 16, 64 and 256:
101 fits in all (bench/README.md, "Fit identity").

Run it on two checkouts and compare::

    python bench/fit_identity.py --out before.json [--mosaic /data/mosaic-0.1g.tif]
    python bench/fit_identity.py --out after.json  [--mosaic /data/mosaic-0.1g.tif]
    python bench/fit_identity.py --compare before.json after.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "quality"))


def _record(res, seconds: float) -> dict:
    return {
        "palette": [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in np.asarray(res.palette)],
        "sse": int(res.sse),
        "refined_from": res.refined_from,
        "n_iter": int(res.n_iter),
        "seconds": round(seconds, 3),
    }


def bench_images(out: dict) -> None:
    from run import images  # bench/quality/run.py

    from kquant.colour import histogram
    from kquant.fit import fit_for_psnr, fit_palette, sampling

    for name, img in images().items():
        colours, counts = histogram.block_histogram(img)
        cases = [(f"{name}/rgb/k{k}", dict(k=k)) for k in (8, 16, 64, 256)]
        cases += [(f"{name}/{space}/k16", dict(k=16, space=space)) for space in ("lab", "oklab")]
        for key, kw in cases:
            t = time.perf_counter()
            res = fit_palette(None, colours, counts, kw.pop("k"), seed=0, **kw)
            out[key] = _record(res, time.perf_counter() - t)
        sample = sampling.sample_block(img, 1 << 14, seed=0, block_id=(0, 0))
        s_col, s_cnt = histogram.block_histogram(sample[None])
        t = time.perf_counter()
        res = fit_palette(sample, s_col, s_cnt, 16, seed=0, sampled=True)
        out[f"{name}/sampled/k16"] = _record(res, time.perf_counter() - t)
        t = time.perf_counter()
        res, met = fit_for_psnr(None, colours, counts, 30.0, k_max=64, seed=0)
        out[f"{name}/psnr30"] = dict(_record(res, time.perf_counter() - t), met=bool(met))
        print(name, flush=True)


def mosaic(out: dict, path: str) -> None:
    from kquant import pipeline
    from kquant.params import QuantizeParams

    for mode in ("exact", "sample"):
        for k in (16, 64, 256):
            if mode == "exact" and k == 256:
                continue  # minutes; K=16 and 64 already take the compact path
            t = time.perf_counter()
            res = pipeline.fit(path, QuantizeParams(k=k, seed=0, mode=mode))
            out[f"mosaic/{mode}/k{k}"] = _record(res, time.perf_counter() - t)
            print(f"mosaic {mode} k{k}: {time.perf_counter() - t:.1f} s", flush=True)


def compare(a: Path, b: Path) -> int:
    before, after = json.loads(a.read_text()), json.loads(b.read_text())
    keys = sorted(set(before) | set(after))
    diff = [
        k
        for k in keys
        if {f: before.get(k, {}).get(f) for f in ("palette", "sse", "met")}
        != {f: after.get(k, {}).get(f) for f in ("palette", "sse", "met")}
    ]
    t0 = sum(v["seconds"] for v in before.values())
    t1 = sum(v["seconds"] for v in after.values())
    print(f"{len(keys)} fits, {len(diff)} differ; fit time {t0:.1f} s -> {t1:.1f} s")
    for k in diff:
        print("  differs:", k)
    return 1 if diff else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--mosaic", help="a photo mosaic TIFF (bench/make_mosaic.py)")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args()
    if args.compare:
        return compare(*args.compare)
    out: dict = {}
    bench_images(out)
    if args.mosaic:
        mosaic(out, args.mosaic)
    args.out.write_text(json.dumps(out, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
