"""End to end: a real `prefect server start` on 127.0.0.1, a real process worker,
deploy/prefect.yaml.

The session fixture ``prefect_stack`` (conftest.py) runs ``deploy/serve.sh`` in
a temporary PREFECT_HOME and deploys with ``deploy/deploy.sh``; it stops the
server, the worker and any flow-run process at the end of the session."""

from __future__ import annotations

import json
import os
import re
import time
from datetime import UTC, datetime, timedelta

from helpers import photo_like, wait_for, write_png


def _artifacts(client, flow_run_id) -> dict:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    arts = client.read_artifacts(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )
    return {a.key: a for a in arts}


def _run_scheduled_now(stack, client, deployment_id):
    """Take the deployment's next run created by the scheduler, make it due now, wait for its
    end."""
    from prefect.states import Scheduled

    run = wait_for(
        lambda: _next_scheduled_run(client, deployment_id),
        60,
        "a scheduled run of the inbox deployment",
        stack,
    )
    assert run.auto_scheduled, "expected a run created by the deployment's schedule"
    client.set_flow_run_state(run.id, Scheduled(scheduled_time=datetime.now(UTC)), force=True)
    done = wait_for(
        lambda: (r := client.read_flow_run(run.id)).state.type.value in FINAL and r,
        180,
        f"scheduled run {run.name} to finish",
        stack,
    )
    return done


FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _next_scheduled_run(client, deployment_id):
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=1,
    )
    return runs[0] if runs else None


def test_adhoc_deployment_run_watch(prefect_stack, tmp_path):
    """`prefect deployment run 'quantize-image/adhoc' --param ... --watch` on the real stack."""
    from flows.report import CLIENT_MAX_RETRIES
    from kquant.store import open_store

    src = write_png(tmp_path / "holiday.png", photo_like(120, 160, seed=5))
    target = tmp_path / "holiday.kquant"
    t0 = time.monotonic()
    out = prefect_stack.prefect(
        "deployment",
        "run",
        "quantize-image/adhoc",
        "--param",
        f"source={src}",
        "--param",
        f"target={target}",
        "--param",
        'params={"k": 12}',
        "--watch",
        "--watch-interval",
        "1",
        "--watch-timeout",
        "180",
    )
    seconds = time.monotonic() - t0
    print(
        f"\nadhoc deployment run, submitted to Completed: {seconds:.1f} s "
        f"(deploy took {prefect_stack.deploy_seconds:.1f} s)"
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:] + prefect_stack.log_tail()
    assert "Completed" in out.stdout
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout).group(1)

    st = open_store(target)
    st.verify()
    assert st.meta.complete and st.meta.n_colors == 12 and st.shape == (120, 160)
    assert (tmp_path / "holiday-preview.png").is_file()

    with prefect_stack.client() as client:
        run = client.read_flow_run(run_id)
        assert run.state.type.value == "COMPLETED"
        assert run.parameters["source"] == str(src) and run.parameters["params"]["k"] == 12
        deployment = client.read_deployment(run.deployment_id)
        assert deployment.name == "adhoc" and not deployment.schedules
        assert deployment.work_pool_name == "kquant"
        assert "DASK_SCHEDULER_ADDRESS" in deployment.job_variables["env"]
        # the flow runs' Prefect client rides out a server restart
        assert deployment.job_variables["env"]["PREFECT_CLIENT_MAX_RETRIES"] == str(
            CLIENT_MAX_RETRIES
        )
        arts = _artifacts(client, run.id)
    assert set(arts) == {
        "holiday-kquant-summary",
        "holiday-kquant-palette",
        "holiday-kquant-progress",
    }
    assert float(arts.pop("holiday-kquant-progress").data) == 100.0
    assert {a.type for a in arts.values()} == {"markdown"}
    md = arts["holiday-kquant-summary"].data
    assert "PSNR" in md and "bits/px" in md and target.as_uri() in md
    assert "](data:image/jpeg;base64," in md  # the preview, inline
    hexes = re.findall(r"!\[(#[0-9a-f]{6})\]\(data:image/png", arts["holiday-kquant-palette"].data)
    assert hexes == [f"#{a:02x}{b:02x}{c:02x}" for a, b, c in st.palette.tolist()]


def test_scheduled_inbox_processes_new_images_then_skips_them(prefect_stack):
    from kquant.store import open_store

    inbox, outbox = prefect_stack.inbox, prefect_stack.outbox
    with prefect_stack.client() as client:
        dep = client.read_deployment_by_name("quantize-batch/inbox")
        # the deployment carries its schedule (every 5 minutes) and the inbox/outbox parameters
        assert len(dep.schedules) == 1 and dep.schedules[0].active
        assert dep.schedules[0].schedule.interval == timedelta(seconds=300)
        assert dep.parameters["inbox"] == str(inbox) and dep.parameters["outbox"] == str(outbox)
        assert dep.work_pool_name == "kquant"

        # run 1: the images in the inbox (the two put there when it was deployed, and any an
        # earlier test of the session's shared stack left) are written, or skipped if done
        def done(image):
            return (outbox / f"{image.name}.kquant" / "zarr.json").is_file()

        present = sorted(p for p in inbox.iterdir() if p.suffix == ".png")
        expected = [(p.name, "skipped (store exists)" if done(p) else "written") for p in present]
        assert {"scan-0.png", "scan-1.png"} <= {p.name for p in present}
        first = _run_scheduled_now(prefect_stack, client, dep.id)
        assert first.state.type.value == "COMPLETED", first.state.message + prefect_stack.log_tail()
        rows = json.loads(_artifacts(client, first.id)["kquant-batch-outbox-images"].data)
        assert sorted((r["image"], r["status"]) for r in rows) == expected
        stamps = {}
        for i in range(2):
            st = open_store(outbox / f"scan-{i}.png.kquant")
            st.verify()
            stamps[i] = (outbox / f"scan-{i}.png.kquant" / "zarr.json").stat().st_mtime_ns

        # a new image arrives; run 2 processes it and skips the two done ones
        write_png(inbox / "scan-2.png", photo_like(64, 80, seed=33), age_seconds=120)
        second = _run_scheduled_now(prefect_stack, client, dep.id)
        assert second.id != first.id
        assert second.state.type.value == "COMPLETED", (
            second.state.message + prefect_stack.log_tail()
        )
        rows = json.loads(_artifacts(client, second.id)["kquant-batch-outbox-images"].data)
        assert sorted((r["image"], r["status"]) for r in rows) == sorted(
            [(name, "skipped (store exists)") for name, _ in expected] + [("scan-2.png", "written")]
        )
    st = open_store(outbox / "scan-2.png.kquant")
    st.verify()
    assert st.shape == (64, 80)
    for i in range(2):  # untouched
        assert (outbox / f"scan-{i}.png.kquant" / "zarr.json").stat().st_mtime_ns == stamps[i]

    # a poisoned inbox: the run that meets an unreadable image ends Failed, the next completes
    (inbox / "scan-3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    old = time.time() - 120
    os.utime(inbox / "scan-3.png", (old, old))
    with prefect_stack.client() as client:
        third = _run_scheduled_now(prefect_stack, client, dep.id)
        assert third.state.type.value == "FAILED", prefect_stack.log_tail()
        assert "scan-3.png" in third.state.message
        fourth = _run_scheduled_now(prefect_stack, client, dep.id)
        assert fourth.state.type.value == "COMPLETED", (
            fourth.state.message + prefect_stack.log_tail()
        )
        rows = json.loads(_artifacts(client, fourth.id)["kquant-batch-outbox-images"].data)
    assert ("scan-3.png", "in quarantine") in {
        (r["image"], r["status"].split(":")[0]) for r in rows
    }
    assert (outbox / "scan-3.png.quarantined.json").is_file()


def test_adhoc_bad_input_ends_failed_with_reason(prefect_stack, tmp_path):
    (tmp_path / "notes.png").write_text("not a picture\n")
    out = prefect_stack.prefect(
        "deployment",
        "run",
        "quantize-image/adhoc",
        "--param",
        f"source={tmp_path / 'notes.png'}",
        "--param",
        f"target={tmp_path / 'x.kquant'}",
        "--watch",
        "--watch-interval",
        "1",
        "--watch-timeout",
        "180",
    )
    assert out.returncode != 0
    assert "Failed" in out.stdout
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout).group(1)
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with prefect_stack.client() as client:
        assert client.read_flow_run(run_id).state.type.value == "FAILED"

        def reason():
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
            )
            return [lg.message for lg in logs if lg.message.startswith("quantize-image failed:")]

        line = wait_for(reason, 20, "the failure reason in the flow run's logs")[0]
    assert "is not a recognised image" in line and "\n" not in line
    assert not any(".kquant" in p.name for p in tmp_path.iterdir())


def test_batch_with_a_cluster_class_from_job_variables(prefect_stack, tmp_path):
    """KQUANT_CLUSTER_CLASS / KQUANT_CLUSTER_KWARGS as job variables: the batch's
    DaskTaskRunner makes that cluster for the run (LocalCluster, through the same path as
    SLURMCluster or KubeCluster); the run completes and says which cluster ran it."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from kquant.store import open_store

    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    for i in range(3):
        write_png(inbox / f"c{i}.png", photo_like(48, 64, seed=60 + i), age_seconds=120)
    kwargs = {
        "name": "kquant-per-run",
        "n_workers": 2,
        "threads_per_worker": 1,
        "processes": False,
        "protocol": "tcp://",
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
    }
    t0 = time.monotonic()
    with prefect_stack.client() as client:
        dep = client.read_deployment_by_name("quantize-batch/inbox")
        run = client.create_flow_run_from_deployment(
            dep.id,
            parameters={"inbox": str(inbox), "outbox": str(outbox), "settle_seconds": 0},
            job_variables={
                "env": {
                    "KQUANT_CLUSTER_CLASS": "distributed.LocalCluster",
                    "KQUANT_CLUSTER_KWARGS": json.dumps(kwargs),
                }
            },
        )
        done = wait_for(
            lambda: (r := client.read_flow_run(run.id)).state.type.value in FINAL and r,
            180,
            "the batch on a per-run cluster",
            prefect_stack,
        )
        assert done.state.type.value == "COMPLETED", done.state.message + prefect_stack.log_tail()

        def cluster_line():
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
            )
            return [lg.message for lg in logs if lg.message.startswith("dask cluster of this run")]

        line = wait_for(cluster_line, 20, "the cluster line in the run's logs")[0]
        md = _artifacts(client, run.id)["kquant-batch-out-summary"].data
    assert "LocalCluster 'kquant-per-run', 2 workers" in line
    assert "Dask dashboard: http://127.0.0.1:" in md
    for i in range(3):
        open_store(outbox / f"c{i}.png.kquant").verify()
    print(f"\nbatch of 3 on a per-run LocalCluster (2 workers): {time.monotonic() - t0:.1f} s")


def test_inbox_deployment_turns_an_arrived_geotiff_into_a_cog(prefect_stack, tmp_path):
    """A run of the inbox deployment (its worker, its process) with a shared palette and
    ``export: cog``: an arrived GeoTIFF with a transparent collar becomes a paletted COG."""
    import os

    import numpy as np
    import rasterio
    from helpers import write_geotiff

    from kquant.store import open_store

    inbox, outbox = tmp_path / "geo-in", tmp_path / "geo-out"
    inbox.mkdir()
    img = photo_like(96, 128, seed=5)
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    rgba[:24, :, 3] = 0
    src = write_geotiff(inbox / "ortho.tif", rgba, block=64)
    os.utime(src, (time.time() - 120, time.time() - 120))
    with prefect_stack.client() as client:
        dep = client.read_deployment_by_name("quantize-batch/inbox")
        run = client.create_flow_run_from_deployment(
            dep.id,
            parameters={
                "inbox": str(inbox),
                "outbox": str(outbox),
                "shared_palette": True,
                "params": {"k": 6, "export": "cog"},
            },
        )
        done = wait_for(
            lambda: (r := client.read_flow_run(run.id)).state.type.value in FINAL and r,
            180,
            "the inbox run with export=cog to finish",
            prefect_stack,
        )
        assert done.state.type.value == "COMPLETED", done.state.message + prefect_stack.log_tail()
    st = open_store(outbox / "ortho.tif.kquant")
    assert st.meta.nodata_index == 5
    with rasterio.open(src) as s, rasterio.open(outbox / "ortho.tif.cog.tif") as d:
        assert d.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert d.crs == s.crs and d.transform == s.transform and d.nodata == 5
        assert np.array_equal(d.read(1), np.asarray(st.labels.compute()))
