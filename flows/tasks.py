"""Prefect tasks over the kquant library, shared by the ``quantize-image`` and
``quantize-batch`` flows.

Tasks exchange only small JSON values: URIs, the source header
(:meth:`kquant.io.ImageSource.to_json`), parameters
(:meth:`kquant.params.QuantizeParams.to_json`), fits (:meth:`kquant.fit.FitResult.to_json`,
with the seconds they took) and store attributes. Pixels stay inside the library's dask
graphs and the zarr store.

The tasks live in this importable module (not in the flow files, which Prefect loads by path
under another module name) so that dask workers started by ``DaskTaskRunner`` can unpickle
them by reference.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import kquant
from kquant import cluster, pipeline, store
from kquant.errors import KquantError, StoreError
from kquant.fit import FitResult
from kquant.io import ImageSource
from kquant.io import uri as kuri
from kquant.params import QuantizeParams

# --------------------------------------------------------------------------- dask


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
    """Drop an empty or unresolved ``$DASK_SCHEDULER_ADDRESS`` (the library reads it);
    return the usable one."""
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

    In a task that ``DaskTaskRunner`` runs on a dask worker (``quantize-batch``), the image
    is the unit of parallelism: its pixel work runs on local threads of that worker, unless
    the worker itself has ``$DASK_SCHEDULER_ADDRESS``; then the task's thread secedes from
    the worker's pool while the library computes on that cluster, so tasks waiting on pixel
    graphs never hold every worker thread (the ``get_dask_client`` deadlock). Either way the
    default scheduler is pinned to local threads for the small computations the library
    runs outside its own scheduler block (dask-ml's sample fit): in a worker thread dask
    would otherwise use the worker's client, which the library may have just closed.
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


# --------------------------------------------------------------------------- retries, cache


def _not_user_error(task, task_run, state) -> bool:
    """Retry condition: retry I/O hiccups, never a KquantError (bad input stays bad)."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and not isinstance(exc, KquantError)


IO_RETRIES = dict(retries=2, retry_delay_seconds=1, retry_condition_fn=_not_user_error)
#: The fits retry once, on anything but a user error. A task whose retry condition declines
#: fails without Prefect logging a traceback (the flow logs the one-line reason); a task
#: with no retries left logs the exception's traceback.
FIT_RETRIES = dict(retries=1, retry_delay_seconds=1, retry_condition_fn=_not_user_error)


def _fit_key(identities: list[str], params: dict) -> str:
    # every QuantizeParams field can change the palette (k, seed, sample size,
    # chunking of the sample, restarts, ...); max_pixels and address cannot
    payload = {"kquant": kquant.__version__, "sources": identities, "params": params}
    return "kquant-fit-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def fit_cache_key(context, inputs: dict) -> str:
    """Cache key of a fit: the source's identity (path, size, mtime), k, seed, sample size, ..."""
    return _fit_key([ImageSource.from_json(inputs["source"]).identity], inputs["params"])


def shared_fit_cache_key(context, inputs: dict) -> str:
    """Cache key of a shared fit: every source's identity and the parameters."""
    return _fit_key(
        sorted(ImageSource.from_json(s).identity for s in inputs["sources"]), inputs["params"]
    )


def _fit_record(result: FitResult, seconds: float) -> dict:
    """A fit task's result: the fit's JSON and the seconds it took."""
    return dict(result.to_json(), seconds=round(seconds, 3))


def _palette(palette: list | dict) -> list:
    """The palette of a list of ``[r, g, b]`` or of a fit record."""
    return palette["palette"] if isinstance(palette, dict) else palette


def _fit_info(fit: list | dict) -> FitResult | None:
    """The FitResult of a fit record (what :func:`kquant.pipeline.write` records), or None."""
    if not isinstance(fit, dict) or not fit.get("mode"):
        return None
    if fit["mode"] == "imposed":  # only the mode is recorded (as the CLI's --palette)
        return pipeline.imposed_fit(fit["palette"], 0)
    return FitResult.from_json(fit)


# --------------------------------------------------------------------------- tasks


@task(name="inspect-source", cache_policy=NO_CACHE, **IO_RETRIES)
def inspect_source(source: str, max_pixels: int | None = None) -> dict:
    """Read the source's header (never its pixels): format, shape, identity."""
    src = pipeline.inspect(source, max_pixels=max_pixels)
    get_run_logger().info(
        "%s: %s, %d x %d px, %d bytes", src.uri, src.format, src.height, src.width, src.size_bytes
    )
    return src.to_json()


@task(
    name="fit-palette",
    cache_key_fn=fit_cache_key,
    persist_result=True,
    result_serializer="json",
    **FIT_RETRIES,
)
def fit_palette(
    source: dict, params: dict, max_pixels: int | None = None, address: str | None = None
) -> dict:
    """Fit the palette of one image; cached on the source's identity and the fit parameters."""
    t0 = time.perf_counter()
    with dask_address(address) as addr:
        result = pipeline.fit(
            ImageSource.from_json(source),
            QuantizeParams.from_json(params),
            max_pixels=max_pixels,
            address=addr,
        )
    out = _fit_record(result, time.perf_counter() - t0)
    get_run_logger().info(
        "fitted %d colours to %s in %.2f s (MSE %.3f%s)",
        len(out["palette"]),
        source["uri"],
        out["seconds"],
        out["mse"],
        ", lossless" if out["lossless"] else "",
    )
    return out


@task(name="load-palette", cache_policy=NO_CACHE, **IO_RETRIES)
def load_palette(palette: str | list, params: dict) -> dict:
    """An imposed palette (a palette file or store path/URI, or a list of [r, g, b]) as a
    fit record of mode ``imposed``, with the run's parameters for it (``"params"``: ``k``
    is the palette's size, no target PSNR; as the CLI's ``--palette``)."""
    pal, run_params = pipeline.imposed_palette(palette, QuantizeParams.from_json(params))
    get_run_logger().info(
        "imposed palette of %d colours from %s",
        len(pal),
        palette if isinstance(palette, str) else "the parameters",
    )
    # the fit record of the library's --palette; no colour count (none was taken)
    return dict(
        _fit_record(pipeline.imposed_fit(pal, 0), 0.0), n_unique=None, params=run_params.to_json()
    )


@task(
    name="fit-shared-palette",
    cache_key_fn=shared_fit_cache_key,
    persist_result=True,
    result_serializer="json",
    **FIT_RETRIES,
)
def fit_shared_palette(
    sources: list[dict], params: dict, max_pixels: int | None = None, address: str | None = None
) -> dict:
    """Fit one palette on all the images together (histograms merged, sample drawn across them)."""
    t0 = time.perf_counter()
    with dask_address(address) as addr:
        result = pipeline.fit_shared(
            [ImageSource.from_json(s) for s in sources],
            QuantizeParams.from_json(params),
            max_pixels=max_pixels,
            address=addr,
        )
    out = _fit_record(result, time.perf_counter() - t0)
    get_run_logger().info(
        "fitted a shared palette of %d colours on %d images in %.2f s",
        len(out["palette"]),
        len(sources),
        out["seconds"],
    )
    return out


@task(name="assign-write", cache_policy=NO_CACHE, **IO_RETRIES)
def write_store(
    source: dict,
    target: str,
    palette: list | dict,
    params: dict,
    overwrite: bool = False,
    max_pixels: int | None = None,
    address: str | None = None,
    nodata_index: int | None = None,
) -> dict:
    """Assign every pixel to the palette and write the store (atomically: temp dir + rename).

    ``palette`` is a list of ``[r, g, b]`` or a fit record (its ``"palette"``; its fit
    mode is then recorded in the store's metrics, as the CLI does). ``nodata_index`` (else
    the fit record's) is the entry reserved for masked pixels.
    """
    fit_info = _fit_info(palette)
    src, prm = ImageSource.from_json(source), QuantizeParams.from_json(params)
    pal = np.asarray(_palette(palette), np.uint8)
    if fit_info is not None and fit_info.mode == "imposed":  # as the CLI's --palette
        pal, nodata_index = pipeline.reserve_imposed(pal, src, prm)
    t0 = time.perf_counter()
    with dask_address(address) as addr:
        meta = pipeline.write(
            src,
            target,
            pal,
            prm,
            overwrite=overwrite,
            max_pixels=max_pixels,
            address=addr,
            fit_info=fit_info,
            nodata_index=nodata_index,
        )
    seconds = time.perf_counter() - t0
    m = meta.metrics
    get_run_logger().info(
        "wrote %s in %.2f s: PSNR %s, %.3f bits/px",
        kuri.normalise(target),
        seconds,
        "inf" if m["psnr"] is None else f"{m['psnr']:.2f} dB",
        m["store_bits_per_pixel"],
    )
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
        store.remove(target)
        raise
    seconds = time.perf_counter() - t0
    get_run_logger().info("verified %s (%s)", st.root, st.meta.checksum)
    return {"checksum": st.meta.checksum, "seconds": round(seconds, 3)}


@task(name="export-cog", cache_policy=NO_CACHE, **IO_RETRIES)
def export_cog(target: str, params: dict, overwrite: bool = False) -> dict | None:
    """Write the store's Cloud-Optimized GeoTIFF where ``params["export"]`` says (``cog``:
    next to the store; else that path or URI); None without an export."""
    prm = QuantizeParams.from_json(params)
    out = pipeline.export_path(target, prm)
    if out is None:
        return None
    t0 = time.perf_counter()
    written = pipeline.export_cog(target, out, overwrite=overwrite)
    seconds = time.perf_counter() - t0
    get_run_logger().info("exported %s as a COG in %.2f s", written, seconds)
    return {"path": written, "seconds": round(seconds, 3)}


@task(name="preview", cache_policy=NO_CACHE, **IO_RETRIES)
def write_preview(
    source: dict,
    palette: list | dict,
    out: str,
    params: dict,
    max_pixels: int | None = None,
    nodata_index: int | None = None,
) -> dict:
    """Write the original | reconstruction + palette picture (PNG, at most 1600 px wide);
    masked pixels (``nodata_index``, else the fit record's) as a checkerboard.

    ``out`` may be an object-store URL: the picture is made locally, then uploaded.
    """
    t0 = time.perf_counter()
    src = ImageSource.from_json(source)
    pal = np.asarray(_palette(palette), np.uint8)
    prm = QuantizeParams.from_json(params)
    if isinstance(palette, dict) and palette.get("mode") == "imposed":
        pal, nodata_index = pipeline.reserve_imposed(pal, src, prm)
    elif nodata_index is None and isinstance(palette, dict):
        nodata_index = palette.get("nodata_index")
    out = kuri.normalise(out)
    if kuri.is_remote(out):
        with tempfile.TemporaryDirectory(prefix="kquant-preview-") as tmp:
            local = os.path.join(tmp, "preview.png")
            pipeline.preview(src, pal, local, prm, max_pixels=max_pixels, nodata_index=nodata_index)
            fs, path = kuri.filesystem(out)
            fs.put_file(local, path)
    else:
        pipeline.preview(src, pal, out, prm, max_pixels=max_pixels, nodata_index=nodata_index)
    return {"path": out, "seconds": round(time.perf_counter() - t0, 3)}
