"""Palette quality, speed and size of kquant against its peers.

Every RGB sample image bundled with scikit-learn and scikit-image, K = 8, 16, 64, 256,
dithering off. Methods:

* ``kquant``        -- ``kquant.pipeline.quantize`` in-process (PNG file -> store), default params
* ``kquant-lab``, ``kquant-oklab`` -- the same with ``space="lab"`` / ``"oklab"`` (perceptual modes)
* ``notebook``      -- scikit-learn KMeans on all pixels, ``floor()`` of the centres (the
  origin notebook)
* ``sklearn-round`` -- the same fit, centres rounded to nearest, pixels re-assigned to the
  nearest entry
* ``pil-*``         -- Pillow's median cut / max coverage / fast octree, ``-km`` with its
  kmeans refinement
* ``libimagequant`` -- the ``imagequant`` package (dithering 0)
* ``pngquant``      -- the pngquant CLI (``--nofs``), whole process

Metrics: PSNR (MSE per channel sample), mean CIEDE2000 (skimage), wall time; sizes:
kquant's store, an indexed PNG of the same palette + labels written by Pillow
(``optimize=True``), and pngquant's own PNG.

Run::

    .venv/bin/python bench/quality/run.py                 # everything (~15 min on 2 cores)
    .venv/bin/python bench/quality/run.py --ks 16 --methods kquant,libimagequant
    .venv/bin/python bench/quality/run.py --report        # rebuild the tables from results.json
    .venv/bin/python bench/quality/run.py --speed-only --baseline ../other-checkout

Results go to ``bench/quality/results.json``; ``--report`` writes the tables into
``bench/README.md`` (section ``## Palette quality``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
README = HERE.parent / "README.md"
KS = (8, 16, 64, 256)
METHODS = (
    "kquant",
    "kquant-lab",
    "kquant-oklab",
    "notebook",
    "sklearn-round",
    "pil-mediancut",
    "pil-mediancut-km",
    "pil-maxcoverage",
    "pil-maxcoverage-km",
    "pil-fastoctree",
    "pil-fastoctree-km",
    "libimagequant",
    "pngquant",
)


# --------------------------------------------------------------------------- images


def images() -> dict[str, np.ndarray]:
    """Every RGB (3-channel uint8) sample image bundled with scikit-learn and scikit-image."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_image

    out = {"china": load_sample_image("china.jpg"), "flower": load_sample_image("flower.jpg")}
    for name in (
        "astronaut",
        "chelsea",
        "coffee",
        "colorwheel",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "rocket",
    ):
        out[name] = getattr(sd, name)()
    left, right, _ = sd.stereo_motorcycle()
    out["motorcycle_left"], out["motorcycle_right"] = left, right
    return {
        k: np.ascontiguousarray(v[..., :3])
        for k, v in out.items()
        if v.ndim == 3 and v.shape[2] == 3 and v.dtype == np.uint8
    }


# --------------------------------------------------------------------------- metrics


def _nearest(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    from kquant.label import assign

    return assign.nearest(pixels.reshape(-1, 3), palette).reshape(pixels.shape[:2])


def measure(img: np.ndarray, palette: np.ndarray, labels: np.ndarray) -> dict:
    """PSNR and mean CIEDE2000 of ``palette[labels]`` against ``img``."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    pal = np.asarray(palette, np.int64)
    diff = img.astype(np.int64) - pal[labels]
    mse = float(np.square(diff).sum()) / img.size
    psnr = 10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")
    # CIEDE2000 over unique (source colour, label) pairs, weighted by their counts
    code = (
        (img[..., 0].astype(np.int64) << 16) | (img[..., 1].astype(np.int64) << 8) | img[..., 2]
    ) << 8 | labels.astype(np.int64)
    uniq, counts = np.unique(code.ravel(), return_counts=True)
    src = np.stack([(uniq >> 24) & 255, (uniq >> 16) & 255, (uniq >> 8) & 255], 1)
    dst = pal[uniq & 255]
    de = deltaE_ciede2000(rgb2lab((src / 255.0)[None]), rgb2lab((dst / 255.0)[None]))[0]
    return {"mse": mse, "psnr": float(psnr), "de2000": float(np.dot(de, counts) / counts.sum())}


def indexed_png_bytes(palette: np.ndarray, labels: np.ndarray) -> int:
    """Bytes of the indexed PNG Pillow writes for these labels and palette (optimize=True)."""
    from PIL import Image

    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(palette)] = palette
    im.putpalette(pal.ravel().tolist(), rawmode="RGB")
    buf = io.BytesIO()
    bits = max(1, int(np.ceil(np.log2(max(len(palette), 2)))))
    bits = next(b for b in (1, 2, 4, 8) if b >= bits)
    im.save(buf, format="PNG", optimize=True, bits=bits)
    return len(buf.getvalue())


def read_png_indexed(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode != "P":
            rgb = np.asarray(im.convert("RGB"))
            pal, lab = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
            return pal.astype(np.uint8), lab.reshape(rgb.shape[:2]).astype(np.uint8)
        lab = np.asarray(im)
        pal = np.asarray(im.getpalette("RGB"), np.uint8).reshape(-1, 3)
    return pal, lab


# --------------------------------------------------------------------------- methods


def run_kquant(img, png, k, tmp, *, space="rgb"):
    import kquant
    from kquant import pipeline

    out = Path(tmp) / f"k{k}-{space}.kquant"
    params = kquant.QuantizeParams(k=k, **({"space": space} if space != "rgb" else {}))
    t = time.perf_counter()
    res = pipeline.quantize(png, out, params, overwrite=True)
    dt = time.perf_counter() - t
    st = kquant.open_store(out)
    labels = np.asarray(st.labels.compute(scheduler="sync"))
    return (
        st.palette,
        labels,
        dt,
        {"store_bytes": int(res.meta.metrics["store_bytes"]), "store_dir_bytes": _dir_bytes(out)},
    )


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


_SK_CACHE: dict = {}


def _sklearn_fit(img, k):
    from sklearn.cluster import KMeans

    key = (id(img), k)
    if key not in _SK_CACHE:
        _SK_CACHE.clear()
        pixels = img.reshape(-1, 3).astype(np.float64)
        t = time.perf_counter()
        km = KMeans(n_clusters=k, random_state=0, n_init="auto").fit(pixels)
        _SK_CACHE[key] = (
            km.cluster_centers_,
            km.labels_.reshape(img.shape[:2]),
            time.perf_counter() - t,
        )
    return _SK_CACHE[key]


def run_notebook(img, png, k, tmp):
    centres, labels, dt = _sklearn_fit(img, k)
    return np.floor(centres).astype(np.uint8), labels.astype(np.uint8), dt, {}


def run_sklearn_round(img, png, k, tmp):
    centres, _, dt = _sklearn_fit(img, k)
    pal = np.clip(np.rint(centres), 0, 255).astype(np.uint8)
    t = time.perf_counter()
    labels = _nearest(img, pal)
    return pal, labels, dt + time.perf_counter() - t, {}


def run_pillow(img, png, k, tmp, *, method, kmeans):
    from PIL import Image

    m = {
        "mediancut": Image.Quantize.MEDIANCUT,
        "maxcoverage": Image.Quantize.MAXCOVERAGE,
        "fastoctree": Image.Quantize.FASTOCTREE,
    }[method]
    pil = Image.fromarray(img)
    t = time.perf_counter()
    q = pil.quantize(colors=k, method=m, kmeans=kmeans, dither=Image.Dither.NONE)
    dt = time.perf_counter() - t
    lab = np.asarray(q)
    pal = np.asarray(q.getpalette("RGB"), np.uint8).reshape(-1, 3)[: int(lab.max()) + 1]
    return pal, lab, dt, {}


def run_libimagequant(img, png, k, tmp):
    import imagequant
    from PIL import Image

    pil = Image.fromarray(img).convert("RGBA")
    t = time.perf_counter()
    q = imagequant.quantize_pil_image(pil, dithering_level=0.0, max_colors=k)
    dt = time.perf_counter() - t
    lab = np.asarray(q)
    pal = np.asarray(q.getpalette("RGB"), np.uint8).reshape(-1, 3)[: int(lab.max()) + 1]
    return pal, lab, dt, {}


def run_pngquant(img, png, k, tmp):
    out = Path(tmp) / f"pngquant-{k}.png"
    t = time.perf_counter()
    subprocess.run(
        ["pngquant", str(k), "--nofs", "--force", "--output", str(out), str(png)], check=True
    )
    dt = time.perf_counter() - t
    pal, lab = read_png_indexed(out)
    return pal, lab, dt, {"png_bytes": out.stat().st_size}


RUNNERS = {
    "kquant": run_kquant,
    "kquant-lab": lambda *a: run_kquant(*a, space="lab"),
    "kquant-oklab": lambda *a: run_kquant(*a, space="oklab"),
    "notebook": run_notebook,
    "sklearn-round": run_sklearn_round,
    "libimagequant": run_libimagequant,
    "pngquant": run_pngquant,
}
for _m in ("mediancut", "maxcoverage", "fastoctree"):
    RUNNERS[f"pil-{_m}"] = (lambda m: lambda *a: run_pillow(*a, method=m, kmeans=0))(_m)
    RUNNERS[f"pil-{_m}-km"] = (lambda m: lambda *a: run_pillow(*a, method=m, kmeans=1))(_m)


def available(method: str) -> bool:
    if method == "pngquant":
        return shutil.which("pngquant") is not None
    if method == "libimagequant":
        try:
            import imagequant  # noqa: F401
        except ImportError:
            return False
    return True


# --------------------------------------------------------------------------- speed


def speed(reps: int = 5, baseline: str | None = None) -> dict:
    """In-process 512x512 K=16 (kquant vs libimagequant) and CLI wall time vs pngquant.

    Runs are interleaved (kquant, then its peer, ``reps`` times) and the best of each is
    kept. In-process, ``first`` quantizes a fresh copy of the PNG each time (decode and
    colour histogram included), ``repeat`` the same file again (both are cached per
    process, keyed on the file). The CLI is this checkout's (``PYTHONPATH``); with
    ``baseline`` (another checkout's root) its CLI is timed in the same loop too.
    """
    import skimage.data as sd
    from PIL import Image

    root = str(HERE.parent.parent)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        astro, retina = Path(tmp) / "astronaut.png", Path(tmp) / "retina.png"
        Image.fromarray(sd.astronaut()).save(astro)
        Image.fromarray(sd.retina()).save(retina)
        img = sd.astronaut()
        run_kquant(img, astro, 16, tmp)  # warm imports
        run_libimagequant(img, astro, 16, tmp)
        first, repeat, iq = [], [], []
        for r in range(reps):  # interleaved, so both see the same machine load
            fresh = Path(tmp) / f"astronaut-{r}.png"
            shutil.copyfile(astro, fresh)
            first.append(run_kquant(img, fresh, 16, tmp)[2])
            iq.append(run_libimagequant(img, astro, 16, tmp)[2])
            repeat.append(run_kquant(img, astro, 16, tmp)[2])
        out["inprocess_512_k16"] = {
            "kquant": min(first),
            "kquant_repeat": min(repeat),
            "libimagequant": min(iq),
            "ratio": min(first) / min(iq),
            "ratio_repeat": min(repeat) / min(iq),
        }
        kq_bin = Path(sys.executable).with_name("kquant")
        trees = {"kquant": root} | ({"kquant_baseline": baseline} if baseline else {})
        for name, src in (("astronaut_512", astro), ("retina_2mpx", retina)):
            times = {key: [] for key in (*trees, "pngquant")}
            for _ in range(reps):
                for key, tree in trees.items():
                    env = dict(os.environ, PYTHONPATH=tree)
                    t = time.perf_counter()
                    subprocess.run(
                        [
                            str(kq_bin),
                            "quantize",
                            str(src),
                            str(Path(tmp) / "o.kquant"),
                            "-k",
                            "16",
                            "--overwrite",
                        ],
                        check=True,
                        env=env,
                        stdout=subprocess.DEVNULL,
                    )
                    times[key].append(time.perf_counter() - t)
                t = time.perf_counter()
                subprocess.run(
                    [
                        "pngquant",
                        "16",
                        "--nofs",
                        "--force",
                        "--output",
                        str(Path(tmp) / "o.png"),
                        str(src),
                    ],
                    check=True,
                )
                times["pngquant"].append(time.perf_counter() - t)
            best = {key: min(v) for key, v in times.items()}
            out[f"cli_{name}_k16"] = (
                best
                | {"ratio": best["kquant"] / best["pngquant"]}
                | (
                    {"ratio_baseline": best["kquant_baseline"] / best["pngquant"]}
                    if baseline
                    else {}
                )
            )
    return out


# --------------------------------------------------------------------------- driver


def run(names, ks, methods, results):
    from PIL import Image

    imgs = images()
    with tempfile.TemporaryDirectory() as tmp:
        for name, img in imgs.items():
            if names and name not in names:
                continue
            png = Path(tmp) / f"{name}.png"
            Image.fromarray(img).save(png)
            for k in ks:
                for method in methods:
                    if not available(method):
                        continue
                    pal, lab, dt, extra = RUNNERS[method](img, png, k, tmp)
                    row = {
                        "image": name,
                        "k": k,
                        "method": method,
                        "pixels": int(img.shape[0] * img.shape[1]),
                        "seconds": dt,
                        "n_colors": int(len(pal)),
                        **measure(img, pal, lab),
                        **extra,
                    }
                    if method in ("kquant", "kquant-lab", "kquant-oklab", "libimagequant"):
                        row["pillow_png_bytes"] = indexed_png_bytes(pal, lab)
                    results[(name, k, method)] = row
                    print(
                        f"{name:22s} K={k:3d} {method:20s} PSNR {row['psnr']:7.3f} "
                        f"dE {row['de2000']:6.3f} {dt:7.3f} s",
                        flush=True,
                    )
                _SK_CACHE.clear()
    return results


def load() -> dict:
    if not RESULTS.exists():
        return {}
    data = json.loads(RESULTS.read_text())
    return {(r["image"], r["k"], r["method"]): r for r in data["rows"]} | {
        "speed": data.get("speed")
    }


def save(results: dict) -> None:
    rows = [v for k, v in results.items() if k != "speed"]
    rows.sort(key=lambda r: (r["image"], r["k"], METHODS.index(r["method"])))
    RESULTS.write_text(json.dumps({"rows": rows, "speed": results.get("speed")}, indent=1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="")
    ap.add_argument("--ks", default=",".join(map(str, KS)))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--report", action="store_true", help="only rebuild the README tables")
    ap.add_argument("--reps", type=int, default=5, help="speed: runs of each, best kept")
    ap.add_argument(
        "--baseline",
        default=None,
        help="speed: also time the CLI of this checkout (its root folder)",
    )
    args = ap.parse_args(argv)
    results = load()
    if not args.report:
        if not args.speed_only:
            names = [n for n in args.images.split(",") if n]
            run(names, [int(k) for k in args.ks.split(",")], args.methods.split(","), results)
            save(results)
        if not args.no_speed:
            results["speed"] = speed(args.reps, args.baseline)
            print(json.dumps(results["speed"], indent=1))
            save(results)
    from report import write_readme

    write_readme(results, README)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
