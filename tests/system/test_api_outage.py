"""`python -m flows.quantize` against a real `prefect server start` that is killed mid-run.

One server (127.0.0.1, its own PREFECT_HOME and SQLite database) for the module; the
outage test kills it with SIGKILL while the flow runs and restarts it on the same port
and database later. The flow runs are real subprocesses; their states and logs are read
back from the API.

The flow processes run with ``PREFECT_CLIENT_MAX_RETRIES=2`` (2 + 4 s of back-off per
request) so that a 20 s outage outlasts the client's retries, as a longer outage outlasts
the retries the flows set (flows.report.CLIENT_MAX_RETRIES: about 8.5 minutes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faultkit as tf
import pytest
from helpers import prefect_client, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("prefect-outage"))
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _flow_cli(server: Server, log_dir: Path, name: str, *args) -> subprocess.Popen:
    """``python -m flows.quantize ARGS`` against the server (stdout, stderr to files)."""
    env = dict(server.env, PREFECT_CLIENT_MAX_RETRIES="2")
    out, err = open(log_dir / f"{name}.out", "wb"), open(log_dir / f"{name}.err", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.quantize", *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=err,
        start_new_session=True,
    )
    out.close()
    err.close()
    proc.stderr_path = log_dir / f"{name}.err"
    proc.stdout_path = log_dir / f"{name}.out"
    return proc


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    try:
        proc.wait(timeout=timeout)
    finally:
        tf.stop(proc)
    return (
        proc.returncode,
        proc.stdout_path.read_text(errors="replace"),
        proc.stderr_path.read_text(errors="replace"),
    )


def _run_name(stderr: str) -> str:
    """The flow run's name, from Prefect's "Beginning flow run 'NAME'" line."""
    line = next(ln for ln in stderr.splitlines() if "Beginning flow run '" in ln)
    return line.split("Beginning flow run '", 1)[1].split("'", 1)[0]


def _store_complete(target: Path) -> bool:
    from kquant.errors import KquantError
    from kquant.store import read_meta

    try:
        return (target / "zarr.json").exists() and read_meta(target).complete
    except KquantError:
        return False


def _stamps(root: Path) -> dict:
    return {
        p.relative_to(root).as_posix(): p.stat().st_mtime_ns
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("quantize-image: error:")]


REPO = Path(__file__).resolve().parents[2]


class Server:
    """A `prefect server start` that can be killed and started again on its port and home."""

    def __init__(self, root: Path):
        from helpers import free_port

        self.root, self.port = root, free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.pop("DASK_SCHEDULER_ADDRESS", None)
        self.env.update(
            {
                "PREFECT_HOME": str(root / "home"),
                "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "1",
                "OMP_NUM_THREADS": "1",
            }
        )
        (root / "home").mkdir()
        self.proc, self.starts = None, 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.root / f"server-{self.starts}.log", "wb")
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
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for(self.healthy, 120, "the Prefect server to answer", self)

    def healthy(self) -> bool:
        import urllib.request

        if self.proc.poll() is not None:
            raise AssertionError(
                f"prefect server exited with {self.proc.returncode}\n" + self.log_tail()
            )
        try:
            with urllib.request.urlopen(self.api_url + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL to the server and everything in its session (a crash)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            from helpers import stop_group

            stop_group(self.proc, timeout=15)

    def log_tail(self, n: int = 40) -> str:
        path = self.root / f"server-{self.starts}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])

    def client(self):
        """A sync Prefect client for this server (use as a context manager)."""
        return prefect_client(self.api_url)

    def runs(self) -> dict:
        """Flow run name -> (state type, state message), of every run on the server."""
        with self.client() as c:
            return {r.name: (r.state.type.value, r.state.message) for r in c.read_flow_runs()}

    def logs(self, run_name: str) -> list[str]:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        with self.client() as c:
            run = next(r for r in c.read_flow_runs() if r.name == run_name)
            return [
                lg.message
                for lg in c.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
                )
            ]


BIN = Path(sys.executable).parent


def test_server_killed_mid_run_then_restarted_the_run_completes_and_a_rerun_is_already_done(
    server, tmp_path
):
    """The store is complete and verified, the flow process exits 0, the run is Completed on
    the restarted server; the same run again ends Completed "already done" without touching
    the store; other parameters are refused in one line."""
    src = tf.make_source(tmp_path / "mosaic.tif")
    target = tmp_path / "mosaic.kquant"
    args = (src, target, "-k", "16", "--restarts", "0", "--seed", "3")
    flow = _flow_cli(server, tmp_path, "run", *args)
    try:
        # the run is on the server: kill the server before any task has started
        wait_for(
            lambda: "RUNNING" in {s for s, _ in server.runs().values()},
            120,
            "the flow run to be Running",
            server,
        )
        server.kill()
        # the whole run happens during the outage, which lasts well past the client's
        # retries of the report and of the final state (2 + 4 s each)
        tf.wait_until(lambda: _store_complete(target), 240, "the store to be complete", flow)
        time.sleep(20)
        alive_at_restart = flow.poll() is None
        server.start()
        rc, out, err = _finish(flow)
    finally:
        tf.stop(flow)
    assert rc == 0, f"flow exited {rc} (alive at the restart: {alive_at_restart})\n{err[-4000:]}"
    assert f"store      {target}" in out
    assert "does not answer" in err and "answers again" in err  # it waited for the API
    p = subprocess.run(
        [sys.executable, "-m", "kquant", "info", "--verify", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        env=tf.run_env(),
    )
    assert p.returncode == 0 and "checksum verified" in p.stdout, p.stderr
    name = _run_name(err)
    state, message = server.runs()[name]
    assert state == "COMPLETED", (state, message)

    # the same source and parameters again: "already done", the store untouched
    stamps, files = _stamps(target), tf.files(target)
    rc, out, err = _finish(_flow_cli(server, tmp_path, "rerun", *args))
    assert rc == 0, err[-3000:]
    assert "already done" in out and f"store      {target}" in out
    assert server.runs()[_run_name(err)][0] == "COMPLETED"
    assert _stamps(target) == stamps and tf.files(target) == files

    # other parameters: refused in one line, the store untouched
    rc, out, err = _finish(_flow_cli(server, tmp_path, "other-k", src, target, "-k", "8"))
    assert rc == 1
    assert len(_error_lines(err)) == 1 and "exists" in _error_lines(err)[0], err[-3000:]
    assert "Traceback" not in err
    assert server.runs()[_run_name(err)][0] == "FAILED"
    assert _stamps(target) == stamps and tf.files(target) == files


def test_a_user_error_is_one_line_in_the_run_logs_without_a_traceback(server, tmp_path):
    """A missing source: the run ends Failed with the reason; its logs on the server hold
    the one-line reason and no traceback; the command prints one error line, exit 1."""
    missing = tmp_path / "no-such.png"
    rc, out, err = _finish(_flow_cli(server, tmp_path, "missing", missing, tmp_path / "out.kquant"))
    assert rc == 1
    lines = _error_lines(err)
    assert lines == [f"quantize-image: error: no such file: {missing}"], err[-3000:]
    assert "Traceback" not in err
    name = _run_name(err)
    state, message = server.runs()[name]
    assert state == "FAILED" and message == f"no such file: {missing}"
    logs = wait_for(
        lambda: (
            (lg := server.logs(name)) and any("Finished in state Failed" in m for m in lg) and lg
        ),
        30,
        "the run's logs",
        server,
    )
    assert f"quantize-image failed: no such file: {missing}" in logs
    assert not [m for m in logs if "Traceback" in m or "\n" in m], logs
    assert not (tmp_path / "out.kquant").exists()
