"""Markdown tables of bench/quality/results.json, written into bench/README.md."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

HEADING = "## Palette quality"
OURS = ("kquant", "kquant-lab", "kquant-oklab")


def _rows(results):
    return [v for k, v in results.items() if k != "speed" and v]


def tables(results) -> str:
    rows = _rows(results)
    if not rows:
        return "(no results yet)\n"
    by = defaultdict(dict)
    for r in rows:
        by[(r["image"], r["k"])][r["method"]] = r
    methods = []
    for r in rows:
        if r["method"] not in methods:
            methods.append(r["method"])
    ks = sorted({r["k"] for r in rows})
    images = sorted({r["image"] for r in rows})
    out = []

    # 1. mean PSNR / CIEDE2000 / time per method and K
    out.append("### Mean over the images, per K (PSNR dB / mean CIEDE2000 / seconds)\n")
    out.append("| method | " + " | ".join(f"K={k}" for k in ks) + " |")
    out.append("| --- |" + " --- |" * len(ks))
    for m in methods:
        cells = []
        for k in ks:
            rs = [by[(i, k)][m] for i in images if m in by[(i, k)]]
            if not rs:
                cells.append("")
                continue
            cells.append(
                f"{np.mean([r['psnr'] for r in rs]):.3f} / "
                f"{np.mean([r['de2000'] for r in rs]):.3f} / "
                f"{np.mean([r['seconds'] for r in rs]):.2f}"
            )
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    out.append("")

    # 2. quality target: kquant vs the best other method, per image and K
    out.append(
        "### kquant (RGB mode) against the best other method, PSNR margin in dB "
        "(positive: kquant has the lowest MSE)\n"
    )
    out.append("| image | pixels | " + " | ".join(f"K={k}" for k in ks) + " |")
    out.append("| --- | --- |" + " --- |" * len(ks))
    margins = defaultdict(list)
    wins = defaultdict(int)
    for i in images:
        cells = []
        px = ""
        for k in ks:
            d = by[(i, k)]
            others = [r for m, r in d.items() if m not in OURS]
            if "kquant" not in d or not others:
                cells.append("")
                continue
            px = d["kquant"]["pixels"]
            best = min(others, key=lambda r: r["mse"])
            margin = d["kquant"]["psnr"] - best["psnr"]
            margins[k].append(margin)
            wins[k] += d["kquant"]["mse"] <= best["mse"]
            cells.append(f"{margin:+.3f} ({best['method']})")
        out.append(f"| {i} | {px} | " + " | ".join(cells) + " |")
    out.append(
        "| **mean margin** | | "
        + " | ".join(f"**{np.mean(margins[k]):+.3f}**" if margins[k] else "" for k in ks)
        + " |"
    )
    out.append(
        "| **lowest MSE on** | | " + " | ".join(f"{wins[k]} / {len(margins[k])}" for k in ks) + " |"
    )
    out.append("")

    # 3. perceptual: mean CIEDE2000 of kquant-oklab vs the best other
    if any("kquant-lab" in d for d in by.values()):
        out.append(
            "### Perceptual mode: mean CIEDE2000 (lower is better), kquant-lab vs best other\n"
        )
        out.append("| K | kquant-lab | kquant (RGB) | best other | best on |")
        out.append("| --- | --- | --- | --- | --- |")
        for k in ks:
            ok, rgb, bo, n, won = [], [], [], 0, 0
            for i in images:
                d = by[(i, k)]
                if "kquant-lab" not in d:
                    continue
                others = [r for m, r in d.items() if m not in OURS]
                if not others:
                    continue
                best = min(others, key=lambda r: r["de2000"])
                ok.append(d["kquant-lab"]["de2000"])
                rgb.append(d.get("kquant", {}).get("de2000", np.nan))
                bo.append(best["de2000"])
                n += 1
                won += d["kquant-lab"]["de2000"] <= best["de2000"]
            if n:
                out.append(
                    f"| {k} | {np.mean(ok):.3f} | {np.nanmean(rgb):.3f} | {np.mean(bo):.3f} "
                    f"| {won} / {n} images |"
                )
        out.append("")

    # 4. size
    out.append(
        "### Size: kquant store vs indexed PNGs of the same K (bytes, sum over the images)\n"
    )
    out.append(
        "| K | kquant store | Pillow PNG of kquant's labels | pngquant PNG | store / pngquant "
        "| images where store <= pngquant |"
    )
    out.append("| --- | --- | --- | --- | --- | --- |")
    for k in ks:
        st, pp, pq, n, ok = 0, 0, 0, 0, 0
        for i in images:
            d = by[(i, k)]
            if "kquant" in d and "pngquant" in d:
                s = d["kquant"].get("store_dir_bytes", d["kquant"].get("store_bytes"))
                st += s
                pp += d["kquant"].get("pillow_png_bytes", 0)
                pq += d["pngquant"]["png_bytes"]
                n += 1
                ok += s <= d["pngquant"]["png_bytes"]
        if n:
            out.append(f"| {k} | {st} | {pp} | {pq} | {st / pq:.3f} | {ok} / {n} |")
    out.append("")

    sp = results.get("speed")
    if sp:
        out.append("### Speed (best of 5, interleaved runs in the same command)\n")
        out.append("| measure | kquant s | baseline s | ratio | target |")
        out.append("| --- | --- | --- | --- | --- |")
        s = sp["inprocess_512_k16"]
        out.append(
            f"| in-process, astronaut 512x512, K=16, first run on the file (vs libimagequant) "
            f"| {s['kquant']:.3f} | {s['libimagequant']:.3f} | {s['ratio']:.2f} | <= 2 |"
        )
        if "kquant_repeat" in s:
            out.append(
                f"| in-process, the same file again (decode and histogram cached) "
                f"| {s['kquant_repeat']:.3f} | {s['libimagequant']:.3f} "
                f"| {s['ratio_repeat']:.2f} | <= 2 |"
            )
        for key, label, target in (
            (
                "cli_astronaut_512_k16",
                "CLI whole process, astronaut 512x512, K=16 (vs pngquant)",
                "<= 3",
            ),
            (
                "cli_retina_2mpx_k16",
                "CLI whole process, retina 1411x1411, K=16 (vs pngquant)",
                "<= 1",
            ),
        ):
            if key in sp:
                s = sp[key]
                out.append(
                    f"| {label} | {s['kquant']:.3f} | {s['pngquant']:.3f} | "
                    f"{s['ratio']:.2f} | {target} |"
                )
                if "kquant_baseline" in s:
                    out.append(
                        f"| same, the `--baseline` checkout | "
                        f"{s['kquant_baseline']:.3f} | {s['pngquant']:.3f} | "
                        f"{s['ratio_baseline']:.2f} | |"
                    )
        out.append("")
    return "\n".join(out) + "\n"


def write_readme(results, readme: Path, intro: str | None = None) -> None:
    intro_path = Path(__file__).with_name("INTRO.md")
    intro = intro or (intro_path.read_text() if intro_path.exists() else "")
    section = (
        f"{HEADING}\n\n{intro}\n<!-- tables generated by bench/quality/run.py --report -->\n\n"
        f"{tables(results)}"
    )
    text = readme.read_text() if readme.exists() else "# Benchmarks\n\n"
    pattern = re.compile(re.escape(HEADING) + r".*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip() + "\n\n" + section
    readme.write_text(text)
