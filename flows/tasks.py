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
import threading
import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import kquant
from flows import pixels, storage
from kquant import cluster, pipeline, store
from kquant.errors import KquantError, ParameterError, reason
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
    """Drop an empty or unresolved ``$DASK_SCHEDULER_ADDRESS`` or ``$DASK_SCHEDULER_FILE``
    (the library reads them); return the usable address (from either)."""
    for name in (cluster.ENV_ADDRESS, cluster.ENV_SCHEDULER_FILE):
        raw = os.environ.get(name)
        if raw is not None and clean_address(raw) is None:
            os.environ.pop(name, None)
    return cluster.resolve_address(None)


def cluster_spec() -> tuple[str, dict] | None:
    """The cluster class (a dotted name) and its kwargs to make a dask cluster for the run
    with: ``$KQUANT_CLUSTER_CLASS`` and ``$KQUANT_CLUSTER_KWARGS`` (a JSON object), job
    variables of the deployments; None when unset (empty or an unresolved template).

    Raises
    ------
    ParameterError
        If the kwargs are not a JSON object.
    """
    cls = clean_address(os.environ.get("KQUANT_CLUSTER_CLASS"))
    if not cls:
        return None
    raw = clean_address(os.environ.get("KQUANT_CLUSTER_KWARGS")) or "{}"
    try:
        kwargs = json.loads(raw)
    except ValueError as exc:
        raise ParameterError(f"KQUANT_CLUSTER_KWARGS is not JSON: {exc}") from None
    if not isinstance(kwargs, dict):
        raise ParameterError(f"KQUANT_CLUSTER_KWARGS is not a JSON object: {raw}")
    return cls, kwargs


#: Images from this many pixels get a cluster of their own in ``quantize-image`` when a
#: cluster class is set (``$KQUANT_CLUSTER_MIN_PIXELS``).
CLUSTER_MIN_PIXELS = 2**28


@contextlib.contextmanager
def cluster_for_run(n_pixels: int, address: str | None, logger):
    """The dask address for a ``quantize-image`` run: ``address`` (or the environment's);
    else, for an image of at least ``$KQUANT_CLUSTER_MIN_PIXELS`` (default
    :data:`CLUSTER_MIN_PIXELS`) and a cluster class set (:func:`cluster_spec`), a cluster
    made for the run and closed after it; else None (local threads)."""
    address = clean_address(address) or sanitise_scheduler_env()
    spec = None if address else cluster_spec()
    minimum = int(os.environ.get("KQUANT_CLUSTER_MIN_PIXELS") or CLUSTER_MIN_PIXELS)
    if spec is None or n_pixels < minimum:
        yield address
        return
    from prefect.utilities.importtools import from_qualified_name

    cls, kwargs = spec
    logger.info("making a dask cluster for this run: %s(**%s)", cls, json.dumps(kwargs))
    with from_qualified_name(cls)(**kwargs) as made:
        yield made.scheduler_address


def cluster_description(client) -> str | None:
    """``"LocalCluster 'name', 2 workers"`` for a client of a cluster object, else None."""
    made = getattr(client, "cluster", None)
    if made is None:
        return None
    try:
        workers = len(client.scheduler_info().get("workers", {}))
    except Exception:
        workers = 0
    return f"{type(made).__name__} {made.name!r}, {workers} workers"


def dashboard_link(address: str | None) -> str | None:
    """The dashboard URL of the dask cluster at ``address`` (else ``$DASK_SCHEDULER_ADDRESS``),
    or None: no cluster, no dashboard, or no answer within 5 s."""
    address = clean_address(address) or sanitise_scheduler_env()
    if not address:
        return None
    try:
        from distributed import Client

        with Client(address, timeout="5s", set_as_default=False) as client:
            return _dashboard(client)
    except Exception:
        return None


def client_dashboard(client) -> str | None:
    """The dashboard link of a connected client's cluster, or None (see :func:`_dashboard`)."""
    try:
        return _dashboard(client)
    except Exception:
        return None


def _dashboard(client) -> str | None:
    """The client's dashboard link, if the scheduler serves a dashboard."""
    if "dashboard" not in client.scheduler_info().get("services", {}):
        return None  # dask scheduler --no-dashboard: the client's link would lead nowhere
    return client.dashboard_link or None


def runner_dashboard_link() -> str | None:
    """The dashboard URL of the dask cluster of this flow run's ``DaskTaskRunner``, or None."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    try:
        return _dashboard(ctx.task_runner.client)  # type: ignore[union-attr]
    except Exception:
        return None


def runner_cluster() -> str | None:
    """What :func:`cluster_description` says of this flow run's ``DaskTaskRunner`` cluster."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    try:
        return cluster_description(ctx.task_runner.client)  # type: ignore[union-attr]
    except Exception:
        return None


#: Tasks of this process doing pixel work at once (``$KQUANT_BATCH_WORKERS``, default the CPU
#: count, at most 4): the batch's thread pool also holds tasks that only wait for the steps
#: before them, so it has more threads than this.
COMPUTE_SLOTS = max(1, int(os.environ.get("KQUANT_BATCH_WORKERS") or min(4, os.cpu_count() or 1)))
_slots = threading.BoundedSemaphore(COMPUTE_SLOTS)


@contextlib.contextmanager
def compute_slot():
    """Hold one of :data:`COMPUTE_SLOTS` while doing pixel work outside a dask worker."""
    with _slots:
        yield


@contextlib.contextmanager
def compute_slots(n: int):
    """:func:`compute_slot` hands out ``n`` slots inside (the threads of the cluster the
    pixel work goes to); no task may hold a slot when the block starts or ends."""
    global _slots
    previous = _slots
    _slots = threading.BoundedSemaphore(n)
    try:
        yield
    finally:
        _slots = previous


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
        with compute_slot():
            yield clean_address(address)
        return
    import dask

    cluster.relax_worker_malloc()  # the nanny's MALLOC_TRIM_THRESHOLD_ halved the fit's speed
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


# --------------------------------------------------------------------------- tasks


@task(name="inspect-source", cache_policy=NO_CACHE, **IO_RETRIES)
def inspect_source(source: str, max_pixels: int | None = None) -> dict:
    """Read the source's header (never its pixels): format, shape, identity."""
    with compute_slot():
        src = ImageSource.from_json(pixels.run(pixels.inspect, source, max_pixels))
    get_run_logger().info(
        "%s: %s, %d x %d px, %d bytes", src.uri, src.format, src.height, src.width, src.size_bytes
    )
    return src.to_json()


@task(
    name="fit-palette",
    cache_key_fn=fit_cache_key,
    persist_result=True,
    result_serializer="json",
    result_storage=storage.result_storage(),
    **FIT_RETRIES,
)
def fit_palette(
    source: dict, params: dict, max_pixels: int | None = None, address: str | None = None
) -> dict:
    """Fit the palette of one image; cached on the source's identity and the fit parameters."""
    t0 = time.perf_counter()
    with dask_address(address) as addr:
        result = FitResult.from_json(pixels.run(pixels.fit, source, params, max_pixels, addr))
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
    result_storage=storage.result_storage(),
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


class ProgressArtifact:
    """A progress artifact (``key``) kept at ``done / total`` of a pass, as a callable
    ``(done, total)`` for the library.

    Updated at most every :data:`PROGRESS_SECONDS` (and at the end). The updates are extras:
    each is one API request without retries, and a failure (the API away) is logged once
    and skips updates for a while; it never slows or fails the pass.
    """

    def __init__(self, key: str, what: str, unit: str = "blocks written"):
        self.key, self.what, self.unit = key, what, unit
        self.id = None
        self.last = float("-inf")
        self.quiet_until = float("-inf")
        self.warned = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and (now - self.last < PROGRESS_SECONDS or now < self.quiet_until):
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

        pct = 100.0 * done / total if total else 100.0
        text = f"{self.what}: {done} of {total} {self.unit}"
        try:
            with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
                if self.id is None:
                    self.id = create_progress_artifact(pct, key=self.key, description=text)
                else:
                    update_progress_artifact(self.id, pct, description=text)
            self.last = now
        except Exception as exc:
            self.quiet_until = now + 10 * PROGRESS_SECONDS
            if not self.warned:
                self.warned = True
                get_run_logger().warning(
                    "progress artifact %s not updated: %s", self.key, " ".join(str(exc).split())
                )


#: Seconds between two updates of a progress artifact.
PROGRESS_SECONDS = 1.0


@task(name="assign-write", cache_policy=NO_CACHE, **IO_RETRIES)
def write_store(
    source: dict,
    target: str,
    palette: list | dict,
    params: dict,
    overwrite: bool = False,
    max_pixels: int | None = None,
    address: str | None = None,
    progress_key: str | None = None,
    nodata_index: int | None = None,
) -> dict:
    """Assign every pixel to the palette and write the store (atomically: temp dir + rename).

    ``palette`` is a list of ``[r, g, b]`` or a fit record (its ``"palette"``; its fit
    mode is then recorded in the store's metrics, as the CLI does). ``nodata_index`` (else
    the fit record's) is the entry reserved for masked pixels. With ``progress_key``, a
    progress artifact of that key follows the write pass (blocks written / total).
    """
    progress = ProgressArtifact(progress_key, f"writing {target}") if progress_key else False
    t0 = time.perf_counter()
    with dask_address(address) as addr:
        meta = store.StoreMeta.from_json(
            pixels.run(
                pixels.write,
                source,
                target,
                palette,
                params,
                overwrite,
                max_pixels,
                addr,
                progress,
                nodata_index,
            )
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
    with dask_address(address) as addr:
        root, checksum = pixels.run(pixels.verify, target, addr)
    seconds = time.perf_counter() - t0
    get_run_logger().info("verified %s (%s)", root, checksum)
    return {"checksum": checksum, "seconds": round(seconds, 3)}


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
    thumbnail_width: int | None = None,
    nodata_index: int | None = None,
) -> dict:
    """Write the original | reconstruction + palette picture (PNG, at most 1600 px wide;
    masked pixels, ``nodata_index`` or the fit record's, as a checkerboard), and with
    ``thumbnail_width`` its JPEG thumbnail as a data URL (``"thumbnail"``).

    ``out`` may be an object-store URL: the picture is made locally, then uploaded.
    """
    t0 = time.perf_counter()
    out = kuri.normalise(out)
    staging = tempfile.TemporaryDirectory(prefix="kquant-preview-") if kuri.is_remote(out) else None
    with compute_slot(), staging or contextlib.nullcontext():
        local = os.path.join(staging.name, "preview.png") if staging else out
        thumb = pixels.run(
            pixels.preview,
            source,
            palette,
            local,
            params,
            max_pixels,
            thumbnail_width,
            nodata_index,
        )
        if staging:
            fs, path = kuri.filesystem(out)
            fs.put_file(local, path)
    return {"path": out, "seconds": round(time.perf_counter() - t0, 3), "thumbnail": thumb}


@task(name="write-verify-preview", cache_policy=NO_CACHE, **IO_RETRIES)
def store_image(
    source: dict,
    target: str,
    palette: list | dict,
    params: dict,
    max_pixels: int | None = None,
    preview_out: str | None = None,
    thumbnail_width: int | None = None,
    nodata_index: int | None = None,
) -> dict:
    """An image's write, verification and preview (if ``preview_out``) in one task run: the
    batch's, where a task run costs ~90 ms of CPU in the flow process and the server
    (bench/README.md, "Inbox throughput").

    Returns :func:`write_store`'s record with ``"verified"`` (:func:`verify_store`'s) and
    ``"preview"`` (:func:`write_preview`'s, or None: a preview that fails is a warning, the
    store stands). A retry after the store was committed verifies that store rather than
    writing it again.
    """
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    if ctx is not None and ctx.task_run.run_count > 1 and store.status(target) == "complete":
        written = {"meta": store.open_store(target).meta.to_json(), "seconds": 0.0}
    else:
        written = write_store.fn(
            source, target, palette, params, max_pixels=max_pixels, nodata_index=nodata_index
        )
    written["verified"] = verify_store.fn(target)
    written["preview"] = None
    if preview_out:
        try:
            written["preview"] = write_preview.fn(
                source, palette, preview_out, params, max_pixels, thumbnail_width, nodata_index
            )
        except Exception as exc:  # the store is complete and verified; a preview is extra
            get_run_logger().warning("%s: no preview: %s", preview_out, reason(exc))
    return written
