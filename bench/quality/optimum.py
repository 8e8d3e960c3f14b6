"""How far is each method from the best palette anyone can find?

For every image of ``run.py`` and each K, a long search for the lowest squared error:
kquant's fit with ``--seeds`` different seeds, each with ``--restarts`` k-means++
seedings and twice the default merge/split trials, and scikit-learn's KMeans with
``n_init=--seeds`` (centres rounded, pixels re-assigned). The lowest error of all these
runs and of every method in ``results.json`` is the *best known* palette. The report
gives, per K, the mean distance in dB from the best known of kquant (default
parameters, from ``results.json``) and of the best other method: a margin of kquant over
the others cannot exceed the others' distance from the best known.

    PYTHONPATH=. .venv/bin/python bench/quality/optimum.py --ks 8,16,64 --seeds 24
    PYTHONPATH=. .venv/bin/python bench/quality/optimum.py --ks 256 --seeds 6

Results are merged into ``optimum.json`` beside this file; ``--report`` prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
OUT = HERE / "optimum.json"

from run import RESULTS, images  # noqa: E402


def _db(mse_a: float, mse_b: float) -> float:
    """How many dB ``mse_a`` is above (worse than) ``mse_b``."""
    return float(10 * np.log10(mse_a / mse_b))


def search(img: np.ndarray, k: int, seeds: int, restarts: int) -> dict:
    from sklearn.cluster import KMeans

    from kquant import fit
    from kquant.colour import histogram
    from kquant.label import assign

    codes, counts = np.unique(histogram.encode(img.reshape(-1, 3)), return_counts=True)
    n = img.shape[0] * img.shape[1] * 3
    best_kq, t = None, time.perf_counter()
    for s in range(seeds):
        r = fit.fit_palette(
            None, codes, counts, k, seed=s, restarts=restarts, swaps=2 * (8 + k // 4)
        )
        best_kq = r.sse if best_kq is None else min(best_kq, r.sse)
    t_kq = time.perf_counter() - t
    rgb = histogram.decode(codes).astype(np.float64)
    t = time.perf_counter()
    km = KMeans(n_clusters=k, n_init=seeds, random_state=0).fit(rgb, sample_weight=counts)
    pal = np.clip(np.rint(km.cluster_centers_), 0, 255).astype(np.uint8)
    lab = assign.nearest(rgb, pal)
    diff = rgb - pal[lab]
    sse_sk = float(np.dot(counts, (diff * diff).sum(1)))
    return {
        "mse_search_kquant": best_kq / n,
        "mse_search_sklearn": sse_sk / n,
        "seconds_kquant": t_kq,
        "seconds_sklearn": time.perf_counter() - t,
        "seeds": seeds,
        "restarts": restarts,
    }


def report(found: dict) -> str:
    rows = json.loads(RESULTS.read_text())["rows"]
    mse = {}
    for r in rows:
        if r.get("mse") and not r["method"].startswith("kquant-"):
            mse.setdefault((r["image"], r["k"]), {})[r["method"]] = r["mse"]
    lines = [
        "| K | cases | kquant from best known (dB) | best other from best known (dB) "
        "| largest possible mean margin (dB) | kquant is the best known on |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for k in sorted({int(key.split("/")[1]) for key in found}):
        gaps_kq, gaps_other, n_best = [], [], 0
        for key, f in found.items():
            image, kk = key.split("/")
            if int(kk) != k or (image, k) not in mse:
                continue
            methods = mse[(image, k)]
            best = min([f["mse_search_kquant"], f["mse_search_sklearn"], *methods.values()])
            other = min(v for m, v in methods.items() if m != "kquant")
            gaps_kq.append(_db(methods["kquant"], best))
            gaps_other.append(_db(other, best))
            n_best += methods["kquant"] <= best * (1 + 1e-9)
        lines.append(
            f"| {k} | {len(gaps_kq)} | {np.mean(gaps_kq):.3f} (max {max(gaps_kq):.3f}) "
            f"| {np.mean(gaps_other):.3f} (min {min(gaps_other):.3f}) "
            f"| {np.mean(gaps_other):.3f} | {n_best} / {len(gaps_kq)} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="8,16,64")
    ap.add_argument("--seeds", type=int, default=24)
    ap.add_argument("--restarts", type=int, default=8)
    ap.add_argument("--images", default="")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    found = json.loads(OUT.read_text()) if OUT.exists() else {}
    if not args.report:
        wanted = set(filter(None, args.images.split(",")))
        for name, img in images().items():
            if wanted and name not in wanted:
                continue
            for k in (int(v) for v in args.ks.split(",")):
                found[f"{name}/{k}"] = search(img, k, args.seeds, args.restarts)
                print(name, k, json.dumps(found[f"{name}/{k}"]), flush=True)
                OUT.write_text(json.dumps(found, indent=1, sort_keys=True))
    print(report(found))


if __name__ == "__main__":
    main()
