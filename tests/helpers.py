"""Test helpers shared by test modules (a plain module, not a conftest)."""

import contextlib
import os
import time

import numpy as np


def photo_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, many-coloured RGB image with a little noise (not flat noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / max(w, 1) * 6.0 + 1.0) * np.cos(y / max(h, 1) * 3.0)
    g = 128 + 90 * np.cos((x + y) / max(h + w, 1) * 9.0)
    b = 128 + 110 * np.sin(y / max(h, 1) * 5.0 - x / max(w, 1) * 2.0)
    img = np.stack([r, g, b], axis=2) + rng.normal(0, 6, (h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moto_s3(log_dir, bucket: str):
    """Context manager: a moto S3 server on 127.0.0.1, the environment pointing at it.

    Yields an ``s3fs.S3FileSystem`` with ``bucket`` created. fsspec caches filesystem
    instances with the endpoint they were made with: the cache is emptied at start and
    end, so no instance outlives the server it points at. The server is stopped and the
    environment restored on exit.
    """
    import contextlib

    @contextlib.contextmanager
    def _run():
        import os
        import signal
        import subprocess
        import sys
        import time
        import urllib.request
        from pathlib import Path

        import s3fs

        port = free_port()
        log = Path(log_dir) / "moto.log"
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        endpoint = f"http://127.0.0.1:{port}"
        keys = (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
        )
        saved = {k: os.environ.get(k) for k in keys}
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        )
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            deadline = time.time() + 30
            while True:
                try:
                    urllib.request.urlopen(endpoint, timeout=1)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError(
                            "moto server did not start: " + log.read_text()
                        ) from None
                    time.sleep(0.2)
            fs = s3fs.S3FileSystem(skip_instance_cache=True)
            fs.mkdir(bucket)
            yield fs
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    return _run()


def stop_group(proc, timeout: float = 10) -> None:
    """Stop a process started with ``start_new_session=True`` and everything in its group."""
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass


def dask_processes(log_dir, *, env=None, nworkers: int = 2, timeout: float = 90):
    """Context manager: real `dask scheduler` and `dask worker --nworkers N --nthreads 1`
    processes on 127.0.0.1; yields ``(address, worker_process)`` and stops both on exit."""
    import contextlib

    @contextlib.contextmanager
    def _run():
        import os
        import subprocess
        import sys
        import time
        from pathlib import Path

        from distributed import Client

        dask_bin = str(Path(sys.executable).parent / "dask")
        port = free_port()
        address = f"tcp://127.0.0.1:{port}"
        logs = Path(log_dir)
        run_env = dict(os.environ, OMP_NUM_THREADS="1") if env is None else env
        sched = subprocess.Popen(
            [dask_bin, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=open(logs / "s.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=run_env,
        )
        worker = subprocess.Popen(
            [
                dask_bin,
                "worker",
                address,
                "--nworkers",
                str(nworkers),
                "--nthreads",
                "1",
                "--no-dashboard",
                "--host",
                "127.0.0.1",
                "--local-directory",
                str(logs),
            ],
            stdout=open(logs / "w.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=run_env,
        )
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    with Client(address, timeout="2s") as c:
                        if len(c.scheduler_info()["workers"]) == nworkers:
                            break
                except OSError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError(
                        "dask cluster did not start:\n" + (logs / "w.log").read_text()
                    )
                time.sleep(0.5)
            yield address, worker
        finally:
            stop_group(worker)
            stop_group(sched)

    return _run()


@contextlib.contextmanager
def prefect_client(api_url: str):
    """A sync Prefect client of the server at ``api_url``."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as c:
            yield c


def files(root, *, but: tuple[str, ...] = ()) -> dict:
    """Every file of a folder (a store) by relative path, with its bytes (byte-identity checks),
    except the relative paths in ``but`` (``"zarr.json"``: attributes that record timings)."""
    from pathlib import Path

    root = Path(root)
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() not in but
    }


def poll(predicate, timeout: float, what: str, *, interval: float, abort=None, detail=None):
    """Call ``predicate()`` every ``interval`` s until it returns something truthy (returned).

    ``abort()`` may return a message to fail with at once (a process that died);
    ``detail()`` adds text (logs) to the failure after ``timeout`` s.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if abort is not None:
            message = abort()
            if message:
                raise AssertionError(message)
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}"
                + (f"\n{detail()}" if detail is not None else "")
            )
        time.sleep(interval)


def run_cli_listing_modules(args: list[str], modules: tuple[str, ...], *, after: str = ""):
    """Run ``kquant.cli.main(args)`` in a fresh interpreter that then prints its exit code
    and which of ``modules`` it had imported (one line), then runs ``after``.

    Returns the :class:`subprocess.CompletedProcess`.
    """
    import subprocess
    import sys

    code = (
        "import sys\nfrom kquant import cli\n"
        f"rc = cli.main({[str(a) for a in args]!r})\n"
        f"print(rc, *[m for m in {tuple(modules)!r} if m in sys.modules])\n" + after
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def write_png(path, img: np.ndarray, *, age_seconds: float = 0.0):
    """Write ``img`` as a PNG at ``path``, modified ``age_seconds`` ago; return ``path``."""
    import imageio.v3 as iio

    iio.imwrite(path, img, extension=".png")
    if age_seconds:
        t = time.time() - age_seconds
        os.utime(path, (t, t))
    return path


def truncated_png(path):
    """A file that starts like a PNG but is cut in half."""
    import imageio.v3 as iio

    data = iio.imwrite("<bytes>", photo_like(40, 56, seed=9), extension=".png")
    path.write_bytes(data[: len(data) // 2])
    return path


def wait_for(predicate, timeout: float, what: str, stack=None, interval: float = 0.5):
    """:func:`poll` with a Prefect stack's log tail as the detail of a timeout."""
    return poll(
        predicate,
        timeout,
        what,
        interval=interval,
        detail=stack.log_tail if stack is not None else None,
    )


def write_old_store(path, labels, n_colors, version, chunk=(8, 16)):
    """A store of an older format, written as that format's kquant wrote it."""
    from kquant import store
    from kquant.label import packing

    bits = packing.bits_for(n_colors) if version == 1 else packing.storage_bits(n_colors)
    h, w = labels.shape
    pal = np.random.default_rng(n_colors).integers(0, 256, size=(n_colors, 3), dtype=np.uint8)
    meta = store.StoreMeta(
        height=h,
        width=w,
        k=max(2, n_colors),
        n_colors=n_colors,
        bits=bits,
        chunk_rows=chunk[0],
        chunk_cols=chunk[1],
        format_version=version,
        params={"k": max(2, n_colors)},
    )
    with store.StoreWriter(path, meta, pal) as wr:
        digests = {}
        for i, r0 in enumerate(range(0, h, chunk[0])):
            for j, c0 in enumerate(range(0, w, chunk[1])):
                packed = packing.pack_rows(labels[r0 : r0 + chunk[0], c0 : c0 + chunk[1]], bits)
                store.write_packed_chunk(wr.root, packed, r0, c0 * bits // 8, meta.packed_chunks)
                digests[(i, j)] = store.chunk_digest(packed)
        wr.commit(metrics={"psnr": 30.0}, checksum=store.combine_digests(digests))
    return pal


#: A projected CRS (UTM 33N, 0.5 m pixels) and a geographic one (WGS 84, degrees).
UTM33 = ("EPSG:32633", (0.5, 0.0, 500000.0, 0.0, -0.5, 5200000.0))
WGS84 = ("EPSG:4326", (0.0001, 0.0, 13.4, 0.0, -0.0001, 52.5))


def write_geotiff(
    path,
    img: np.ndarray,
    *,
    crs="EPSG:32633",
    transform=UTM33[1],
    tiled: bool = True,
    block: int = 256,
    nodata=None,
    compress: str = "deflate",
):
    """Write ``img`` ((H, W, 3) or (H, W, 4) RGBA) as a GeoTIFF with rasterio: ``crs``
    (anything rasterio takes, or None), the affine ``transform`` (a, b, c, d, e, f),
    tiled ``block`` x ``block`` or striped, and GDAL's ``nodata`` value."""
    import rasterio
    from affine import Affine

    h, w, bands = img.shape
    profile = dict(
        driver="GTiff",
        height=h,
        width=w,
        count=bands,
        dtype=str(img.dtype),
        transform=Affine(*transform),
        compress=compress,
        photometric="RGB",
    )
    if crs is not None:
        profile["crs"] = crs
    if tiled:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    else:
        profile.update(tiled=False, blockysize=min(h, 16))
    if nodata is not None:
        profile["nodata"] = nodata
    if bands == 4:
        profile["alpha"] = "YES"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(img, 2, 0))
    return path
