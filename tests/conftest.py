"""Fixtures shared by the whole suite.

* images: ``china`` (scikit-learn's photo), ``photo_png`` (a photo-like PNG);
* ``harness``: one ``prefect_test_harness`` (a temporary API server and database) for the
  whole session, for flows run in-process;
* ``prefect_stack``: one real ``prefect server start`` on 127.0.0.1 and a real process
  worker, both started by ``deploy/serve.sh`` in a temporary PREFECT_HOME, with
  ``deploy/prefect.yaml`` deployed by ``deploy/deploy.sh``; everything it started is
  stopped at the end of the session.

Nothing here mocks Prefect or dask.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Before Prefect is imported anywhere: a private PREFECT_HOME (profiles, the result storage
# that holds cached fits), no telemetry, no scheduler address of the user's.
_HOME = tempfile.mkdtemp(prefix="kquant-test-prefect-home-")
os.environ["PREFECT_HOME"] = _HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("DASK_SCHEDULER_ADDRESS", None)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

from helpers import free_port, photo_like, prefect_client, wait_for, write_png  # noqa: E402  (after PREFECT_HOME)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HOME, ignore_errors=True)


# --------------------------------------------------------------------------- images


@pytest.fixture(scope="session")
def china() -> np.ndarray:
    import imageio.v3 as iio
    import sklearn

    return iio.imread(Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg")


@pytest.fixture(scope="session")
def china_path() -> Path:
    import sklearn

    return Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg"


@pytest.fixture
def photo_png(tmp_path) -> tuple[Path, np.ndarray]:
    import imageio.v3 as iio

    img = photo_like(150, 213, seed=3)
    path = tmp_path / "photo.png"
    iio.imwrite(path, img)
    return path, img


# --------------------------------------------------------------------------- in-process


@pytest.fixture(scope="session")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def client(harness):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        yield c


# --------------------------------------------------------------------------- real server + worker


def stop_tree(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a process started in its own session and everything under it.

    TERM to the process group and to every descendant (flow-run processes
    started by the worker live in their own sessions), then KILL whatever is
    still alive after ``timeout`` (``prefect worker start`` can ignore TERM).
    """
    import psutil

    try:
        root = psutil.Process(proc.pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    psutil.wait_procs(alive, timeout=5)
    proc.wait(timeout=5)


class PrefectStack:
    """What ``prefect_stack`` started, and how to talk to it."""

    def __init__(self, root: Path, port: int, env: dict, proc: subprocess.Popen):
        self.root, self.port, self.env, self.proc = root, port, env, proc
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.inbox, self.outbox = root / "inbox", root / "outbox"
        self.log = root / "serve.log"

    def prefect(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "prefect"), *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def client(self):
        """A sync Prefect client for this server (use as a context manager)."""
        return prefect_client(self.api_url)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory):
    """deploy/serve.sh (server on 127.0.0.1 + process worker), then deploy/deploy.sh."""
    root = tmp_path_factory.mktemp("prefect-stack")
    port = free_port()
    home = root / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "5",
            "KQUANT_PREFECT_PORT": str(port),
            "PREFECT": str(BIN / "prefect"),
            "KQUANT_INBOX": str(root / "inbox"),
            "KQUANT_OUTBOX": str(root / "outbox"),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    # images already in the inbox when the inbox deployment is created
    (root / "inbox").mkdir()
    for i in range(2):
        write_png(
            root / "inbox" / f"scan-{i}.png", photo_like(72, 96, seed=20 + i), age_seconds=120
        )

    log = open(root / "serve.log", "wb")
    proc = subprocess.Popen(
        [str(REPO / "deploy" / "serve.sh")],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack = PrefectStack(root, port, env, proc)
    try:

        def worker_ready():
            if proc.poll() is not None:
                raise AssertionError(f"serve.sh exited with {proc.returncode}\n{stack.log_tail()}")
            return "started" in stack.log_tail(200) and "Worker" in stack.log_tail(200)

        wait_for(worker_ready, 120, "the Prefect server and worker", stack)
        t0 = time.monotonic()
        out = subprocess.run(
            [str(REPO / "deploy" / "deploy.sh")],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        stack.deploy_seconds = time.monotonic() - t0
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        yield stack
    finally:
        stop_tree(proc, timeout=8)
        log.close()
