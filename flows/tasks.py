"""Prefect tasks over the kquant library, shared by the ``quantize-image`` and ``quantize-batch`` flows.

Tasks exchange only small JSON values: URIs, the source header
(:meth:`kquant.readers.ImageSource.to_json`), parameters
(:meth:`kquant.params.QuantizeParams.to_json`), palettes as lists of
``[r, g, b]`` and store metrics. Pixels stay inside the library's dask graphs
and the zarr store.

The tasks live in this importable module (not in the flow files, which Prefect
loads by path under another module name) so that dask workers started by
``DaskTaskRunner`` can unpickle them by reference.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

import kquant
from kquant import cluster, pipeline, store
from kquant.pipeline import shared_palette
from kquant.io import uri as kuri
from kquant.errors import KquantError, StoreError
from kquant.label.metrics import format_bytes
from kquant.params import QuantizeParams
from kquant.io.readers import ImageSource

#: Extensions the batch flow picks up from an inbox (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp",
                  ".ppm", ".pgm", ".pnm", ".zarr")
STORE_SUFFIX = ".kquant"
#: Width of the JPEG thumbnail embedded (as a data URL) in the image artifact.
THUMB_WIDTH = 800


# --------------------------------------------------------------------------- small helpers

def clean_address(address: str | None) -> str | None:
    """A usable dask scheduler address, or None.

    Empty strings and unresolved ``prefect.yaml`` templates (``{{ $VAR }}``, left
    as is by ``prefect deploy`` when the variable was not set) count as unset.
    """
    if address is None:
        return None
    address = str(address).strip()
    if not address or "{{" in address:
        return None
    return address


def sanitise_scheduler_env() -> str | None:
    """Drop an empty or unresolved ``$DASK_SCHEDULER_ADDRESS`` (the library reads it); return the usable one."""
    raw = os.environ.get(cluster.ENV_ADDRESS)
    usable = clean_address(raw)
    if raw is not None and usable is None:
        os.environ.pop(cluster.ENV_ADDRESS, None)
    return usable


@contextlib.contextmanager
def dask_address(address: str | None):
    """The dask address for library calls made inside a task.

    Outside dask (the ``quantize-image`` flow's tasks): ``address``, else
    ``$DASK_SCHEDULER_ADDRESS``, else local threads (the library's rule).

    In a task that ``DaskTaskRunner`` runs on a dask worker (``quantize-batch``),
    the image is the unit of parallelism: its pixel work runs on local threads
    of that worker, unless the worker itself has ``$DASK_SCHEDULER_ADDRESS``;
    then the task's thread secedes from the worker's pool while the library
    computes on that cluster, so tasks waiting on pixel graphs never hold every
    worker thread (the ``get_dask_client`` deadlock). Either way the default
    scheduler is pinned to local threads for the small computations the library
    runs outside its own scheduler block (dask-ml's sample fit): in a worker
    thread dask would otherwise use the worker's client, which the library may
    have just closed.
    """
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        yield clean_address(address)
        return
    import dask

    with dask.config.set(scheduler="threads"):
        if not sanitise_scheduler_env():
            yield None
            return
        from distributed import rejoin, secede

        secede()
        try:
            yield None
        finally:
            rejoin()


def source_from_json(data: dict) -> ImageSource:
    """Inverse of :meth:`ImageSource.to_json`."""
    d = dict(data)
    d["raw_shape"] = tuple(d["raw_shape"])
    d["tile"] = tuple(d["tile"]) if d.get("tile") else None
    return ImageSource(**d)


def identity(source_json: dict) -> str:
    """path:size:mtime of an inspected source (changes whenever the file does)."""
    return source_from_json(source_json).identity


def slug(text: str, limit: int = 48) -> str:
    """Artifact-key-safe form of a name: lowercase letters, digits and dashes."""
    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    if len(s) > limit:
        digest = hashlib.sha1(s.encode()).hexdigest()[:8]
        s = s[:limit - 9].rstrip("-") + "-" + digest
    return s or "image"


def canonical(u: str | os.PathLike) -> str:
    """Absolute path of a local URI, the URL itself for object stores."""
    return kuri.normalise(u)


def name_of(u: str | os.PathLike) -> str:
    """Last component of a path or URL."""
    return canonical(u).rstrip("/").rsplit("/", 1)[-1]


def display_uri(u: str | os.PathLike) -> str:
    """``file://`` URI of a local path, the URL itself for object stores."""
    u = canonical(u)
    return u if kuri.is_remote(u) else Path(u).as_uri()


def join(base: str | os.PathLike, rel: str) -> str:
    """``base/rel`` for a folder path or an object-store prefix."""
    base = canonical(base)
    return f"{base.rstrip('/')}/{rel}" if kuri.is_remote(base) else str(Path(base) / rel)


def exists(u: str | os.PathLike) -> bool:
    u = canonical(u)
    if kuri.is_remote(u):
        fs, path = kuri.filesystem(u)
        fs.invalidate_cache(path)
        return bool(fs.exists(path))
    return os.path.lexists(u)


def remove_store(u: str | os.PathLike) -> None:
    """Delete a store (its ``zarr.json`` first: nothing complete-looking is left meanwhile)."""
    u = canonical(u)
    if kuri.is_remote(u):
        fs, path = kuri.filesystem(u)
        if fs.exists(f"{path}/zarr.json"):
            fs.rm(f"{path}/zarr.json")
        if fs.exists(path):
            fs.rm(path, recursive=True)
    else:
        import shutil

        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(u, "zarr.json"))
        shutil.rmtree(u, ignore_errors=True)


def preview_path(target: str | os.PathLike) -> str:
    """Where the preview picture of a store goes: ``X.kquant`` -> ``X-preview.png`` (as ``kquant demo``)."""
    target = canonical(target).rstrip("/")
    head, _, name = target.rpartition("/")
    stem = name[:-len(STORE_SUFFIX)] if name.endswith(STORE_SUFFIX) else name
    return f"{head}/{stem}-preview.png"


def make_params(k: int, seed: int, sample_size: int, chunk: int | None, restarts: int,
                mode: str = "auto", shard: int | None = None, space: str = "rgb",
                dither: str = "none", target_psnr: float | None = None) -> QuantizeParams:
    """The flows' parameters as :class:`QuantizeParams` (validated: ParameterError)."""
    return QuantizeParams(k=k, seed=seed, sample_size=sample_size, chunk=chunk, restarts=restarts,
                          mode=mode, shard=shard, space=space, dither=dither,
                          target_psnr=target_psnr)


def store_status(target: str | os.PathLike) -> str:
    """``"missing"``, ``"complete"`` or ``"other"`` (something else is at ``target``)."""
    if not exists(target):
        return "missing"
    try:
        return "complete" if store.read_meta(target).complete else "other"
    except KquantError:
        return "other"


def thumbnail_data_url(png: str | os.PathLike, width: int = THUMB_WIDTH) -> str:
    """A ``data:image/jpeg;base64,...`` URL of a reduced copy of a PNG (path or URL).

    Prefect image artifacts take a URL; a data URL displays in the UI from any
    browser, with no file server (a ``file://`` URL does not load in a page
    served over http, an object-store URL may need credentials).
    """
    from PIL import Image

    png = canonical(png)
    if kuri.is_remote(png):
        fs, path = kuri.filesystem(png)
        data = io.BytesIO(fs.cat_file(path))
    else:
        data = png
    with Image.open(data) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, max(1, round(im.height * width / im.width))), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _not_user_error(task, task_run, state) -> bool:
    """Retry condition: retry I/O hiccups, never a KquantError (bad input stays bad)."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and not isinstance(exc, KquantError)


def _palette(palette: list | dict) -> list:
    return palette["palette"] if isinstance(palette, dict) else palette


def _fit_info(fit: list | dict):
    """The FitResult of a fit task's JSON (what :func:`kquant.pipeline.write` records), or None."""
    if not isinstance(fit, dict) or not fit.get("mode"):
        return None
    if fit["mode"] == "imposed":  # only the mode is recorded (as the CLI's --palette)
        return pipeline.imposed_fit(fit["palette"], 0)
    import numpy as np

    from kquant.fit import FitResult

    return FitResult(palette=np.asarray(fit["palette"], np.uint8), sse=fit["sse"],
                     n_pixels=fit["n_pixels"], n_unique=fit["n_unique"], lossless=fit["lossless"],
                     refined_from=fit.get("refined_from", "sample"), mode=fit["mode"])


IO_RETRIES = dict(retries=2, retry_delay_seconds=1, retry_condition_fn=_not_user_error)
#: The fits retry once, on anything but a user error. A task whose retry condition declines
#: fails without Prefect logging a traceback (the flow logs the one-line reason); a task
#: with no retries left logs the exception's traceback.
FIT_RETRIES = dict(retries=1, retry_delay_seconds=1, retry_condition_fn=_not_user_error)


# --------------------------------------------------------------------------- cache keys

def _fit_key(identities: list[str], params: dict) -> str:
    # every QuantizeParams field can change the palette (k, seed, sample size,
    # chunking of the sample, restarts, ...); max_pixels and address cannot
    payload = {"kquant": kquant.__version__, "sources": identities, "params": params}
    return "kquant-fit-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def fit_cache_key(context, inputs: dict) -> str:
    """Cache key of a fit: the source's identity (path, size, mtime), k, seed, sample size, ..."""
    return _fit_key([identity(inputs["source"])], inputs["params"])


def shared_fit_cache_key(context, inputs: dict) -> str:
    return _fit_key(sorted(identity(s) for s in inputs["sources"]), inputs["params"])


def _fit_json(result, seconds: float) -> dict:
    return {"palette": result.palette.tolist(), "sse": int(result.sse), "mse": float(result.mse),
            "n_pixels": int(result.n_pixels), "n_unique": int(result.n_unique),
            "lossless": bool(result.lossless), "refined_from": result.refined_from,
            "mode": result.mode, "seconds": round(seconds, 3)}


# --------------------------------------------------------------------------- tasks

@task(name="inspect-source", cache_policy=NO_CACHE, **IO_RETRIES)
def inspect_source(source: str, max_pixels: int | None = None) -> dict:
    """Read the source's header (never its pixels): format, shape, identity."""
    src = pipeline.inspect(source, max_pixels=max_pixels)
    get_run_logger().info("%s: %s, %d x %d px, %d bytes", src.uri, src.format, src.height,
                          src.width, src.size_bytes)
    return src.to_json()


@task(name="fit-palette", cache_key_fn=fit_cache_key, persist_result=True,
      result_serializer="json", **FIT_RETRIES)
def fit_palette(source: dict, params: dict, max_pixels: int | None = None,
                address: str | None = None) -> dict:
    """Fit the palette of one image; cached on the source's identity and the fit parameters."""
    t0 = time.perf_counter()
    with dask_address(address) as addr:
        result = pipeline.fit(source_from_json(source), QuantizeParams.from_json(params),
                              max_pixels=max_pixels, address=addr)
    out = _fit_json(result, time.perf_counter() - t0)
    get_run_logger().info("fitted %d colours to %s in %.2f s (MSE %.3f%s)", len(out["palette"]),
                          source["uri"], out["seconds"], out["mse"],
                          ", lossless" if out["lossless"] else "")
    return out


@task(name="load-palette", cache_policy=NO_CACHE, **IO_RETRIES)
def load_palette(palette: str | list, params: dict) -> dict:
    """An imposed palette (a palette file or store path/URI, or a list of [r, g, b]) as a
    fit result of mode ``imposed``, with the run's parameters for it (``"params"``: ``k``
    is the palette's size, no target PSNR; as the CLI's ``--palette``)."""
    pal, run_params = pipeline.imposed_palette(palette, QuantizeParams.from_json(params))
    get_run_logger().info("imposed palette of %d colours from %s", len(pal),
                          palette if isinstance(palette, str) else "the parameters")
    # the fit record of the library's --palette; no colour count (none was taken)
    return dict(_fit_json(pipeline.imposed_fit(pal, 0), 0.0), n_unique=None,
                params=run_params.to_json())


@task(name="fit-shared-palette", cache_key_fn=shared_fit_cache_key, persist_result=True,
      result_serializer="json", **FIT_RETRIES)
def fit_shared_palette(sources: list[dict], params: dict, max_pixels: int | None = None,
                       address: str | None = None) -> dict:
    """Fit one palette on all the images together (histograms merged, sample drawn across them)."""
    t0 = time.perf_counter()
    with dask_address(address) as addr:
        result = shared_palette.fit_shared([source_from_json(s) for s in sources],
                                   QuantizeParams.from_json(params), max_pixels=max_pixels,
                                   address=addr)
    out = _fit_json(result, time.perf_counter() - t0)
    get_run_logger().info("fitted a shared palette of %d colours on %d images in %.2f s",
                          len(out["palette"]), len(sources), out["seconds"])
    return out


@task(name="assign-write", cache_policy=NO_CACHE, **IO_RETRIES)
def write_store(source: dict, target: str, palette: list | dict, params: dict,
                overwrite: bool = False, max_pixels: int | None = None,
                address: str | None = None) -> dict:
    """Assign every pixel to the palette and write the store (atomically: temp dir + rename).

    ``palette`` is a list of ``[r, g, b]`` or a fit result (its ``"palette"``; its fit
    mode is then recorded in the store's metrics, as the CLI does).
    """
    import numpy as np

    fit_info = _fit_info(palette)
    palette = _palette(palette)

    t0 = time.perf_counter()
    with dask_address(address) as addr:
        meta = pipeline.write(source_from_json(source), target, np.asarray(palette, np.uint8),
                              QuantizeParams.from_json(params), overwrite=overwrite,
                              max_pixels=max_pixels, address=addr, fit_info=fit_info)
    seconds = time.perf_counter() - t0
    m = meta.metrics
    get_run_logger().info("wrote %s in %.2f s: PSNR %s, %.3f bits/px", canonical(target),
                          seconds, "inf" if m["psnr"] is None else f"{m['psnr']:.2f} dB",
                          m["store_bits_per_pixel"])
    return {"meta": meta.to_json(), "seconds": round(seconds, 3)}


@task(name="verify-store", cache_policy=NO_CACHE, **IO_RETRIES)
def verify_store(target: str, address: str | None = None) -> dict:
    """Open the store as a reader would and recompute its checksum.

    A store that fails verification was written by this run: it is removed
    (nothing complete-looking is left) and the task fails.
    """
    t0 = time.perf_counter()
    try:
        with dask_address(address) as addr, cluster.scheduler(addr):
            st = store.open_store(target)
            st.verify()
    except StoreError:
        remove_store(target)
        raise
    seconds = time.perf_counter() - t0
    get_run_logger().info("verified %s (%s)", st.root, st.meta.checksum)
    return {"checksum": st.meta.checksum, "seconds": round(seconds, 3)}


@task(name="preview", cache_policy=NO_CACHE, **IO_RETRIES)
def write_preview(source: dict, palette: list | dict, out: str, params: dict,
                  max_pixels: int | None = None) -> dict:
    """Write the original | reconstruction + palette picture (PNG, at most 1600 px wide).

    ``out`` may be an object-store URL: the picture is made locally, then uploaded.
    """
    import numpy as np

    palette = _palette(palette)
    t0 = time.perf_counter()
    src, pal = source_from_json(source), np.asarray(palette, np.uint8)
    prm = QuantizeParams.from_json(params)
    out = canonical(out)
    if kuri.is_remote(out):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="kquant-preview-") as tmp:
            local = os.path.join(tmp, "preview.png")
            pipeline.preview(src, pal, local, prm, max_pixels=max_pixels)
            fs, path = kuri.filesystem(out)
            fs.put_file(local, path)
    else:
        pipeline.preview(src, pal, out, prm, max_pixels=max_pixels)
    return {"path": out, "seconds": round(time.perf_counter() - t0, 3)}


# --------------------------------------------------------------------------- Prefect API

#: Retries of each Prefect API request (exponential back-off of 2, 4, ... 256 s: about
#: 8.5 minutes in all) for ``python -m flows.quantize``; deploy/prefect.yaml sets the same
#: for the deployments' flow runs (``PREFECT_CLIENT_MAX_RETRIES``).
CLIENT_MAX_RETRIES = 8
#: How long a flow whose store is complete waits for an unreachable Prefect API before it
#: reports (artifacts, then the run's final state); ``$KQUANT_API_WAIT_SECONDS``.
API_WAIT_SECONDS = 900.0


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name if it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


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


def wait_for_api(logger, what: str, timeout: float | None = None,
                 interval: float = 2.0) -> bool:
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
    logger.warning("the Prefect API at %s does not answer; %s; waiting up to %.0f s for it",
                   PREFECT_API_URL.value(), what, timeout)
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


# --------------------------------------------------------------------------- reporting

def palette_rows(palette: list, counts: list | None) -> list[dict]:
    """Rows of the palette table: entry, hex, RGB, share of pixels (%)."""
    total = sum(counts) if counts else 0
    rows = []
    for i, (r, g, b) in enumerate(palette):
        share = 100.0 * counts[i] / total if total else None
        rows.append({"entry": i, "hex": f"#{r:02x}{g:02x}{b:02x}", "r": r, "g": g, "b": b,
                     "pixels": counts[i] if counts else None,
                     "share_pct": None if share is None else round(share, 2)})
    return rows


def summary(source: dict, target: str, fit: dict, fit_cached: bool, written: dict,
            verified: dict, preview: dict | None, timings: dict) -> dict:
    """The flow's result: small and JSON-able."""
    meta = written["meta"]
    m = meta["metrics"]
    return {
        "source": source["uri"], "target": canonical(target),
        "height": meta["height"], "width": meta["width"], "n_colors": meta["n_colors"],
        "bits": meta["bits"], "psnr": m["psnr"], "mse": m["mse"],
        "store_bytes": m["store_bytes"], "store_bits_per_pixel": m["store_bits_per_pixel"],
        "n_unique": fit["n_unique"], "fit_cached": fit_cached, "checksum": verified["checksum"],
        "palette": [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in fit["palette"]],
        "palette_counts": m["palette_counts"],
        "preview": preview["path"] if preview else None,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "already_done": False,
    }


def finished_store(target: str, source: str, params: dict, palette: list | None = None):
    """The complete store at ``target`` if it is this run's result, else None.

    This run's result: made from ``source`` as it is now (same URI, size, mtime and ETag,
    see :func:`kquant.pipeline.same_source`), with the same parameters and, when ``palette``
    is given (imposed), that palette. A store that does not record its source's identity
    is not recognised.
    """
    try:
        st = store.open_store(target)
        same = (QuantizeParams.from_json(st.meta.params).to_json()
                == QuantizeParams.from_json(params).to_json())
    except KquantError:
        return None
    if not same or not pipeline.same_source(st.meta.source, source):
        return None
    if palette is not None and st.palette.tolist() != [[int(v) for v in c] for c in palette]:
        return None
    return st


def stored_summary(st, target: str, seconds: float) -> dict:
    """The flow's result for a store an earlier run completed (as :func:`summary`, read
    from the store: no colour count, the checksum recorded, the preview if it is there)."""
    m = st.meta.metrics
    preview = preview_path(target)
    return {
        "source": st.meta.source["uri"], "target": canonical(target),
        "height": st.meta.height, "width": st.meta.width, "n_colors": st.meta.n_colors,
        "bits": st.meta.bits, "psnr": m["psnr"], "mse": m["mse"],
        "store_bytes": m["store_bytes"], "store_bits_per_pixel": m["store_bits_per_pixel"],
        "n_unique": None, "fit_cached": False, "checksum": st.meta.checksum,
        "palette": [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in st.palette.tolist()],
        "palette_counts": m["palette_counts"],
        "preview": preview if exists(preview) else None,
        "timings": {"total": round(seconds, 3)},
        "already_done": True,
    }


def markdown_report(s: dict) -> str:
    psnr = "∞ (lossless)" if s["psnr"] is None else f"{s['psnr']:.2f} dB"
    t = s["timings"]
    fit = ("already done (the complete store of an earlier run with this source and these "
           "parameters; nothing rewritten)" if s.get("already_done") else
           "imposed (no fit)" if s["n_unique"] is None else
           f"cached (no refit; fitted earlier in {t.get('fit', 0):.2f} s)" if s["fit_cached"]
           else f"fitted in {t.get('fit', 0):.2f} s")
    colours = "" if s["n_unique"] is None else f", {s['n_unique']:,} colours"
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in t.items() if k != "total")
    lines = [
        f"# kquant: `{name_of(s['source'])}` → `{name_of(s['target'])}`",
        "",
        "| | |",
        "|---|---|",
        f"| store | `{display_uri(s['target'])}` |",
        f"| source | `{s['source']}` ({s['height']} × {s['width']} px{colours}) |",
        f"| palette | {s['n_colors']} colours, labels packed at {s['bits']} bits/px |",
        f"| PSNR | {psnr} (MSE {s['mse']:.3f}) |",
        f"| size | {format_bytes(s['store_bytes'])}: {s['store_bits_per_pixel']:.3f} bits/px "
        f"(raw RGB: 24 bits/px) |",
        f"| fit | {fit} |",
        f"| timings | {steps}; total {t.get('total', 0):.2f} s |",
        f"| checksum | `{s['checksum']}` "
        f"({'recorded, verified when written' if s.get('already_done') else 'verified'}) |",
    ]
    if s.get("preview"):
        lines.append(f"| preview | `{display_uri(s['preview'])}` |")
    return "\n".join(lines) + "\n"


def report(s: dict, key: str) -> dict:
    """Artifacts for the UI: markdown summary, palette table, preview image.

    Keys (``<key>-summary``, ``<key>-palette``, ``<key>-preview``) depend on the
    store's name, so the Artifacts page keeps one history per store.
    """
    ids = {"summary": str(create_markdown_artifact(
        markdown=markdown_report(s), key=f"{key}-summary",
        description=f"kquant store {s['target']}"))}
    palette = [[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in s["palette"]]
    ids["palette"] = str(create_table_artifact(
        table=palette_rows(palette, s["palette_counts"]), key=f"{key}-palette",
        description=f"palette of {name_of(s['target'])}: entry, hex, RGB, share of pixels"))
    if s.get("preview"):
        ids["preview"] = str(create_image_artifact(
            image_url=thumbnail_data_url(s["preview"]), key=f"{key}-preview",
            description=f"original | quantized ({s['n_colors']} colours) of "
                        f"{name_of(s['source'])}; full size: {s['preview']}"))
    return ids
