"""The same job on real `dask scheduler` / `dask worker` processes gives the same store."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from helpers import dask_processes, files, free_port, photo_like

import kquant
from kquant import QuantizeParams


@pytest.fixture(scope="module")
def scheduler_address(tmp_path_factory):
    with dask_processes(tmp_path_factory.mktemp("dask"), timeout=60) as (address, _):
        yield address


@pytest.mark.parametrize("mode", ["exact", "sample"])
def test_cluster_store_is_byte_identical_to_local(tmp_path, scheduler_address, mode):
    img = photo_like(300, 356, seed=11)
    src = tmp_path / "t.tif"
    tifffile.imwrite(src, img, tile=(64, 64), compression="zlib", photometric="rgb")
    params = QuantizeParams(k=12, chunk=128, mode=mode, sample_size=4000, restarts=1)
    kquant.quantize(src, tmp_path / "local.kq", params)
    res = kquant.quantize(src, tmp_path / "cluster.kq", params, address=scheduler_address)
    assert res.meta.complete
    assert files(tmp_path / "local.kq") == files(tmp_path / "cluster.kq")


def test_write_progress_on_a_cluster(tmp_path, scheduler_address):
    """A callable progress hears each block the cluster wrote, (n, n) last."""
    from kquant import pipeline

    src = tmp_path / "p.tif"
    tifffile.imwrite(src, photo_like(128, 192, seed=4), tile=(64, 64), photometric="rgb")
    palette = pipeline.fit(str(src), QuantizeParams(k=4)).palette
    calls = []
    pipeline.write(
        str(src),
        tmp_path / "p.kq",
        palette,
        QuantizeParams(k=4, chunk=64),
        address=scheduler_address,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert [d for d, _ in calls] == list(range(7)) and {t for _, t in calls} == {6}


@pytest.mark.parametrize("mode", ["exact", "sample"])
def test_sample_fit_on_a_cluster_overlaps_dask_ml_import_and_is_identical(
    tmp_path, scheduler_address, monkeypatch, mode
):
    """With dask-ml's sample fit, the client prepares dask-ml while the workers read."""
    from kquant import fit as fit_mod

    img = photo_like(256, 300, seed=12)
    src = tmp_path / "t.tif"
    tifffile.imwrite(src, img, tile=(64, 64), compression="zlib", photometric="rgb")
    params = QuantizeParams(
        k=8, chunk=128, mode=mode, sample_size=3000, restarts=0, sample_fit="always"
    )
    calls = []
    real = fit_mod.prepare_sample_fit
    monkeypatch.setattr(fit_mod, "prepare_sample_fit", lambda: calls.append(1) or real())
    kquant.quantize(src, tmp_path / "local.kq", params)
    assert not calls  # local threads: no overlap (GIL contention measured slower)
    res = kquant.quantize(src, tmp_path / "cluster.kq", params, address=scheduler_address)
    assert calls == [1] and res.fit.sample_inertia is not None
    assert files(tmp_path / "local.kq") == files(tmp_path / "cluster.kq")


def test_warm_workers_runs_once_on_every_worker(tmp_path, scheduler_address):
    from helpers import poll

    from kquant import cluster

    d = str(tmp_path)  # a lambda: pickled by value (the workers cannot import this module)
    mark = lambda: __import__("pathlib").Path(d, str(__import__("os").getpid())).touch()  # noqa

    with cluster.scheduler(None):
        assert cluster.warm_workers(mark) == 0
    with cluster.scheduler(scheduler_address) as client:
        pids = set(client.run(os.getpid).values())
        assert cluster.warm_workers(mark) == len(pids) == 2
    # fire and forget: the tasks run even though the client has gone
    marked = poll(
        lambda: {int(p.name) for p in tmp_path.iterdir()} == pids or None,
        30,
        "every worker to run the warm-up",
        interval=0.1,
    )
    assert marked


def test_workers_load_the_lookup_table_kernels_while_the_client_fits(
    tmp_path, scheduler_address, monkeypatch
):
    from distributed import Client

    monkeypatch.setattr("kquant.pipeline.plan.LUT_MIN_PIXELS", 0)  # the table path on a small image
    img = photo_like(200, 264, seed=13)
    src = tmp_path / "t.tif"
    tifffile.imwrite(src, img, tile=(64, 64), compression="zlib", photometric="rgb")
    params = QuantizeParams(k=10, chunk=128, mode="sample", sample_size=3000, restarts=0)
    kquant.quantize(src, tmp_path / "local.kq", params)
    res = kquant.quantize(src, tmp_path / "cluster.kq", params, address=scheduler_address)
    assert res.meta.metrics["assign"] == "lut"
    assert files(tmp_path / "local.kq") == files(tmp_path / "cluster.kq")
    with Client(scheduler_address) as c:
        keys = c.run_on_scheduler(
            lambda dask_scheduler: [str(t[0]) for t in list(dask_scheduler.transition_log)]
        )
        workers = list(c.scheduler_info()["workers"])
    warmed = {k for k in keys if k.startswith("kquant-warm-")}
    assert {w for w in workers if any(k.startswith(f"kquant-warm-{w}-") for k in warmed)} == set(
        workers
    )


def test_cli_uses_dask_scheduler_address(tmp_path, scheduler_address, photo_png):
    from distributed import Client

    path, img = photo_png
    env = dict(os.environ, DASK_SCHEDULER_ADDRESS=scheduler_address)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "kquant",
            "quantize",
            str(path),
            str(tmp_path / "s.kq"),
            "-k",
            "6",
            "--chunk",
            "64",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    st = kquant.open_store(tmp_path / "s.kq")
    d = ((img[:, :, None, :].astype(int) - st.palette[None, None].astype(int)) ** 2).sum(-1)
    assert np.array_equal(st.labels.compute(), d.argmin(-1))
    with Client(scheduler_address) as c:  # the scheduler ran the write tasks
        keys = c.run_on_scheduler(
            lambda dask_scheduler: [str(t[0]) for t in list(dask_scheduler.transition_log)]
        )
    assert any("_assign_write_block" in k for k in keys)


def test_unreachable_scheduler_is_a_clear_error(tmp_path, photo_png):
    path, _ = photo_png
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "kquant",
            "quantize",
            str(path),
            str(tmp_path / "s.kq"),
            "--address",
            f"tcp://127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert (
        p.stderr.strip().splitlines()[-1].startswith("kquant: error: cannot reach dask scheduler")
    )
    assert not (tmp_path / "s.kq").exists()


def test_cli_scheduler_file_option_and_environment(tmp_path, scheduler_address, photo_png):
    """--scheduler-file (and $DASK_SCHEDULER_FILE) run the job on the cluster the file names,
    as a batch script's `dask scheduler --scheduler-file F` writes it; a file without an
    address is one line, exit 2."""
    import json

    from distributed import Client

    path, _ = photo_png
    sched = tmp_path / "scheduler.json"
    sched.write_text(json.dumps({"type": "Scheduler", "address": scheduler_address}))
    base = [sys.executable, "-m", "kquant", "quantize", str(path)]
    opts = ["-k", "6", "--chunk", "64"]
    with Client(scheduler_address) as c:
        c.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_log.clear())
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    for target, extra, run_env in (
        ("f.kq", ["--scheduler-file", str(sched)], env),
        ("e.kq", [], dict(env, DASK_SCHEDULER_FILE=str(sched))),
    ):
        p = subprocess.run(
            base + [str(tmp_path / target)] + opts + extra,
            capture_output=True,
            text=True,
            env=run_env,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr
        with Client(scheduler_address) as c:
            keys = c.run_on_scheduler(
                lambda dask_scheduler: [str(t[0]) for t in list(dask_scheduler.transition_log)]
            )
            c.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_log.clear())
        assert any("_assign_write_block" in k for k in keys), target
    assert files(tmp_path / "f.kq") == files(tmp_path / "e.kq")

    (tmp_path / "empty.json").write_text("{}")
    p = subprocess.run(
        base + [str(tmp_path / "x.kq"), "--scheduler-file", str(tmp_path / "empty.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "cannot read dask scheduler file" in p.stderr and not (tmp_path / "x.kq").exists()


_MMAPPED_PROBE = r"""
import ctypes, os
import numpy as np

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

def mapped_blocks_of_1mib():
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    before = libc.mallinfo2().hblks
    a = np.ones(1 << 20, np.uint8)
    grown = libc.mallinfo2().hblks - before
    del a
    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), grown
"""


def test_write_pass_relaxes_the_nanny_malloc_setting_on_workers(tmp_path, scheduler_address):
    """A dask nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which makes glibc mmap
    every numpy temporary over 128 KiB (the fit ran at half speed there); after a write pass
    on the cluster a 1 MiB array comes from the heap again in every worker."""
    from distributed import Client

    # the probe tells: a plain process with the nanny's setting maps the 1 MiB array
    control = subprocess.run(
        [sys.executable, "-c", _MMAPPED_PROBE + "\nprint(mapped_blocks_of_1mib()[1])"],
        env={**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert control.stdout.strip() == "1"

    src = tmp_path / "m.tif"
    tifffile.imwrite(src, photo_like(256, 256, seed=5), tile=(64, 64), photometric="rgb")
    kquant.quantize(
        src, tmp_path / "m.kq", QuantizeParams(k=8, chunk=64), address=scheduler_address
    )
    with Client(scheduler_address, timeout="15s") as client:
        # builtins pickle by reference: the probe's source travels as a string
        expr = f"exec({_MMAPPED_PROBE!r}, g := {{}}) or g['mapped_blocks_of_1mib']()"
        seen = client.run(eval, expr)
    assert seen and all(env == "65536" for env, _ in seen.values()), seen
    assert all(grown == 0 for _, grown in seen.values()), seen


def test_batch_sends_its_pixel_work_to_the_cluster_as_dask_tasks(
    harness, tmp_path, scheduler_address, monkeypatch
):
    """With $DASK_SCHEDULER_ADDRESS the batch keeps Prefect's task runs on its thread pool
    and runs each step's pixel work as a dask task on the workers: the stores equal the
    library's, the workers executed the steps, the log names the cluster."""
    from distributed import Client
    from helpers import write_png
    from prefect.task_runners import ThreadPoolTaskRunner

    import flows.batch as batch

    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", scheduler_address)
    assert isinstance(batch.task_runner(), ThreadPoolTaskRunner)
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    for i in range(3):
        write_png(inbox / f"c{i}.png", photo_like(48, 64, seed=90 + i), age_seconds=60)

    def on_worker_tasks():  # dask tasks of flows.pixels.on_worker that finished, ever
        with Client(scheduler_address, timeout="15s") as c:
            return c.run_on_scheduler(
                lambda dask_scheduler: (
                    dask_scheduler.task_prefixes["on_worker"].state_counts["memory"]
                    if "on_worker" in dask_scheduler.task_prefixes
                    else 0
                )
            )

    before = on_worker_tasks()
    flow = batch.quantize_batch.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=batch.CLUSTER_TASK_THREADS)
    )
    state = flow(
        inbox=str(inbox),
        outbox=str(outbox),
        params=QuantizeParams(k=6, seed=1),
        settle_seconds=0,
        return_state=True,
    )
    assert state.is_completed(), state.message
    # inspect, fit, write, verify, preview of each image, each a dask task
    assert on_worker_tasks() - before == 3 * 5
    for i in range(3):
        kquant.quantize(inbox / f"c{i}.png", tmp_path / f"lib{i}.kq", QuantizeParams(k=6, seed=1))
        mine, lib = outbox / f"c{i}.png.kquant", tmp_path / f"lib{i}.kq"
        assert files(mine, but=("zarr.json",)) == files(lib, but=("zarr.json",))
        assert (outbox / f"c{i}.png-preview.png").is_file()


def test_local_only_ignores_the_scheduler_address(monkeypatch):
    """Work already placed on a worker never opens a client to a cluster."""
    from kquant import cluster

    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", f"tcp://127.0.0.1:{free_port()}")
    with cluster.local_only(), cluster.scheduler() as client:
        assert client is None
    with pytest.raises(kquant.KquantError, match="cannot reach dask scheduler"):
        with cluster.scheduler():
            pass
