"""Events on the real stack (``prefect_stack``): a completed store emits
``kquant.store.completed`` and the ``export-store/on-completed`` deployment trigger runs
the follow-up; ``kquant notify`` posts ``kquant.image.arrived`` and the inbox deployment
runs on it; a failed store emits ``kquant.store.failed``."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from helpers import photo_like, wait_for, write_png

pytestmark = pytest.mark.slow

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _events(stack, name: str, resource_id: str) -> list[dict]:
    r = httpx.post(
        f"{stack.api_url}/events/filter",
        json={"filter": {"event": {"name": [name]}, "resource": {"id": [resource_id]}}},
        timeout=10,
    )
    r.raise_for_status()
    return r.json()["events"]


def _runs_of(client, deployment_name: str):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    dep = client.read_deployment_by_name(deployment_name)
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
    )


def _adhoc(stack, source: Path, target: Path, k: int) -> tuple[int, str]:
    out = stack.prefect(
        "deployment",
        "run",
        "quantize-image/adhoc",
        "--param",
        f"source={source}",
        "--param",
        f"target={target}",
        "--param",
        f'params={{"k": {k}}}',
        "--watch",
        "--watch-interval",
        "1",
        "--watch-timeout",
        "180",
    )
    return out.returncode, out.stdout + out.stderr


def test_a_completed_store_emits_its_event_and_the_trigger_runs_the_follow_up(
    prefect_stack, tmp_path
):
    from kquant.store import open_store

    t0 = time.monotonic()
    src = write_png(tmp_path / "quay.png", photo_like(96, 128, seed=21))
    target = prefect_stack.outbox / "quay.kquant"
    code, out = _adhoc(prefect_stack, src, target, 7)
    assert code == 0 and "Completed" in out, out[-3000:] + prefect_stack.log_tail()
    uri = target.as_uri()

    ev = wait_for(
        lambda: _events(prefect_stack, "kquant.store.completed", f"kquant.store.{uri}"),
        30,
        "the kquant.store.completed event",
        prefect_stack,
    )[0]
    st = open_store(target)
    p = ev["payload"]
    assert p["store"] == uri and p["source"] == src.as_uri() and p["k"] == 7
    assert p["psnr"] == pytest.approx(st.meta.metrics["psnr"])
    assert p["bits_per_pixel"] == pytest.approx(st.meta.metrics["store_bits_per_pixel"])
    assert p["exports"]["preview"] == (prefect_stack.outbox / "quay-preview.png").as_uri()
    assert ev["resource"]["prefect.resource.name"] == "quay.kquant"
    source = [r for r in ev["related"] if r.get("prefect.resource.role") == "source"]
    assert source and source[0]["prefect.resource.id"] == f"kquant.image.{src.as_uri()}"

    # the deployment trigger starts the follow-up, which exports the store
    with prefect_stack.client() as client:

        def follow_up():
            runs = [r for r in _runs_of(client, "export-store/on-completed")]
            mine = [r for r in runs if r.parameters.get("store") == uri]
            return mine[0] if mine and mine[0].state.type.value in FINAL else None

        run = wait_for(follow_up, 120, "the follow-up run to finish", prefect_stack)
    assert run.state.type.value == "COMPLETED", run.state.message + prefect_stack.log_tail()
    exported = prefect_stack.outbox / "quay-indexed.png"
    from PIL import Image

    with Image.open(exported) as im:
        assert im.mode == "P" and im.size == (128, 96)
        assert len(im.getpalette()) // 3 >= 7
    print(f"\nstore -> event -> follow-up completed: {time.monotonic() - t0:.1f} s")


def test_a_failed_store_emits_its_event(prefect_stack, tmp_path):
    (tmp_path / "memo.png").write_text("not a picture\n")
    target = tmp_path / "memo.kquant"
    code, out = _adhoc(prefect_stack, tmp_path / "memo.png", target, 8)
    assert code != 0 and "Failed" in out
    ev = wait_for(
        lambda: _events(prefect_stack, "kquant.store.failed", f"kquant.store.{target.as_uri()}"),
        30,
        "the kquant.store.failed event",
        prefect_stack,
    )[0]
    assert "is not a recognised image" in ev["payload"]["reason"]
    assert ev["payload"]["source"] == (tmp_path / "memo.png").as_uri()


def test_an_arrival_event_starts_the_inbox_run(prefect_stack):
    from kquant.store import open_store

    t0 = time.monotonic()
    # just arrived: a scheduled poll would leave it to settle; the event says it is complete
    image = write_png(prefect_stack.inbox / "arrival.png", photo_like(60, 84, seed=41))
    with prefect_stack.client() as client:
        before = {r.id for r in _runs_of(client, "quantize-batch/inbox")}
        for _ in range(2):  # once more if a scheduled poll held the inbox's one slot
            out = subprocess.run(
                [str(Path(prefect_stack.env["PREFECT"]).parent / "kquant"), "notify", str(image)],
                env=prefect_stack.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            assert re.fullmatch(
                rf"kquant\.image\.arrived {re.escape(image.as_uri())}\n", out.stdout
            )

            def triggered():
                new = [
                    r
                    for r in _runs_of(client, "quantize-batch/inbox")
                    if r.id not in before and not r.auto_scheduled
                ]
                return new[0] if new and new[0].state.type.value in FINAL else None

            run = wait_for(triggered, 120, "the inbox run the event started", prefect_stack)
            before.add(run.id)
            if run.state.type.value != "CANCELLED":
                break
    assert run.state.type.value in ("COMPLETED", "FAILED"), prefect_stack.log_tail()
    assert run.parameters["settle_seconds"] == 0
    assert run.parameters["inbox"] == str(prefect_stack.inbox)
    open_store(prefect_stack.outbox / "arrival.png.kquant").verify()
    print(f"\narrival event -> inbox run finished: {time.monotonic() - t0:.1f} s")
