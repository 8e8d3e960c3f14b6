"""kill -9 of the Prefect worker and of the flow-run process mid-run, on the real stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faultkit as tf
import psutil
import pytest
from helpers import wait_for

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _start_worker(stack, log: Path) -> subprocess.Popen:
    env = dict(stack.env, OMP_NUM_THREADS="1")
    out = open(log, "wb")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out.close()
    proc.stderr_path = log  # for tf.wait_until's report
    wait_for(
        lambda: proc.poll() is None and "started" in log.read_text(errors="replace"),
        120,
        f"the {POOL} worker to start",
        stack,
    )
    return proc


def _flow_process(worker: subprocess.Popen):
    """The flow-run process the worker started (a python child running the flow)."""
    for p in psutil.Process(worker.pid).children(recursive=True):
        try:
            if "python" in p.name() or any("python" in a for a in p.cmdline()[:1]):
                return p
        except psutil.NoSuchProcess:
            pass
    return None


def _submit(stack, client, source: Path, target: Path):
    dep = client.read_deployment_by_name(DEPLOYMENT)
    return client.create_flow_run_from_deployment(
        dep.id,
        parameters={
            "source": str(source),
            "target": str(target),
            "params": {"k": 16, "seed": 3, "restarts": 0},
            "preview": False,
        },
    )


def _state(client, run_id) -> str:
    return client.read_flow_run(run_id).state.type.value


@pytest.fixture(scope="module")
def fault_deployment(prefect_stack, tmp_path_factory):
    root = tmp_path_factory.mktemp("prefect-faults")
    out = prefect_stack.prefect("work-pool", "create", POOL, "--type", "process")
    assert out.returncode == 0 or "already exists" in out.stdout + out.stderr, out.stderr
    yaml = root / "prefect.yaml"
    yaml.write_text(PREFECT_YAML)
    out = prefect_stack.prefect(
        "--no-prompt", "deploy", "--prefect-file", str(yaml), "--name", "faults"
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return root


def _state_names(stack, *runs) -> list[str]:
    with stack.client() as client:
        return [_state(client, r.id) for r in runs]


REPO = Path(__file__).resolve().parents[2]


BIN = Path(sys.executable).parent


POOL = "kquant-faults"


DEPLOYMENT = "quantize-image/faults"


PREFECT_YAML = f"""\
name: kquant-faults
prefect-version: 3.9.1
build: null
push: null
deployments:
  - name: faults
    entrypoint: flows/quantize.py:quantize_image
    work_pool:
      name: {POOL}
"""


def test_kill9_prefect_worker_and_flow_process_then_rerun(
    prefect_stack, fault_deployment, tmp_path
):
    src = tf.make_source(tmp_path / "mosaic.tif")
    reference = tmp_path / "clean.kq"  # a clean run of the CLI with the same parameters
    p = tf.quantize_cli(src, reference)
    assert p.returncode == 0, p.stderr
    target = tmp_path / "flow.kq"
    workers = []
    try:
        with prefect_stack.client() as client:
            # 1. kill -9 of the worker (and of its flow-run process, which lives in its own
            #    session and would otherwise go on) during the write pass
            w1 = _start_worker(prefect_stack, tmp_path / "worker1.log")
            workers.append(w1)
            run1 = _submit(prefect_stack, client, src, target)
            tf.wait_for_write_pass(w1, target)
            flow1 = _flow_process(w1)
            assert flow1 is not None, "no flow-run process under the worker"
            os.kill(w1.pid, signal.SIGKILL)
            tf.FAULTS["kill -9 Prefect worker (write)"] += 1
            flow1_alive_after_worker = flow1.is_running()
            flow1.kill()
            tf.FAULTS["kill -9 flow-run process (write, worker dead)"] += 1
            psutil.wait_procs([flow1], timeout=30)
            w1.wait(timeout=30)
            time.sleep(3)  # give the server a chance to show anything it was told
            assert _state(client, run1.id) != "COMPLETED"
            tf.assert_nothing_complete(target, kind="kill -9 Prefect worker")
            assert not target.exists()
            assert tf.lock_holder(target)["pid"] == flow1.pid  # stale lock of a dead pid

            # 2. kill -9 of the flow-run process only: its worker reports it Crashed
            w2 = _start_worker(prefect_stack, tmp_path / "worker2.log")
            workers.append(w2)
            run2 = _submit(prefect_stack, client, src, target)
            tf.wait_for_write_pass(w2, target, ignore=set(tf.tmp_dirs(target)))
            flow2 = _flow_process(w2)
            assert flow2 is not None and flow2.pid != flow1.pid
            assert tf.lock_holder(target)["pid"] == flow2.pid  # took run 1's stale lock over
            flow2.kill()
            tf.FAULTS["kill -9 flow-run process (write, worker alive)"] += 1
            psutil.wait_procs([flow2], timeout=30)
            state2 = wait_for(
                lambda: (s := _state(client, run2.id)) in FINAL and s,
                120,
                "the worker to report the killed flow run",
                prefect_stack,
            )
            assert state2 in ("CRASHED", "FAILED"), state2
            tf.assert_nothing_complete(target, kind="kill -9 flow-run process")
            assert not target.exists()

            # 3. a rerun of the deployment completes with the clean run's store
            run3 = _submit(prefect_stack, client, src, target)
            state3 = wait_for(
                lambda: (s := _state(client, run3.id)) in FINAL and s,
                240,
                "the rerun to finish",
                prefect_stack,
            )
            assert state3 == "COMPLETED", (tmp_path / "worker2.log").read_text()[-3000:]
            assert _state(client, run1.id) != "COMPLETED"
        tf.assert_clean_finish(target, reference)
        assert not tf.tmp_dirs(target)  # the killed runs' temporary stores were removed
        print(
            f"\nPrefect faults: flow-run process alive after its worker's kill -9: "
            f"{flow1_alive_after_worker}; killed run states: "
            f"{_state_names(prefect_stack, run1, run2)}; "
            f"counts: {dict(sorted(tf.FAULTS.items()))}"
        )
    finally:
        stop_tree = type(prefect_stack).__init__.__globals__["stop_tree"]  # tests/conftest.py
        for w in workers:
            stop_tree(w, timeout=5)
