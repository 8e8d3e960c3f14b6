"""The inbox's throughput: 44 small images (the 11 smallest bench photos, 4 copies each)
quantized at K=16, as a new user would run them on this machine.

    .venv/bin/python bench/inbox.py [--work DIR] [--only NAME,...]

Each way starts from an empty outbox (nothing cached: a fresh PREFECT_HOME per way):

* ``cli-loop``: ``kquant quantize`` in a shell loop, a process per image (no preview);
  ``cli-loop-preview``: the same with ``--preview`` (what the batch does by default);
* ``pngquant``: ``pngquant 16`` in a shell loop (if installed);
* ``batch-ephemeral``: ``python -m flows.batch inbox outbox`` with Prefect's ephemeral API
  (started by the command: what the issue measured);
* ``batch-server``: the same flow reporting to a running ``prefect server`` on 127.0.0.1
  (its start not counted), previews on / off;
* ``batch-cluster``: the same, on a running 2-worker dask cluster (``DASK_SCHEDULER_ADDRESS``;
  ``--cluster-threads 1,4``: threads per worker, one run each);
* ``task-overhead``: 200 no-op Prefect tasks on the server, through the batch's task runner
  and through a ``DaskTaskRunner`` of in-process threads: the cost of a task run.

Prints one markdown row per way: wall seconds, seconds per image, and the CPU seconds of the
command's processes over its wall time (2.0 = both cores busy; the Prefect server's own CPU
is not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPIES = 4


def photos(n: int = 11) -> dict[str, np.ndarray]:
    sys.path.insert(0, str(REPO / "bench" / "quality"))
    from run import images

    imgs = images()
    return dict(sorted(imgs.items(), key=lambda kv: kv[1].shape[0] * kv[1].shape[1])[:n])


def make_inbox(folder: Path) -> list[Path]:
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    old = time.time() - 3600
    for name, img in photos().items():
        first = folder / f"{name}-0.png"
        iio.imwrite(first, img)
        for c in range(1, COPIES):
            shutil.copyfile(first, folder / f"{name}-{c}.png")
        for c in range(COPIES):
            p = folder / f"{name}-{c}.png"
            os.utime(p, (old, old))
            out.append(p)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds() -> float:
    """CPU seconds (user + system) of the finished child processes of this one."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd, env, cwd=None, shell=False) -> tuple[float, float]:
    """Wall and CPU seconds of a command (its process tree; not the Prefect server's)."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=cwd, shell=shell, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    if out.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return wall, cpu


def base_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        OMP_NUM_THREADS="1",
        PREFECT_LOGGING_LEVEL="WARNING",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


class Server:
    def __init__(self, work: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.env = base_env(work / "server-home")
        self.env["PREFECT_API_URL"] = self.url
        (work / "server-home").mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                str(BIN / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=self.env,
            stdout=open(work / "server.log", "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("prefect server did not start") from None
                time.sleep(0.5)

    def cpu(self) -> float:
        """CPU seconds so far of the server's processes (its session)."""
        tick, total = os.sysconf("SC_CLK_TCK"), 0.0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.proc.pid:  # session id (start_new_session)
                total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


class Cluster:
    def __init__(self, work: Path, env: dict, nworkers: int = 2, nthreads: int = 1):
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        dask = str(BIN / "dask")
        self.procs = [
            subprocess.Popen(
                [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                env=env,
                stdout=open(work / "sched.log", "wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
            subprocess.Popen(
                [
                    dask,
                    "worker",
                    self.address,
                    "--nworkers",
                    str(nworkers),
                    "--nthreads",
                    str(nthreads),
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                    "--local-directory",
                    str(work),
                ],
                env=env,
                stdout=open(work / "workers.log", "wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
        ]
        from distributed import Client

        deadline = time.time() + 120
        while True:
            try:
                with Client(self.address, timeout="2s") as c:
                    if len(c.scheduler_info()["workers"]) == nworkers:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("dask cluster did not start")
            time.sleep(0.5)

    def stop(self):
        for p in reversed(self.procs):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)


OVERHEAD = r"""
import sys, time
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect_dask import DaskTaskRunner
from flows.batch import task_runner

@task(cache_policy=NO_CACHE)
def noop(i):
    return i

def timed_flow(runner):
    @flow(task_runner=runner)
    def overhead(n: int):
        t0 = time.perf_counter()
        futures = [noop.submit(i) for i in range(n)]
        [f.result() for f in futures]
        return time.perf_counter() - t0
    return overhead

n = int(sys.argv[1])
local = {"n_workers": 2, "threads_per_worker": 1, "processes": False, "protocol": "tcp://",
         "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
for name, runner in (("batch", task_runner()), ("dask", DaskTaskRunner(cluster_kwargs=local))):
    print(name, timed_flow(runner)(n))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None)
    ap.add_argument("--only", default=None, help="comma-separated ways")
    ap.add_argument(
        "--cluster-threads", default="1", help="threads per worker of batch-cluster (e.g. 1,4)"
    )
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="kquant-inbox-bench-"))
    inbox = work / "inbox"
    images = make_inbox(inbox)
    n = len(images)
    only = set(a.only.split(",")) if a.only else None
    rows = []

    def want(name):
        return only is None or name in only

    def row(name, wall, cpu, note=""):
        rows.append((name, wall, cpu, note))
        print(f"| {name} | {wall:.1f} | {wall / n:.2f} | {cpu / wall:.2f} | {note} |", flush=True)

    def fresh(name) -> tuple[Path, dict]:
        out = work / f"out-{name}"
        shutil.rmtree(out, ignore_errors=True)
        home = work / f"home-{name}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        return out, base_env(home)

    print(f"{n} images in {inbox}; machine: {os.cpu_count()} cores")
    print("| way | wall s | s per image | cores busy | note |\n|---|---|---|---|---|")
    if want("cli-loop"):
        out, env = fresh("cli")
        out.mkdir()
        script = (
            f'for f in {inbox}/*.png; do {BIN}/kquant quantize "$f" '
            f'"{out}/$(basename "$f").kquant" -k 16 || exit 1; done'
        )
        row("`kquant quantize` loop", *timed(script, env, shell=True), "a process per image")
    if want("cli-loop-preview"):
        out, env = fresh("cli-preview")
        out.mkdir()
        script = (
            f'for f in {inbox}/*.png; do b="{out}/$(basename "$f")"; '
            f'{BIN}/kquant quantize "$f" "$b.kquant" -k 16 --preview "$b-preview.png" '
            "|| exit 1; done"
        )
        row(
            "`kquant quantize --preview` loop",
            *timed(script, env, shell=True),
            "a process per image",
        )
    if want("pngquant") and shutil.which("pngquant"):
        out, env = fresh("pngquant")
        out.mkdir()
        script = (
            f'for f in {inbox}/*.png; do pngquant --force --output "{out}/$(basename "$f")" '
            '16 "$f" || exit 1; done'
        )
        row("pngquant loop", *timed(script, env, shell=True), "pngquant 16, a process per image")
    batch = [sys.executable, "-m", "flows.batch", str(inbox)]
    if want("batch-ephemeral"):
        out, env = fresh("ephemeral")
        row(
            "`python -m flows.batch` (ephemeral API)",
            *timed(batch + [str(out)], env, cwd=REPO),
            "starts its own API server",
        )
    server = None
    if any(
        want(w)
        for w in ("batch-server", "batch-server-nopreview", "batch-cluster", "task-overhead")
    ):
        server = Server(work)
    try:
        if want("batch-server"):
            out, env = fresh("server")
            env["PREFECT_API_URL"] = server.url
            c0 = server.cpu()
            wall, cpu = timed(batch + [str(out)], env, cwd=REPO)
            row(
                "batch on a running server",
                wall,
                cpu,
                f"previews (as the deployment); server CPU {server.cpu() - c0:.1f} s",
            )
        if want("batch-server-nopreview"):
            out, env = fresh("server-np")
            env["PREFECT_API_URL"] = server.url
            code = (
                "import sys; from flows.batch import quantize_batch; "
                "quantize_batch(sys.argv[1], sys.argv[2], preview=False, settle_seconds=0)"
            )
            row(
                "batch on a running server, no previews",
                *timed([sys.executable, "-c", code, str(inbox), str(out)], env, cwd=REPO),
                "",
            )
        for nthreads in [int(t) for t in a.cluster_threads.split(",")]:
            if not want("batch-cluster"):
                break
            out, env = fresh(f"cluster-{nthreads}")
            env["PREFECT_API_URL"] = server.url
            cluster = Cluster(work, env, nthreads=nthreads)
            try:
                env["DASK_SCHEDULER_ADDRESS"] = cluster.address
                c0 = server.cpu()
                wall, cpu = timed(batch + [str(out)], env, cwd=REPO)
                row(
                    f"batch on a running server, 2-worker cluster, {nthreads} thread(s) each",
                    wall,
                    cpu,
                    f"`dask worker --nworkers 2 --nthreads {nthreads}`; "
                    f"server CPU {server.cpu() - c0:.1f} s",
                )
            finally:
                cluster.stop()
        if want("task-overhead"):
            _, env = fresh("overhead")
            env["PREFECT_API_URL"] = server.url
            m = 200
            out = subprocess.run(
                [sys.executable, "-c", OVERHEAD, str(m)],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            )
            for line in out.stdout.strip().splitlines()[-2:]:
                name, seconds = line.split()
                what = "the batch's task runner" if name == "batch" else "DaskTaskRunner, threads"
                print(
                    f"task-run overhead ({what}): {m} no-op tasks in {float(seconds):.2f} s = "
                    f"{1000 * float(seconds) / m:.1f} ms per task run"
                )
    finally:
        if server is not None:
            server.stop()
    print(json.dumps([r[:3] for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
