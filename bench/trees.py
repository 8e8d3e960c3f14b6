"""The same ``kquant quantize`` runs on two checkouts, interleaved: is a change neutral in speed?

Each case runs as a fresh process with ``PYTHONPATH`` set to one checkout, then to the other,
``--reps`` times in turn (both see the same machine load); the best wall time and the best CPU
time (user + system of the process and its children: steadier on a shared machine) of each
are kept and their ratios printed. Cases: a 512x512 photo (the in-memory path), a 1411x1411
photo (dask and the lookup table) and, with ``--mosaic``, a photo mosaic in the default
(sample) mode.

    python bench/trees.py BEFORE_CHECKOUT AFTER_CHECKOUT [--mosaic M.tif] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run(tree: str, src: str, out: str, extra: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one ``kquant quantize`` with ``tree`` first on the path."""
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1")
    t, c = time.perf_counter(), _cpu()
    subprocess.run(
        [sys.executable, "-m", "kquant", "quantize", src, out, "-k", "16", "--overwrite", *extra],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t, _cpu() - c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--mosaic", help="a photo mosaic TIFF (bench/make_mosaic.py)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    import skimage.data as sd
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        cases = []
        for name, img in (("astronaut 512x512", sd.astronaut()), ("retina 1411x1411", sd.retina())):
            path = Path(tmp) / f"{name.split()[0]}.png"
            Image.fromarray(img).save(path)
            cases.append((name, str(path), []))
        if args.mosaic:
            cases.append((f"mosaic {Path(args.mosaic).name}, default mode", args.mosaic, []))
        print(
            f"{'case':40s} {'before s':>9s} {'after s':>9s} {'ratio':>6s} "
            f"{'before CPU':>10s} {'after CPU':>10s} {'ratio':>6s}"
        )
        for name, src, extra in cases:
            out = str(Path(tmp) / "o.kquant")
            _run(args.before, src, out, extra)  # warm caches (files, numba)
            _run(args.after, src, out, extra)
            runs: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
            for _ in range(args.reps):
                runs["before"].append(_run(args.before, src, out, extra))
                runs["after"].append(_run(args.after, src, out, extra))
            (bw, bc), (aw, ac) = (
                (min(w for w, _ in r), min(c for _, c in r)) for r in runs.values()
            )
            print(
                f"{name:40s} {bw:9.3f} {aw:9.3f} {aw / bw:6.3f} {bc:10.2f} {ac:10.2f} "
                f"{ac / bc:6.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
