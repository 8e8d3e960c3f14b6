"""The pixel work of the flows' tasks, as plain functions of JSON values (no Prefect).

:mod:`flows.tasks` calls them in its own thread, or, during a batch of many images, in a
pool of worker processes (:func:`pool`): Python-heavy steps of the fit and the write pass
hold the GIL, so threads of one process keep about one core busy; processes use them all.
This module imports only kquant, so the workers start without importing Prefect.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import multiprocessing
import os
import threading

import numpy as np

from kquant import cluster, pipeline, store
from kquant.errors import StoreError
from kquant.fit import FitResult
from kquant.io import ImageSource
from kquant.io import uri as kuri
from kquant.params import QuantizeParams


def palette_of(palette: list | dict) -> list:
    """The palette of a list of ``[r, g, b]`` or of a fit record."""
    return palette["palette"] if isinstance(palette, dict) else palette


def fit_info(fit: list | dict) -> FitResult | None:
    """The FitResult of a fit record (what :func:`kquant.pipeline.write` records), or None."""
    if not isinstance(fit, dict) or not fit.get("mode"):
        return None
    if fit["mode"] == "imposed":  # only the mode is recorded (as the CLI's --palette)
        return pipeline.imposed_fit(fit["palette"], 0)
    return FitResult.from_json(fit)


def inspect(source: str, max_pixels: int | None) -> dict:
    return pipeline.inspect(source, max_pixels=max_pixels).to_json()


def fit(source: dict, params: dict, max_pixels: int | None, address: str | None) -> dict:
    result = pipeline.fit(
        ImageSource.from_json(source),
        QuantizeParams.from_json(params),
        max_pixels=max_pixels,
        address=address,
    )
    return result.to_json()


def write(
    source: dict,
    target: str,
    palette: list | dict,
    params: dict,
    overwrite: bool,
    max_pixels: int | None,
    address: str | None,
    progress=False,
    nodata_index: int | None = None,
) -> dict:
    """Write the store; ``nodata_index`` (else the fit record's) is the entry reserved for
    masked pixels; an imposed palette gets its reserved entry as the CLI's ``--palette``."""
    src, prm = ImageSource.from_json(source), QuantizeParams.from_json(params)
    pal = np.asarray(palette_of(palette), np.uint8)
    info = fit_info(palette)
    if info is not None and info.mode == "imposed":
        pal, nodata_index = pipeline.reserve_imposed(pal, src, prm)
    meta = pipeline.write(
        src,
        target,
        pal,
        prm,
        overwrite=overwrite,
        max_pixels=max_pixels,
        address=address,
        progress=progress,
        fit_info=info,
        nodata_index=nodata_index,
    )
    return meta.to_json()


def verify(target: str, address: str | None) -> tuple[str, str]:
    """``(root, checksum)`` of the verified store; a store that fails is removed."""
    try:
        with cluster.scheduler(address):
            st = store.open_store(target)
            st.verify()
    except StoreError:
        store.remove(target)
        raise
    return str(st.root), st.meta.checksum


def preview(
    source: dict,
    palette: list | dict,
    out: str,
    params: dict,
    max_pixels: int | None,
    thumbnail_width: int | None = None,
    nodata_index: int | None = None,
) -> str | None:
    """Write the preview picture at ``out`` (masked pixels, ``nodata_index`` or the fit
    record's, as a checkerboard); return its thumbnail (a data URL) if asked."""
    src, prm = ImageSource.from_json(source), QuantizeParams.from_json(params)
    pal = np.asarray(palette_of(palette), np.uint8)
    if isinstance(palette, dict) and palette.get("mode") == "imposed":
        pal, nodata_index = pipeline.reserve_imposed(pal, src, prm)
    elif nodata_index is None and isinstance(palette, dict):
        nodata_index = palette.get("nodata_index")
    pipeline.preview(src, pal, out, prm, max_pixels=max_pixels, nodata_index=nodata_index)
    return thumbnail_data_url(out, thumbnail_width) if thumbnail_width else None


def thumbnail_data_url(png: str | os.PathLike, width: int = 800) -> str:
    """A ``data:image/jpeg;base64,...`` URL of a reduced copy of a PNG (path or URL).

    Markdown artifacts show it inline from any browser, with no file server (a
    ``file://`` URL does not load in a page served over http, an object-store URL may
    need credentials).
    """
    from PIL import Image

    png = kuri.normalise(png)
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


# --------------------------------------------------------------------------- worker processes

_pool: concurrent.futures.ProcessPoolExecutor | _ClusterExecutor | None = None
_lock = threading.Lock()


def _warm() -> None:
    """Load the compiled kernels in a new worker (while the first images are inspected)."""
    from kquant.pipeline import chunked

    chunked.warm_write_pass()


@contextlib.contextmanager
def pool(workers: int):
    """Run :func:`run`'s calls in ``workers`` processes (spawned) until the block ends."""
    global _pool
    ctx = multiprocessing.get_context("spawn")
    executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx)
    for _ in range(workers):
        executor.submit(_warm)
    with _lock:
        _pool = executor
    try:
        yield executor
    finally:
        with _lock:
            _pool = None
        executor.shutdown(wait=True, cancel_futures=True)


def on_worker(fn, *args):
    """``fn(*args)`` on a dask worker: the image's pixel work on that worker's threads (never
    a graph sent back to the cluster), the nanny's allocator setting undone."""
    cluster.relax_worker_malloc()
    with cluster.local_only():
        return fn(*args)


@contextlib.contextmanager
def cluster_pool(address: str):
    """Run :func:`run`'s calls on the dask cluster at ``address`` until the block ends: each
    call is one dask task (:func:`on_worker`), so an image's steps cost a dask task each
    (~1 ms) rather than a Prefect task run on a worker (~0.1-0.3 s; bench/README.md, "Inbox
    throughput"). Yields the client. Workers need kquant installed (the ``flows`` package
    comes with it; Prefect is not imported there).

    Raises
    ------
    KquantError
        If the scheduler cannot be reached.
    """
    global _pool
    client = cluster.connect(address)
    executor = _ClusterExecutor(client)
    cluster.warm_workers(_warm, client)
    with _lock:
        _pool = executor
    try:
        yield client
    finally:
        with _lock:
            _pool = None
        client.close()


class _ClusterExecutor:
    """``submit(fn, *args)`` as a dask task through :func:`on_worker`."""

    def __init__(self, client):
        self.client = client

    def submit(self, fn, *args):
        return self.client.submit(on_worker, fn, *args, pure=False)


def run(fn, *args):
    """``fn(*args)`` in a worker process while :func:`pool` is open, or on a dask worker
    while :func:`cluster_pool` is (and ``args`` hold no callable), else here."""
    executor = _pool
    if executor is None or any(callable(a) for a in args):
        return fn(*args)
    return executor.submit(fn, *args).result()
