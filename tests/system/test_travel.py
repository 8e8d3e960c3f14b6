"""Code that travels: a worker on "another machine" runs the deployments through the pull
steps of deploy/prefect.yaml.

A second real Prefect server on 127.0.0.1 (its own PREFECT_HOME); this repository's
committed HEAD served by ``git daemon`` on 127.0.0.1; ``deploy/deploy.sh`` with
``KQUANT_REPOSITORY``/``KQUANT_REF`` set; a process worker started in an empty temporary
directory with its own PREFECT_HOME and no checkout anywhere near it. The flow run clones
the repository, installs deploy/requirements.txt (already satisfied here) and runs the
flows from the clone: the entrypoint ``flows/quantize.py`` exists nowhere else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, stop_tree
from helpers import free_port, photo_like, prefect_client, wait_for, write_png

BIN = Path(sys.executable).parent
POOL = "travel"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def test_requirements_file_is_the_flows_dependencies():
    """deploy/requirements.txt (what the pull steps install) = kquant[flows,s3,aws,geo]'s deps."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    want = project["dependencies"] + extras["flows"] + extras["s3"] + extras["aws"] + extras["geo"]
    want = list(dict.fromkeys(want))  # the aws extra spells out flows and s3 again
    lines = (REPO / "deploy" / "requirements.txt").read_text().splitlines()
    assert [ln for ln in lines if ln and not ln.startswith("#")] == want


class Travel:
    """The second server, the served repository, and how to deploy and run workers."""

    def __init__(self, root: Path, api_url: str, env: dict, repository: str):
        self.root, self.api_url, self.env, self.repository = root, api_url, env, repository

    def deploy(self, *args: str, **extra_env: str) -> float:
        t0 = time.monotonic()
        env = dict(self.env, KQUANT_REPOSITORY=self.repository, KQUANT_REF="travel", **extra_env)
        out = subprocess.run(
            [str(REPO / "deploy" / "deploy.sh"), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return time.monotonic() - t0

    def worker_once(self, name: str, timeout: float = 240) -> tuple[Path, str]:
        """A process worker in an empty directory with its own PREFECT_HOME; runs one
        flow run (``--run-once``) and exits. Returns its directory and its log."""
        where = self.root / name
        (where / "cwd").mkdir(parents=True)
        (where / "home").mkdir()
        env = {k: v for k, v in self.env.items() if not k.startswith(("KQUANT_", "AWS_"))}
        env.update(PREFECT_HOME=str(where / "home"), OMP_NUM_THREADS="1")
        env.pop("PYTHONPATH", None)
        log = where / "worker.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--run-once"],
                cwd=where / "cwd",
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_tree(proc, timeout=5)
        return where / "cwd", log.read_text(errors="replace")

    def client(self):
        """A sync Prefect client for this server (use as a context manager)."""
        return prefect_client(self.api_url)


@pytest.fixture(scope="module")
def travel(tmp_path_factory):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path_factory.mktemp("travel")
    # the repository at this commit, served by git daemon on 127.0.0.1
    served = root / "served"
    served.mkdir()
    subprocess.run(
        ["git", "clone", "--quiet", "--bare", str(REPO), str(served / "kquant.git")], check=True
    )
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(
        ["git", "-C", str(served / "kquant.git"), "update-ref", "refs/heads/travel", head],
        check=True,
    )
    git_port = free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            f"--port={git_port}",
            f"--base-path={served}",
            str(served),
        ],
        stdout=open(root / "git-daemon.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    port = free_port()
    home = root / "server-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        PREFECT=str(BIN / "prefect"),
        KQUANT_POOL=POOL,
        KQUANT_INBOX=str(root / "inbox"),
        KQUANT_OUTBOX=str(root / "outbox"),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=open(root / "server.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def healthy():
            try:
                with urllib.request.urlopen(env["PREFECT_API_URL"] + "/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(healthy, 120, "the second Prefect server")
        yield Travel(root, env["PREFECT_API_URL"], env, f"git://127.0.0.1:{git_port}/kquant.git")
    finally:
        stop_tree(server, timeout=8)
        stop_tree(daemon, timeout=5)


def _submit(travel: Travel, source: Path, target: Path, k: int) -> str:
    with travel.client() as client:
        dep = client.read_deployment_by_name("quantize-image/adhoc")
        run = client.create_flow_run_from_deployment(
            dep.id,
            parameters={"source": str(source), "target": str(target), "params": {"k": k}},
        )
    return str(run.id)


def _finished(travel: Travel, run_id: str):
    with travel.client() as client:
        return wait_for(
            lambda: (r := client.read_flow_run(run_id)).state.type.value in FINAL and r,
            60,
            "the flow run to finish",
        )


@pytest.mark.slow
def test_a_worker_in_an_empty_directory_runs_the_adhoc_deployment_through_its_pull_steps(
    travel, tmp_path
):
    from kquant.store import open_store

    deploy_seconds = travel.deploy("--name", "adhoc")
    with travel.client() as client:
        dep = client.read_deployment_by_name("quantize-image/adhoc")
    steps = [next(iter(s)) for s in dep.pull_steps]
    assert steps == [
        "prefect.deployments.steps.git_clone",
        "prefect.deployments.steps.pip_install_requirements",
        "prefect.deployments.steps.set_working_directory",
    ]
    assert dep.pull_steps[0]["prefect.deployments.steps.git_clone"]["repository"] == (
        travel.repository
    )

    src = write_png(tmp_path / "lighthouse.png", photo_like(80, 112, seed=31))
    target = tmp_path / "lighthouse.kquant"
    t0 = time.monotonic()
    run_id = _submit(travel, src, target, 9)
    cwd, log = travel.worker_once("worker-a")
    run = _finished(travel, run_id)
    seconds = time.monotonic() - t0
    assert run.state.type.value == "COMPLETED", f"{run.state.message}\n{log[-4000:]}"
    st = open_store(target)
    st.verify()
    assert st.meta.n_colors == 9
    assert list(cwd.iterdir()) == []  # the flow run's clone lived in its own temporary folder
    print(
        f"\nworker in an empty directory, adhoc through the pull steps: {seconds:.1f} s "
        f"(deploy {deploy_seconds:.1f} s)"
    )


@pytest.mark.slow
def test_two_workers_share_the_fit_cache_on_s3_through_blocks(travel, tmp_path):
    """Two workers, each in an empty directory with its own PREFECT_HOME and no AWS_*
    variables: the fit cache lives in an S3Bucket block (credentials from an AwsCredentials
    block, by name) on a moto S3 server; the second run's fit is Cached."""
    from helpers import moto_s3

    from kquant.store import open_store

    with moto_s3(tmp_path, "kquant-cache") as fs:
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "flows.storage",
                "--bucket",
                "kquant-cache",
                "--folder",
                "fits",
                "--credentials",
                "kquant-moto",
                "--region",
                "us-east-1",
                "--endpoint-url",
                endpoint,
            ],
            cwd=REPO,
            env=dict(travel.env, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.strip() == "s3-bucket/kquant-results"
        travel.deploy("--name", "adhoc", KQUANT_RESULT_STORAGE="s3-bucket/kquant-results")
        with travel.client() as client:
            dep = client.read_deployment_by_name("quantize-image/adhoc")
            bucket = client.read_block_document_by_name("kquant-results", "s3-bucket")
        assert dep.job_variables["env"]["KQUANT_RESULT_STORAGE"] == "s3-bucket/kquant-results"
        # the bucket block references the credentials block (not a copy of the keys)
        assert "credentials" in bucket.block_document_references

        src = write_png(tmp_path / "dune.png", photo_like(90, 120, seed=51))
        t0 = time.monotonic()
        first = _submit(travel, src, tmp_path / "a.kquant", 10)
        _, log_a = travel.worker_once("cache-a")
        run_a = _finished(travel, first)
        assert run_a.state.type.value == "COMPLETED", f"{run_a.state.message}\n{log_a[-4000:]}"
        assert fs.ls("kquant-cache/fits")  # the fit, persisted on S3
        second = _submit(travel, src, tmp_path / "b.kquant", 10)
        _, log_b = travel.worker_once("cache-b")
        run_b = _finished(travel, second)
        seconds = time.monotonic() - t0
        assert run_b.state.type.value == "COMPLETED", f"{run_b.state.message}\n{log_b[-4000:]}"
        with travel.client() as client:
            from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

            states = {
                r.name.rsplit("-", 1)[0]: r.state.name
                for r in client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[second]))
                )
            }
    assert states["fit-palette"] == "Cached"
    a, b = open_store(tmp_path / "a.kquant"), open_store(tmp_path / "b.kquant")
    assert (a.palette == b.palette).all()
    # each worker had its own PREFECT_HOME: no local result storage was shared
    assert not (travel.root / "cache-a" / "home" / "storage").exists() or not any(
        (travel.root / "cache-a" / "home" / "storage").iterdir()
    )
    print(f"\ntwo workers, fit cache on S3 from blocks (2 runs): {seconds:.1f} s")
