"""End-to-end throughput and peak memory of kquant on a gigapixel tiled TIFF.

Usage:
    python bench/make_mosaic.py /data/mosaic-1g.tif --gigapixels 1
    python bench/huge.py /data/mosaic-1g.tif [--runs read,default,exact,threads1,cluster1,cluster2]

Each run is a fresh subprocess (so imports, caches and peak memory do not carry over);
peak RSS is the sum over the process and its children (LocalCluster workers), sampled
every 0.1 s. Reported: seconds, Mpx/s, CPU seconds (process and children: steadier than
wall time on a shared machine), peak RSS, the ratios to the read-only pass of the same
input (the I/O floor, measured in the same command) and the split by stage. The
LocalCluster runs start their cluster before the clock (as with --address, the cluster
exists before the job); its start-up time is reported apart.

Runs:
  read      decode every tile once, nothing else (2 threads)       -- the I/O floor
  read1     the same on one thread (how decoding itself scales on this machine)
  lookup    decode every tile and label it by the lookup table, packed, and nothing else (no
            error, counts, compression, checksum or write; palette and table made before the
            clock) -- the floor of labelling every pixel with this reader
  fitfloor  read the sample's tiles and fit dask-ml's KMeans on them, nothing else (dask-ml
            imported inside the clock, as in every run) -- the floor of the serial part the
            design card asks for, before any pixel can be labelled
  write     the write pass alone: quantize onto an imposed palette (K colours fitted on the
            bundled sample image before the clock), local threads -- the floor of any
            mode that labels every pixel
  default   kquant quantize, default mode (sample fit above 2^25 px), local threads
  exact     --mode exact (full colour histogram pass, then assign)
  threads1  default mode on a single thread (baseline for scaling)
  cluster1  default mode on a LocalCluster of 1 worker x 1 thread
  cluster2  default mode on a LocalCluster of 2 workers x 1 thread
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


class PeakRSS:
    """Peak of the summed RSS of this process and all its descendants."""

    def __init__(self, interval: float = 0.1):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its live and reaped children."""
    import psutil

    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


def _one(what: str, src: str, k: int, chunk: int) -> dict:
    import dask
    import numpy as np

    import kquant
    from kquant import pipeline

    out = {"run": what}
    cluster = None
    address = None
    if what.startswith("cluster"):  # the cluster exists before the job (as with --address)
        from distributed import LocalCluster

        t = time.perf_counter()
        cluster = LocalCluster(
            n_workers=int(what[-1]),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            memory_limit="4GiB",
        )
        address = cluster.scheduler_address
        out["cluster_start_s"] = round(time.perf_counter() - t, 2)
    imposed = None
    if what == "write":  # a palette fitted before the clock: the run is the write pass alone
        from importlib import resources

        sample = resources.files("kquant.data").joinpath("sample.jpg")
        with tempfile.TemporaryDirectory() as d:
            imposed = pipeline.quantize(
                str(sample), Path(d) / "p.kquant", kquant.QuantizeParams(k=k)
            ).fit.palette
    if what == "lookup":  # palette, table and kernel ready before the clock
        from kquant.label import lookup

        if k > 16:
            raise SystemExit("the lookup run packs 4-bit labels: K <= 16")
        palette = np.random.default_rng(0).integers(0, 256, (k, 3)).astype(np.uint8)
        table = lookup.table_for(palette)
        _lookup_pack(np.zeros((2, 8, 3), np.uint8), table)
    cpu0 = _cpu_seconds()
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        if what in ("read", "read1", "lookup"):  # one pass over the tiles, local threads
            img = kquant.open_image(src, chunks=chunk)
            per_block = (
                (lambda b: _lookup_pack(b, table))
                if what == "lookup"
                else (lambda b: np.asarray(b).shape)
            )
            tasks = [dask.delayed(per_block)(b) for b in img.to_delayed().ravel()]
            with dask.config.set(scheduler="threads", num_workers=1 if what == "read1" else 2):
                dask.compute(*tasks)
            n = img.shape[0] * img.shape[1]
            out["stages"] = {}
        elif what == "fitfloor":
            from kquant import fit

            src_info = pipeline.inspect(src)
            params = kquant.QuantizeParams(k=k)
            (sample,) = dask.compute(pipeline.sample_graph(src_info, params.sample_size, params))
            t1 = time.perf_counter()
            fit.fit_sample(sample, k, seed=params.seed)
            n = src_info.n_pixels
            out["stages"] = {
                "sample": round(t1 - t0, 2),
                "dask-ml": round(time.perf_counter() - t1, 2),
            }
        else:
            mode = "exact" if what == "exact" else "auto"
            params = kquant.QuantizeParams(k=k, mode=mode, chunk=chunk)
            with tempfile.TemporaryDirectory(dir=os.environ.get("KQ_BENCH_TMP")) as d:
                ctx = (
                    dask.config.set(scheduler="threads", num_workers=1)
                    if what == "threads1"
                    else dask.config.set(num_workers=2)
                )
                with ctx:
                    res = pipeline.quantize(
                        src, Path(d) / "out.kquant", params, address=address, palette=imposed
                    )
                out["store_bytes"] = res.meta.metrics["store_bytes"]
                out["psnr"] = res.meta.metrics["psnr"]
                out["fit_mode"] = res.fit.mode
            out["stages"] = {k: round(v, 2) for k, v in res.timings.items()}
            n = res.meta.height * res.meta.width
        out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = _cpu_seconds() - cpu0
    if cluster is not None:
        cluster.close()
    out["peak_rss_gib"] = rss.peak / 2**30
    out["mpx_per_s"] = n / 1e6 / out["seconds"]
    out["gigapixels"] = n / 1e9
    return out


def _lookup_pack(block, table):
    """Labels of a block by table lookup, packed two per byte: the least work per pixel."""
    import numpy as np

    block = np.ascontiguousarray(block)
    packed = np.empty((block.shape[0], (block.shape[1] + 1) // 2), np.uint8)
    _lookup_kernel()(block, table, packed)
    return packed.shape


_kernel = []


def _lookup_kernel():
    if not _kernel:
        import numba
        import numpy as np

        @numba.njit(nogil=True, cache=False)
        def kernel(block, table, packed):
            h, w = block.shape[0], block.shape[1]
            for y in range(h):
                row = block[y]
                out = packed[y]
                for x2 in range(w // 2):
                    x = 2 * x2
                    a = table[
                        (np.int64(row[x, 0]) << 16)
                        | (np.int64(row[x, 1]) << 8)
                        | np.int64(row[x, 2])
                    ]
                    b = table[
                        (np.int64(row[x + 1, 0]) << 16)
                        | (np.int64(row[x + 1, 1]) << 8)
                        | np.int64(row[x + 1, 2])
                    ]
                    out[x2] = (a << 4) | b
                if w & 1:
                    out[w // 2] = (
                        table[
                            (np.int64(row[w - 1, 0]) << 16)
                            | (np.int64(row[w - 1, 1]) << 8)
                            | np.int64(row[w - 1, 2])
                        ]
                        << 4
                    )

        _kernel.append(kernel)
    return _kernel[0]


def main() -> None:
    ap = argparse.ArgumentParser(description="kquant gigapixel benchmark")
    ap.add_argument("source")
    ap.add_argument("--runs", default="read,default,exact,cluster1,cluster2")
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(_one(a.one, a.source, a.k, a.chunk)))
        return
    results = []
    for what in a.runs.split(","):
        p = subprocess.run(
            [
                sys.executable,
                __file__,
                a.source,
                "--one",
                what,
                "-k",
                str(a.k),
                "--chunk",
                str(a.chunk),
            ],
            capture_output=True,
            text=True,
        )
        if p.returncode:
            print(f"{what}: FAILED\n{p.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        results.append(r)
        print(json.dumps(r), flush=True)
    floor = next((r["seconds"] for r in results if r["run"] == "read"), None)
    cpu_floor = next((r["cpu_seconds"] for r in results if r["run"] == "read"), None)
    print(
        "\n| run | Gpx | seconds | Mpx/s | x read pass | CPU s | x read CPU | peak RSS GiB "
        "| PSNR | stages (s) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        ratio = f"{r['seconds'] / floor:.2f}" if floor else "-"
        psnr = f"{r['psnr']:.2f}" if r.get("psnr") else "-"
        stages = ", ".join(f"{k} {v}" for k, v in r["stages"].items() if k != "total")
        cratio = f"{r['cpu_seconds'] / cpu_floor:.2f}" if cpu_floor else "-"
        print(
            f"| {r['run']} | {r['gigapixels']:.2f} | {r['seconds']:.1f} | {r['mpx_per_s']:.1f} | "
            f"{ratio} | {r['cpu_seconds']:.1f} | {cratio} | {r['peak_rss_gib']:.2f} | {psnr} "
            f"| {stages} |"
        )
    c1 = next((r for r in results if r["run"] == "cluster1"), None)
    c2 = next((r for r in results if r["run"] == "cluster2"), None)
    if c1 and c2:
        print(f"\n2 workers / 1 worker throughput: {c2['mpx_per_s'] / c1['mpx_per_s']:.2f}x")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
