"""What a run shows in the Prefect UI and returns: its summary, artifacts, and waiting for an
unreachable API before reporting.

Artifacts are keyed by the store's name (``<store>-summary``, ``-palette``, ``-preview``;
batches ``kquant-batch-<outbox>-...``) so that the Artifacts page keeps one history per store.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import time

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.inbox import preview_path
from flows.pixels import thumbnail_data_url
from kquant import store
from kquant.errors import reason as one_line  # a message on one line, as the CLI prints it
from kquant.io import uri as kuri
from kquant.label.metrics import format_bytes

#: Width of the JPEG thumbnail embedded (as a data URL) in the summary artifact.
THUMB_WIDTH = 800
#: Width of the thumbnails of a batch's images (one artifact per image).
BATCH_THUMB_WIDTH = 480
#: Retries of each Prefect API request (exponential back-off of 2, 4, ... 256 s: about
#: 8.5 minutes in all) for ``python -m flows.quantize``; deploy/prefect.yaml sets the same
#: for the deployments' flow runs (``PREFECT_CLIENT_MAX_RETRIES``).
CLIENT_MAX_RETRIES = 8
#: How long a flow whose store is complete waits for an unreachable Prefect API before it
#: reports (artifacts, then the run's final state); ``$KQUANT_API_WAIT_SECONDS``.
API_WAIT_SECONDS = 900.0


def slug(text: str, limit: int = 48) -> str:
    """Artifact-key-safe form of a name: lowercase letters, digits and dashes."""
    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    if len(s) > limit:
        digest = hashlib.sha1(s.encode()).hexdigest()[:8]
        s = s[: limit - 9].rstrip("-") + "-" + digest
    return s or "image"


# --------------------------------------------------------------------------- Prefect API


def api_answers() -> bool:
    """Whether the Prefect API answers its health check now (one request, no retries)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
            # its own client (other httpx settings than the run's): no retries, short timeout
            with get_client(sync_client=True, httpx_settings={"timeout": 5.0}) as client:
                return client.api_healthcheck() is None
    except Exception:
        return False


def wait_for_api(logger, what: str, timeout: float | None = None, interval: float = 2.0) -> bool:
    """Wait until the Prefect API answers, at most ``timeout`` s (default
    ``$KQUANT_API_WAIT_SECONDS`` or :data:`API_WAIT_SECONDS`); True if it does.

    A server that is down longer than the client's retries would otherwise fail the report
    and leave the run Running on the server: polled every ``interval`` s, the API is found
    again within seconds of its return. With Prefect's ephemeral API (no
    ``PREFECT_API_URL``), the server is a child of this process: no wait.
    """
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value() or api_answers():
        return True
    if timeout is None:
        timeout = float(os.environ.get("KQUANT_API_WAIT_SECONDS") or API_WAIT_SECONDS)
    logger.warning(
        "the Prefect API at %s does not answer; %s; waiting up to %.0f s for it",
        PREFECT_API_URL.value(),
        what,
        timeout,
    )
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        time.sleep(interval)
        if api_answers():
            logger.info("the Prefect API answers again (after %.0f s)", time.monotonic() - t0)
            return True
    logger.warning("the Prefect API did not answer in %.0f s", timeout)
    return False


def publish(make_artifacts, logger, what: str, done: str) -> None:
    """Create a run's artifacts with ``make_artifacts()`` once the API answers.

    Artifacts are extras: failing to create them (after the client's retries) is a
    warning, never a failed run; ``done`` says what is finished regardless (logged).
    """
    wait_for_api(logger, done)
    try:
        make_artifacts()
    except Exception as exc:
        logger.warning("no artifacts for %s: %s", what, one_line(exc))


# --------------------------------------------------------------------------- summaries


def summary(
    source: dict,
    target: str,
    fit: dict,
    fit_cached: bool,
    written: dict,
    verified: dict,
    preview: dict | None,
    timings: dict,
    exported: dict | None = None,
) -> dict:
    """The flow's result: small and JSON-able (``export``: the COG written, or None)."""
    meta = written["meta"]
    m = meta["metrics"]
    return {
        "source": source["uri"],
        "target": kuri.normalise(target),
        "height": meta["height"],
        "width": meta["width"],
        "n_colors": meta["n_colors"],
        "bits": meta["bits"],
        "psnr": m["psnr"],
        "mse": m["mse"],
        "store_bytes": m["store_bytes"],
        "store_bits_per_pixel": m["store_bits_per_pixel"],
        "n_unique": fit["n_unique"],
        "fit_cached": fit_cached,
        "checksum": verified["checksum"],
        "palette": [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in fit["palette"]],
        "palette_counts": m["palette_counts"],
        "preview": preview["path"] if preview else None,
        "export": exported["path"] if exported else None,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "already_done": False,
    }


def stored_summary(st, target: str, seconds: float) -> dict:
    """The flow's result for a store an earlier run completed (as :func:`summary`, read
    from the store: no colour count, the checksum recorded, the preview if it is there)."""
    m = st.meta.metrics
    preview = preview_path(target)
    return {
        "source": st.meta.source["uri"],
        "target": kuri.normalise(target),
        "height": st.meta.height,
        "width": st.meta.width,
        "n_colors": st.meta.n_colors,
        "bits": st.meta.bits,
        "psnr": m["psnr"],
        "mse": m["mse"],
        "store_bytes": m["store_bytes"],
        "store_bits_per_pixel": m["store_bits_per_pixel"],
        "n_unique": None,
        "fit_cached": False,
        "checksum": st.meta.checksum,
        "palette": [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in st.palette.tolist()],
        "palette_counts": m["palette_counts"],
        "preview": preview if store.exists(preview) else None,
        "timings": {"total": round(seconds, 3)},
        "already_done": True,
    }


def palette_rows(palette: list, counts: list | None) -> list[dict]:
    """Rows of the palette table: entry, hex, RGB, share of pixels (%)."""
    total = sum(counts) if counts else 0
    rows = []
    for i, (r, g, b) in enumerate(palette):
        share = 100.0 * counts[i] / total if total else None
        rows.append(
            {
                "entry": i,
                "hex": f"#{r:02x}{g:02x}{b:02x}",
                "r": r,
                "g": g,
                "b": b,
                "pixels": counts[i] if counts else None,
                "share_pct": None if share is None else round(share, 2),
            }
        )
    return rows


def markdown_report(s: dict, preview_url: str | None = None) -> str:
    """The run's summary in markdown: the preview picture (``preview_url``, a data URL, shown
    inline), then one row per measure."""
    psnr = "∞ (lossless)" if s["psnr"] is None else f"{s['psnr']:.2f} dB"
    t = s["timings"]
    fit = (
        "already done (the complete store of an earlier run with this source and these "
        "parameters; nothing rewritten)"
        if s.get("already_done")
        else "imposed (no fit)"
        if s["n_unique"] is None
        else f"cached (no refit; the fit took {t['fit_original']:.2f} s when it was made)"
        if s["fit_cached"] and "fit_original" in t
        else "cached (no refit)"
        if s["fit_cached"]
        else "fitted"
    )
    colours = "" if s["n_unique"] is None else f", {s['n_unique']:,} colours"
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in t.items() if k not in ("total", "fit_original"))
    lines = [f"# kquant: `{kuri.name(s['source'])}` → `{kuri.name(s['target'])}`", ""]
    if preview_url:
        lines += [
            f"![original | quantized, {s['n_colors']} colours]({preview_url})",
            "",
            f"Original | quantized, palette beneath; full size: `{kuri.display(s['preview'])}`",
            "",
        ]
    lines += [
        "| measure | value |",
        "|---|---|",
        f"| PSNR | {psnr} (MSE {s['mse']:.3f}) |",
        f"| size | {format_bytes(s['store_bytes'])}: {s['store_bits_per_pixel']:.3f} bits/px "
        f"(raw RGB: 24 bits/px) |",
        f"| palette | {s['n_colors']} colours, labels packed at {s['bits']} bits/px |",
        f"| fit | {fit} |",
        f"| time | {t.get('total', 0):.2f} s" + (f" ({steps})" if steps else "") + " |",
        f"| store | `{kuri.display(s['target'])}` |",
        f"| source | `{s['source']}` ({s['height']} × {s['width']} px{colours}) |",
        f"| checksum | `{s['checksum']}` "
        f"({'recorded, verified when written' if s.get('already_done') else 'verified'}) |",
    ]
    if s.get("export"):
        lines.append(f"| export | `{kuri.display(s['export'])}` (Cloud-Optimized GeoTIFF) |")
    if s.get("dashboard"):
        lines.append(f"| dask dashboard | {s['dashboard']} |")
    return "\n".join(lines) + "\n"


def swatch_data_url(rgb, width: int = 40, height: int = 20) -> str:
    """A ``data:image/png`` URL of a ``width`` x ``height`` block of one colour (a few
    hundred bytes): markdown shows it inline, where table artifacts show only text."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), tuple(int(c) for c in rgb)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def palette_markdown(palette: list, counts: list | None, title: str) -> str:
    """The palette as a markdown table: a colour swatch, the entry, hex, RGB and share of
    pixels per row."""
    lines = [f"# {title}", "", "| colour | entry | hex | RGB | pixels | share |"]
    lines.append("|---|---:|---|---|---:|---:|")
    for row in palette_rows(palette, counts):
        rgb = (row["r"], row["g"], row["b"])
        pixels = "" if row["pixels"] is None else f"{row['pixels']:,}"
        share = "" if row["share_pct"] is None else f"{row['share_pct']:.2f} %"
        lines.append(
            f"| ![{row['hex']}]({swatch_data_url(rgb)}) | {row['entry']} | `{row['hex']}` "
            f"| {rgb[0]}, {rgb[1]}, {rgb[2]} | {pixels} | {share} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- artifacts


def report(s: dict, key: str) -> dict:
    """Artifacts for the UI: the markdown summary with the preview picture inline, and the
    palette with colour swatches (markdown).

    Keys (``<key>-summary``, ``<key>-palette``) depend on the store's name, so the
    Artifacts page keeps one history per store. The preview is a JPEG thumbnail in a data
    URL inside the markdown: Prefect's image artifact prints its whole URL under the
    picture as one line, which runs far off the page.
    """
    preview_url = None
    if s.get("preview"):
        try:
            preview_url = thumbnail_data_url(s["preview"])
        except Exception:  # a preview written earlier and removed since: no picture
            preview_url = None
    ids = {
        "summary": str(
            create_markdown_artifact(
                markdown=markdown_report(s, preview_url),
                key=f"{key}-summary",
                description=f"kquant store {s['target']}",
            )
        )
    }
    palette = [[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in s["palette"]]
    ids["palette"] = str(
        create_markdown_artifact(
            markdown=palette_markdown(
                palette, s["palette_counts"], f"Palette of `{kuri.name(s['target'])}`"
            ),
            key=f"{key}-palette",
            description=f"palette of {kuri.name(s['target'])}: colour, entry, hex, RGB, "
            "share of pixels",
        )
    )
    return ids


def batch_key(outbox: str) -> str:
    """The key prefix of a batch's artifacts: ``kquant-batch-<outbox name>``."""
    return "kquant-batch-" + slug(kuri.name(outbox), 32)


def batch_artifacts(out: dict, shared_fit: dict | None) -> None:
    key = batch_key(out["outbox"])
    rows = [
        {
            "image": r["image"],
            "status": "written",
            "psnr_db": r["psnr"],
            "bits_per_pixel": r["bits_per_pixel"],
            "fit": r["fit"],
            "store": r["store"],
            "export": r.get("export"),
        }
        for r in out["results"]
    ]
    rows += [
        {
            "image": i,
            "status": "skipped (store exists)",
            "psnr_db": None,
            "bits_per_pixel": None,
            "fit": None,
            "store": None,
            "export": None,
        }
        for i in out["skipped"]
    ]
    rows += [
        {
            "image": i,
            "status": f"in quarantine: {why}",
            "psnr_db": None,
            "bits_per_pixel": None,
            "fit": None,
            "store": None,
        }
        for i, why in sorted(out.get("quarantined", {}).items())
    ]
    rows += [
        {
            "image": i,
            "status": f"failed: {why}",
            "psnr_db": None,
            "bits_per_pixel": None,
            "fit": None,
            "store": None,
            "export": None,
        }
        for i, why in sorted(out["failed"].items())
    ]
    md = [
        f"# kquant batch: `{out['inbox']}` → `{out['outbox']}`",
        "",
        f"**{len(out['processed'])}** written, **{len(out['skipped'])}** skipped "
        f"(complete store exists), **{len(out['failed'])}** failed, "
        f"**{len(out.get('quarantined', {}))}** in quarantine, in {out['seconds']:.2f} s.",
        "",
    ]
    if out.get("dashboard"):
        md += [f"Dask dashboard: {out['dashboard']}", ""]
    if shared_fit:
        md.append(
            f"Shared palette of {len(shared_fit['palette'])} colours "
            + (
                "(imposed)."
                if shared_fit.get("imposed")
                else "(reused from existing stores)."
                if shared_fit.get("reused")
                else "(fitted on all the images together)."
            )
        )
        md.append("")
    md += ["| image | status | PSNR | bits/px |", "|---|---|---|---|"]
    for r in rows:
        psnr = "" if r["psnr_db"] is None else f"{r['psnr_db']:.2f} dB"
        bpp = "" if r["bits_per_pixel"] is None else f"{r['bits_per_pixel']:.3f}"
        md.append(f"| `{r['image']}` | {r['status']} | {psnr} | {bpp} |")
    create_markdown_artifact(
        markdown="\n".join(md) + "\n",
        key=f"{key}-summary",
        description=f"kquant batch {out['inbox']} -> {out['outbox']}",
    )
    if rows:
        create_table_artifact(
            table=rows,
            key=f"{key}-images",
            description="one row per image: written, skipped or failed",
        )
    if shared_fit:
        create_markdown_artifact(
            markdown=palette_markdown(shared_fit["palette"], None, "The shared palette"),
            key=f"{key}-palette",
            description="the shared palette",
        )
    for r in out["results"]:
        if r["preview"]:
            thumb = r.get("thumbnail") or thumbnail_data_url(r["preview"], BATCH_THUMB_WIDTH)
            create_markdown_artifact(
                markdown=f"# `{r['image']}`\n\n"
                f"![original | quantized]({thumb})"
                f"\n\nOriginal | quantized; full size: `{kuri.display(r['preview'])}`\n",
                key=slug(kuri.name(r["store"])) + "-preview",
                description=f"original | quantized of {r['image']}; full size: {r['preview']}",
            )
