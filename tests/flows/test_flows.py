"""The flows run in-process against one prefect_test_harness (real API server, real dask)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import photo_like, truncated_png, write_png

from kquant.params import QuantizeParams


def _artifacts(client, flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    arts = client.read_artifacts(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )
    return {a.key: a for a in arts}


def _task_states(client, flow_run_id) -> dict[str, str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def _logs(client, flow_run_id, must_contain: str, timeout: float = 15.0) -> list[str]:
    """Messages of a flow run's logs, once one contains ``must_contain`` (logs ship in batches)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    deadline = time.monotonic() + timeout
    while True:
        logs = [
            lg.message
            for lg in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
        ]
        if any(must_contain in m for m in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def _run_id(state):
    return state.state_details.flow_run_id


# --------------------------------------------------------------------------- quantize-image


def test_quantize_image_store_artifacts_and_cached_fit(harness, client, tmp_path):
    from flows.quantize import quantize_image
    from kquant.store import open_store

    src = write_png(tmp_path / "photo.png", photo_like(90, 130, seed=1))
    state = quantize_image(
        source=str(src),
        target=str(tmp_path / "a.kquant"),
        params=QuantizeParams(k=8, sample_size=5000),
        return_state=True,
    )
    assert state.is_completed(), state.message
    r = state.result()
    st = open_store(tmp_path / "a.kquant")
    st.verify()
    assert st.meta.complete and st.palette.shape == (8, 3)
    assert r["n_colors"] == 8 and r["fit_cached"] is False
    assert 15 < r["psnr"] < 60 and 0 < r["store_bits_per_pixel"] < 24
    assert r["palette"] == [f"#{a:02x}{b:02x}{c:02x}" for a, b, c in st.palette.tolist()]
    assert Path(r["preview"]).is_file() and r["preview"].endswith("a-preview.png")

    # artifacts (markdown): the summary with the preview inline (a data URL), the palette
    # with a swatch per entry; no image artifact (Prefect prints its whole URL as a line)
    arts = _artifacts(client, _run_id(state))
    assert set(arts) == {"a-kquant-summary", "a-kquant-palette", "a-kquant-progress"}
    progress = arts.pop("a-kquant-progress")  # the write pass: blocks written / total
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert "1 of 1 blocks written" in progress.description
    assert {a.type for a in arts.values()} == {"markdown"}
    md = arts["a-kquant-summary"].data
    assert "PSNR" in md and f"{r['psnr']:.2f} dB" in md and "bits/px" in md
    assert (tmp_path / "a.kquant").as_uri() in md
    assert "| | |" not in md and md.count("| time |") == 1
    import base64
    import io
    import re

    from PIL import Image

    url = re.search(r"!\[original \| quantized[^]]*\]\((data:image/jpeg;base64,[^)]+)\)", md)
    with Image.open(io.BytesIO(base64.b64decode(url.group(1).split(",", 1)[1]))) as im:
        assert im.format == "JPEG" and im.width >= 2 * 130
    pal = arts["a-kquant-palette"].data
    swatches = re.findall(r"!\[(#[0-9a-f]{6})\]\((data:image/png;base64,[^)]+)\)", pal)
    assert [h for h, _ in swatches] == r["palette"]
    for hexcode, swatch in swatches:  # each swatch is a block of its entry's colour
        with Image.open(io.BytesIO(base64.b64decode(swatch.split(",", 1)[1]))) as im:
            assert im.convert("RGB").getpixel((3, 3)) == tuple(
                int(hexcode[i : i + 2], 16) for i in (1, 3, 5)
            )
    counts = [int(c.replace(",", "")) for c in re.findall(r"\| ([\d,]+) \| [\d.]+ % \|", pal)]
    assert sum(counts) == 90 * 130

    # a rerun on the same file and parameters does not refit: the fit task is Cached
    again = quantize_image(
        source=str(src),
        target=str(tmp_path / "b.kquant"),
        params=QuantizeParams(k=8, sample_size=5000),
        return_state=True,
    )
    assert again.is_completed(), again.message
    assert again.result()["fit_cached"] is True
    assert _task_states(client, _run_id(again))["fit-palette"] == "Cached"
    assert np.array_equal(open_store(tmp_path / "b.kquant").palette, st.palette)
    assert "cached" in _artifacts(client, _run_id(again))["b-kquant-summary"].data

    # other parameters, or the same path with a new mtime: refit
    other_k = quantize_image(
        source=str(src),
        target=str(tmp_path / "c.kquant"),
        params=QuantizeParams(k=6, sample_size=5000),
        preview=False,
        return_state=True,
    )
    assert other_k.result()["fit_cached"] is False
    t = time.time() + 5
    os.utime(src, (t, t))
    touched = quantize_image(
        source=str(src),
        target=str(tmp_path / "d.kquant"),
        params=QuantizeParams(k=8, sample_size=5000),
        preview=False,
        return_state=True,
    )
    assert touched.result()["fit_cached"] is False
    assert _task_states(client, _run_id(touched))["fit-palette"] == "Completed"


def test_quantize_image_on_an_existing_dask_cluster(harness, tmp_path):
    from distributed import LocalCluster
    from prefect.client.orchestration import get_client

    from flows.quantize import quantize_image
    from kquant.store import open_store

    src = write_png(tmp_path / "p.png", photo_like(64, 72, seed=4))
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        state = quantize_image(
            source=str(src),
            target=str(tmp_path / "p.kquant"),
            params=QuantizeParams(k=5, sample_size=2000, chunk=32),
            preview=False,
            address=cluster.scheduler_address,
            return_state=True,
        )
        link = cluster.dashboard_link
    assert state.is_completed(), state.message
    open_store(tmp_path / "p.kquant").verify()
    # the dask dashboard in the logs and the summary; progress over the 2 x 3 blocks
    with get_client(sync_client=True) as client:
        assert any(link in m for m in _logs(client, _run_id(state), "dask dashboard"))
        arts = _artifacts(client, _run_id(state))
    assert f"| dask dashboard | {link} |" in arts["p-kquant-summary"].data
    assert float(arts["p-kquant-progress"].data) == 100.0
    assert "6 of 6 blocks written" in arts["p-kquant-progress"].description


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".kquant" in p.name)


@pytest.mark.parametrize(
    "case", ["corrupt", "not-an-image", "missing-folder", "bad-k", "target-exists"]
)
def test_quantize_image_fails_on_bad_input(harness, client, tmp_path, case):
    from flows.quantize import quantize_image

    good = write_png(tmp_path / "good.png", photo_like(40, 48, seed=2))
    target = tmp_path / "out.kquant"
    kwargs = dict(
        source=str(good),
        target=str(target),
        params=QuantizeParams(k=4, sample_size=1000),
    )
    expect = {
        "corrupt": "is not a readable image",
        "not-an-image": "is not a recognised image",
        "missing-folder": "does not exist",
        "bad-k": "k (number of colours) must be between 2 and 256",
        "target-exists": "exists (run with overwrite=true",
    }[case]
    if case == "corrupt":
        kwargs["source"] = str(truncated_png(tmp_path / "cut.png"))
    elif case == "not-an-image":
        (tmp_path / "notes.png").write_text("not a picture\n")
        kwargs["source"] = str(tmp_path / "notes.png")
    elif case == "missing-folder":  # refused before any work
        kwargs["target"] = str(tmp_path / "no" / "such" / "out.kquant")
    elif case == "bad-k":
        kwargs["params"] = {"k": 1, "sample_size": 1000}
    elif case == "target-exists":
        target.mkdir()
        (target / "keep.txt").write_text("user data")

    state = quantize_image(**kwargs, return_state=True)
    assert state.is_failed(), state
    assert expect in state.message
    logs = _logs(client, _run_id(state), "quantize-image failed:")
    line = next(m for m in logs if m.startswith("quantize-image failed:"))
    assert expect in line and "\n" not in line
    # one line each: no traceback in the run's logs (the flow's, nor a task's)
    assert not [m for m in logs if "Traceback" in m or "\n" in m], logs
    # nothing complete-looking is left behind
    if case == "target-exists":
        assert (target / "keep.txt").read_text() == "user data"
        assert _leftovers(tmp_path) == ["out.kquant"]
    else:
        assert _leftovers(tmp_path) == []
        assert not (tmp_path / "no").exists()


def test_a_rerun_with_the_same_source_and_parameters_is_already_done(harness, client, tmp_path):
    """Its complete store is recognised (same file: path, size, mtime; same parameters) and
    the run ends Completed "already done" without rewriting it; another version of the
    source, other parameters or another imposed palette are refused; overwrite rewrites."""
    from flows.quantize import quantize_image
    from kquant.store import open_store

    src = write_png(tmp_path / "p.png", photo_like(70, 90, seed=21))
    target = tmp_path / "p.kquant"
    kw = dict(
        source=str(src),
        target=str(target),
        params=QuantizeParams(k=6, sample_size=3000),
    )
    first = quantize_image(**kw, return_state=True)
    assert first.is_completed(), first.message
    assert first.result()["already_done"] is False
    stamps = {p: p.stat().st_mtime_ns for p in target.rglob("*")}

    again = quantize_image(**kw, return_state=True)
    assert again.is_completed(), again.message
    r = again.result()
    assert r["already_done"] is True and r["checksum"] == first.result()["checksum"]
    assert {k: r[k] for k in ("psnr", "palette", "palette_counts", "n_colors", "preview")} == {
        k: first.result()[k] for k in ("psnr", "palette", "palette_counts", "n_colors", "preview")
    }
    assert {p: p.stat().st_mtime_ns for p in target.rglob("*")} == stamps
    assert any(
        m.startswith("already done: ") for m in _logs(client, _run_id(again), "already done")
    )
    assert "already done" in _artifacts(client, _run_id(again))["p-kquant-summary"].data

    for changed in (dict(k=5), dict(seed=1), dict(space="lab")):
        other = quantize_image(
            **dict(kw, params=dataclasses.replace(kw["params"], **changed)), return_state=True
        )
        assert other.is_failed() and "exists" in other.message, (changed, other.message)
    t = time.time() + 5
    os.utime(src, (t, t))  # the same path, another version of the file
    touched = quantize_image(**kw, return_state=True)
    assert touched.is_failed() and "exists" in touched.message
    assert {p: p.stat().st_mtime_ns for p in target.rglob("*")} == stamps

    rewritten = quantize_image(**kw, overwrite=True, return_state=True)
    assert rewritten.is_completed() and rewritten.result()["already_done"] is False
    assert quantize_image(**kw, return_state=True).result()["already_done"] is True

    # an imposed palette: the same palette again is done, another one is refused
    pal = open_store(target).palette.tolist()
    kw = dict(kw, target=str(tmp_path / "q.kquant"), palette=pal, preview=False)
    assert quantize_image(**kw, return_state=True).result()["already_done"] is False
    assert quantize_image(**kw, return_state=True).result()["already_done"] is True
    other = quantize_image(**dict(kw, palette=pal[::-1]), return_state=True)
    assert other.is_failed() and "exists" in other.message


# --------------------------------------------------------------------------- quantize-batch


def _tiles(folder: Path, n: int, *, seed: int = 7, age: float = 60.0) -> list[Path]:
    """``n`` tiles cut from one picture (a mosaic)."""
    big = photo_like(64, 48 * n, seed=seed)
    return [
        write_png(folder / f"tile-{i:02d}.png", big[:, 48 * i : 48 * (i + 1)], age_seconds=age)
        for i in range(n)
    ]


def test_batch_shared_palette_skip_and_new_arrivals(harness, client, tmp_path):
    from flows.batch import quantize_batch
    from kquant.store import open_store

    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    _tiles(inbox, 3)
    (inbox / "README.txt").write_text("not an image")
    write_png(inbox / ".hidden.png", photo_like(16, 16))
    write_png(inbox / "copying.png.part", photo_like(16, 16))

    state = quantize_batch(
        inbox=str(inbox),
        outbox=str(outbox),
        params=QuantizeParams(k=6, sample_size=4000),
        shared_palette=True,
        settle_seconds=5,
        return_state=True,
    )
    assert state.is_completed(), state.message
    r = state.result()
    assert r["processed"] == ["tile-00.png", "tile-01.png", "tile-02.png"]
    assert r["skipped"] == [] and r["failed"] == {}
    stores = [open_store(outbox / f"tile-{i:02d}.png.kquant") for i in range(3)]
    for st in stores:
        st.verify()
    # every tile has the identical palette (entries and order): the shared one
    assert all(np.array_equal(st.palette, stores[0].palette) for st in stores)
    assert stores[0].palette.tolist() == r["shared_palette"] and len(r["shared_palette"]) == 6
    # ... and it is not what each tile would get on its own
    from kquant import pipeline

    own = pipeline.fit(str(inbox / "tile-00.png"), QuantizeParams(k=6, sample_size=4000)).palette
    assert not np.array_equal(own, stores[0].palette)
    arts = _artifacts(client, _run_id(state))
    assert {
        "kquant-batch-out-summary",
        "kquant-batch-out-images",
        "kquant-batch-out-palette",
        "tile-00-png-kquant-preview",
    } <= set(arts)
    assert arts["tile-00-png-kquant-preview"].data.count("](data:image/jpeg;base64,") == 1
    assert arts["kquant-batch-out-palette"].data.count("](data:image/png;base64,") == 6
    rows = json.loads(arts["kquant-batch-out-images"].data)
    assert [row["status"] for row in rows] == ["written"] * 3

    # a rerun skips every complete store and writes nothing
    stamps = {p: p.stat().st_mtime_ns for p in outbox.rglob("zarr.json")}
    again = quantize_batch(
        inbox=str(inbox),
        outbox=str(outbox),
        params=QuantizeParams(k=6, sample_size=4000),
        shared_palette=True,
        settle_seconds=5,
        return_state=True,
    )
    assert again.is_completed(), again.message
    assert again.result()["processed"] == [] and len(again.result()["skipped"]) == 3
    assert {p: p.stat().st_mtime_ns for p in outbox.rglob("zarr.json")} == stamps

    # a new tile arrives (and one still being written is left for later): only it is processed,
    # remapped onto the palette the existing stores share
    new = write_png(inbox / "tile-03.png", photo_like(64, 48, seed=17), age_seconds=60)
    write_png(inbox / "fresh.png", photo_like(20, 20, seed=3))  # modified just now
    third = quantize_batch(
        inbox=str(inbox),
        outbox=str(outbox),
        params=QuantizeParams(k=6, sample_size=4000),
        shared_palette=True,
        settle_seconds=5,
        return_state=True,
    )
    assert third.is_completed(), third.message
    assert third.result()["processed"] == [new.name]
    assert sorted(third.result()["skipped"]) == ["tile-00.png", "tile-01.png", "tile-02.png"]
    assert np.array_equal(open_store(outbox / "tile-03.png.kquant").palette, stores[0].palette)
    assert not (outbox / "fresh.png.kquant").exists()


def test_batch_independent_palettes_and_a_corrupt_image(harness, client, tmp_path):
    from flows.batch import quantize_batch
    from kquant.store import open_store

    inbox, outbox = tmp_path / "in", tmp_path / "out"
    (inbox / "sub").mkdir(parents=True)
    write_png(inbox / "a.png", photo_like(50, 60, seed=11), age_seconds=60)
    write_png(inbox / "sub" / "b.png", photo_like(40, 70, seed=12), age_seconds=60)
    truncated_png(inbox / "broken.png")

    state = quantize_batch(
        inbox=str(inbox),
        outbox=str(outbox),
        pattern="**/*",
        params=QuantizeParams(k=5, sample_size=3000),
        settle_seconds=0,
        preview=False,
        return_state=True,
    )
    assert state.is_failed()
    assert "1 of 3 images failed" in state.message and "broken.png" in state.message
    assert "is not a readable image" in state.message
    a, b = open_store(outbox / "a.png.kquant"), open_store(outbox / "sub" / "b.png.kquant")
    a.verify()
    b.verify()
    assert not np.array_equal(a.palette, b.palette)  # each image its own palette
    # no store of it; a quarantine record with the one-line reason
    assert [p.name for p in outbox.rglob("*broken*")] == ["broken.png.quarantined.json"]
    record = json.loads((outbox / "broken.png.quarantined.json").read_text())
    assert "is not a readable image" in record["reason"] and "\n" not in record["reason"]
    logs = _logs(client, _run_id(state), "broken.png: ")
    assert any(m.startswith("broken.png: ") and "is not a readable image" in m for m in logs)
    progress = _artifacts(client, _run_id(state))["kquant-batch-out-progress"]
    assert progress.type == "progress" and float(progress.data) == 100.0

    # the next run completes: the good images are done, the broken one is left out
    again = quantize_batch(
        inbox=str(inbox),
        outbox=str(outbox),
        pattern="**/*",
        params=QuantizeParams(k=5, sample_size=3000),
        settle_seconds=0,
        preview=False,
        return_state=True,
    )
    assert again.is_completed(), again.message
    assert again.result()["quarantined"] == {"broken.png": record["reason"]}
    rows = json.loads(_artifacts(client, _run_id(again))["kquant-batch-out-images"].data)
    assert sorted((row["image"], row["status"].split(":")[0]) for row in rows) == [
        ("a.png", "skipped (store exists)"),
        ("broken.png", "in quarantine"),
        ("sub/b.png", "skipped (store exists)"),
    ]

    # a new version of the file is tried again; once it is read, its record goes
    write_png(inbox / "broken.png", photo_like(40, 50, seed=8))
    third = quantize_batch(
        inbox=str(inbox),
        outbox=str(outbox),
        pattern="**/*",
        params=QuantizeParams(k=5, sample_size=3000),
        settle_seconds=0,
        preview=False,
        return_state=True,
    )
    assert third.is_completed(), third.message
    assert third.result()["processed"] == ["broken.png"]
    open_store(outbox / "broken.png.kquant").verify()
    assert not (outbox / "broken.png.quarantined.json").exists()


def test_batch_fails_on_a_missing_inbox(harness, client, tmp_path):
    from flows.batch import quantize_batch

    state = quantize_batch(
        inbox=str(tmp_path / "nope"), outbox=str(tmp_path / "out"), return_state=True
    )
    assert state.is_failed() and "is not a folder" in state.message
    assert not (tmp_path / "out").exists()
    logs = _logs(client, _run_id(state), "quantize-batch failed:")
    assert f"quantize-batch failed: inbox {tmp_path / 'nope'} is not a folder" in logs
    assert not [m for m in logs if "Traceback" in m or "\n" in m], logs


def test_batch_skips_its_own_stores_and_refuses_one_of_another_version(harness, client, tmp_path):
    """As quantize-image: a complete store of the same file and parameters is done; one of
    another version of the image (new mtime) or of other parameters is reported, untouched."""
    from flows.batch import quantize_batch

    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    a, b = (
        write_png(inbox / f"{n}.png", photo_like(30, 40, seed=i), age_seconds=60)
        for i, n in enumerate("ab")
    )
    kw = dict(
        inbox=str(inbox),
        outbox=str(outbox),
        params=QuantizeParams(k=4, sample_size=1000),
        settle_seconds=0,
        preview=False,
    )
    assert quantize_batch(**kw, return_state=True).result()["processed"] == ["a.png", "b.png"]
    stamps = {p: p.stat().st_mtime_ns for p in outbox.rglob("*")}
    t = time.time() - 30
    os.utime(b, (t, t))  # another version of b.png
    state = quantize_batch(**kw, return_state=True)
    assert state.is_failed() and "1 of 2 images failed: b.png:" in state.message
    assert "made from another version of the image or with other parameters" in state.message
    logs = _logs(client, _run_id(state), "quantize-batch failed:")
    assert any(m.startswith("b.png: ") for m in logs)
    assert not [m for m in logs if "Traceback" in m], logs
    rows = json.loads(_artifacts(client, _run_id(state))["kquant-batch-out-images"].data)
    assert [(r["image"], r["status"].split(":")[0]) for r in rows] == [
        ("a.png", "skipped (store exists)"),
        ("b.png", "failed"),
    ]
    other_k = quantize_batch(
        **dict(kw, params=dataclasses.replace(kw["params"], k=5)), return_state=True
    )
    assert other_k.is_failed() and "2 of 2 images failed" in other_k.message
    assert {p: p.stat().st_mtime_ns for p in outbox.rglob("*")} == stamps


def test_io_tasks_retry_io_errors_but_not_bad_input(harness):
    from prefect import flow, task

    from flows.tasks import IO_RETRIES
    from kquant.errors import InputError

    calls = {"io": 0, "user": 0}

    @task(**dict(IO_RETRIES, retry_delay_seconds=0))
    def flaky():
        calls["io"] += 1
        if calls["io"] < 3:
            raise OSError("flaky disk")
        return "ok"

    @task(**dict(IO_RETRIES, retry_delay_seconds=0))
    def bad():
        calls["user"] += 1
        raise InputError("bad input")

    @flow
    def both():
        return flaky(), bad(return_state=True).is_failed()

    assert both() == ("ok", True)
    assert calls == {"io": 3, "user": 1}


def test_batch_shared_palette_goes_on_without_a_corrupt_tile(harness, tmp_path):
    from flows.batch import quantize_batch
    from kquant.store import open_store

    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    _tiles(inbox, 2, seed=8)
    truncated_png(inbox / "tile-99.png")
    state = quantize_batch(
        inbox=str(inbox),
        outbox=str(outbox),
        params=QuantizeParams(k=4, sample_size=2000),
        shared_palette=True,
        settle_seconds=0,
        preview=False,
        return_state=True,
    )
    assert state.is_failed() and "1 of 3 images failed: tile-99.png" in state.message
    a, b = (open_store(outbox / f"tile-0{i}.png.kquant") for i in range(2))
    assert np.array_equal(a.palette, b.palette)
    assert not (outbox / "tile-99.png.kquant").exists()


def test_batch_outbox_inside_the_inbox_is_not_reprocessed(harness, tmp_path):
    from flows.batch import quantize_batch

    inbox = tmp_path / "in"
    inbox.mkdir()
    _tiles(inbox, 1)
    kw = dict(
        inbox=str(inbox),
        outbox=str(inbox / "done"),
        pattern="**/*",
        params=QuantizeParams(k=4, sample_size=1000),
        settle_seconds=0,
    )
    first = quantize_batch(**kw, return_state=True)
    assert first.is_completed() and first.result()["processed"] == ["tile-00.png"]
    assert (inbox / "done" / "tile-00.png-preview.png").is_file()
    second = quantize_batch(**kw, return_state=True)  # the preview is not a new image
    assert second.result()["processed"] == [] and second.result()["skipped"] == ["tile-00.png"]
    same = quantize_batch(**dict(kw, outbox=str(inbox)), return_state=True)
    assert same.is_failed() and "outbox and inbox are the same folder" in same.message


def test_mode_and_shard_reach_the_store(harness, tmp_path):
    """The flow passes the fit mode and sharding to the library."""
    import imageio.v3 as iio
    import numpy as np
    import zarr

    import kquant
    from flows.quantize import quantize_image

    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "m.png", img)
    out = quantize_image(
        str(tmp_path / "m.png"),
        str(tmp_path / "m.kquant"),
        params=QuantizeParams(k=8, restarts=0, chunk=32, shard=64, mode="sample"),
        preview=False,
    )
    st = kquant.open_store(out["target"])
    assert st.meta.params["mode"] == "sample" and st.meta.shard_rows == 64
    assert zarr.open_array(out["target"], path="labels").shards is not None
    st.verify()


def test_space_dither_and_target_psnr_reach_the_store(harness, tmp_path):
    """The flows take the CLI's perceptual, dithering and target-PSNR options."""
    import imageio.v3 as iio
    import numpy as np
    from helpers import photo_like

    import kquant
    from flows.batch import quantize_batch
    from flows.quantize import quantize_image
    from kquant.pipeline import shared_palette

    img = photo_like(64, 80, seed=61)
    iio.imwrite(tmp_path / "p.png", img)
    options = {"space": "lab", "dither": "blue-noise", "target_psnr": 15.0}
    out = quantize_image(
        str(tmp_path / "p.png"),
        str(tmp_path / "p.kquant"),
        params=QuantizeParams(k=16, restarts=0, **options),
        preview=False,
    )
    ref = kquant.quantize(
        tmp_path / "p.png", tmp_path / "ref.kquant", QuantizeParams(k=16, restarts=0, **options)
    )
    st = kquant.open_store(out["target"])
    assert {key: st.meta.params[key] for key in options} == options
    assert st.meta.params == ref.meta.params
    assert np.array_equal(st.palette, ref.fit.palette) and len(st.palette) < 16
    assert np.array_equal(
        np.asarray(st.labels.compute()), np.asarray(kquant.open_store(ref.target).labels.compute())
    )
    assert ref.fit.target_met  # the smallest K whose (undithered) fit reaches 15 dB
    assert st.meta.metrics["target_psnr_met"] == (st.meta.metrics["psnr"] >= 15.0)
    assert st.meta.metrics["dither_amount"] > 0

    inbox = tmp_path / "in"
    inbox.mkdir()
    iio.imwrite(inbox / "a.png", img[:32])
    iio.imwrite(inbox / "b.png", img[32:])
    res = quantize_batch(
        str(inbox),
        str(tmp_path / "out"),
        params=QuantizeParams(k=6, restarts=0, space="lab"),
        shared_palette=True,
        preview=False,
        settle_seconds=0,
    )
    assert len(res["processed"]) == 2
    want = shared_palette.fit_shared(
        [str(inbox / "a.png"), str(inbox / "b.png")], QuantizeParams(k=6, restarts=0, space="lab")
    ).palette
    for name in ("a.png", "b.png"):
        got = kquant.open_store(tmp_path / "out" / (name + ".kquant"))
        assert got.meta.params["space"] == "lab" and np.array_equal(got.palette, want)


def test_an_imposed_palette_as_the_cli_does(harness, tmp_path):
    """``palette=`` maps onto a palette file or store: the library's store, no fit task."""
    import imageio.v3 as iio
    import numpy as np
    from helpers import photo_like

    import kquant
    from flows.batch import quantize_batch
    from flows.quantize import main, quantize_image

    img = photo_like(48, 64, seed=62)
    iio.imwrite(tmp_path / "p.png", img)
    gpl = tmp_path / "p.gpl"
    pal = np.array([[0, 0, 0], [250, 250, 250], [200, 30, 30], [30, 90, 200], [90, 160, 60]])
    gpl.write_text("GIMP Palette\n#\n" + "".join(f"{r} {g} {b}\tc\n" for r, g, b in pal))
    out = quantize_image(
        str(tmp_path / "p.png"),
        str(tmp_path / "p.kquant"),
        params=QuantizeParams(k=16, target_psnr=40.0, dither="bayer"),
        preview=False,
        palette=str(gpl),
    )
    ref = kquant.quantize(
        tmp_path / "p.png",
        tmp_path / "ref.kquant",
        kquant.QuantizeParams(dither="bayer"),
        palette=gpl,
    )
    st = kquant.open_store(out["target"])
    assert np.array_equal(st.palette, pal) and st.meta.params == ref.meta.params
    assert st.meta.params["k"] == 5 and st.meta.params["target_psnr"] is None
    assert st.meta.metrics["fit_mode"] == "imposed" == ref.meta.metrics["fit_mode"]
    assert np.array_equal(
        np.asarray(st.labels.compute()), np.asarray(kquant.open_store(ref.target).labels.compute())
    )
    assert out["n_unique"] is None and not out["fit_cached"]
    # a store's palette, and the module's command line
    assert (
        main(
            [
                str(tmp_path / "p.png"),
                str(tmp_path / "q.kquant"),
                "--palette",
                str(tmp_path / "ref.kquant"),
                "--no-preview",
            ]
        )
        == 0
    )
    assert np.array_equal(kquant.open_store(tmp_path / "q.kquant").palette, pal)

    inbox = tmp_path / "in"
    inbox.mkdir()
    iio.imwrite(inbox / "a.png", img[:24])
    iio.imwrite(inbox / "b.png", img[24:])
    res = quantize_batch(
        str(inbox), str(tmp_path / "out"), preview=False, settle_seconds=0, palette=pal.tolist()
    )
    assert sorted(res["processed"]) == ["a.png", "b.png"]
    assert {r["fit"] for r in res["results"]} == {"imposed"}
    for name in ("a.png", "b.png"):
        got = kquant.open_store(tmp_path / "out" / (name + ".kquant"))
        assert np.array_equal(got.palette, pal) and got.meta.metrics["fit_mode"] == "imposed"
    with pytest.raises(kquant.KquantError):  # a missing palette file: the batch fails
        quantize_batch(
            str(inbox),
            str(tmp_path / "out2"),
            preview=False,
            settle_seconds=0,
            palette=str(tmp_path / "missing.gpl"),
        )


def test_quantize_image_makes_a_cluster_for_a_huge_image(harness, client, tmp_path, monkeypatch):
    """A cluster class set (KQUANT_CLUSTER_CLASS / _KWARGS) and an image of at least
    KQUANT_CLUSTER_MIN_PIXELS: quantize-image makes that cluster for the run, writes on it
    and closes it; a smaller image stays on local threads."""
    from flows.quantize import quantize_image
    from kquant.store import open_store

    kwargs = {"n_workers": 1, "threads_per_worker": 2, "processes": False, "protocol": "tcp://"}
    kwargs |= {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    monkeypatch.setenv("KQUANT_CLUSTER_CLASS", "distributed.LocalCluster")
    monkeypatch.setenv("KQUANT_CLUSTER_KWARGS", json.dumps(kwargs))
    monkeypatch.setenv("KQUANT_CLUSTER_MIN_PIXELS", str(60 * 80))
    big = write_png(tmp_path / "big.png", photo_like(60, 80, seed=70))
    small = write_png(tmp_path / "small.png", photo_like(40, 50, seed=71))
    for src, made in ((big, True), (small, False)):
        state = quantize_image(
            source=str(src),
            target=str(tmp_path / (src.stem + ".kquant")),
            params=QuantizeParams(k=5, chunk=32),
            preview=False,
            return_state=True,
        )
        assert state.is_completed(), state.message
        open_store(tmp_path / (src.stem + ".kquant")).verify()
        logs = _logs(client, _run_id(state), "done:")
        assert any(m.startswith("making a dask cluster for this run") for m in logs) == made
        md = _artifacts(client, _run_id(state))[f"{src.stem}-kquant-summary"].data
        assert ("| dask dashboard | http://127.0.0.1:" in md) == made


@pytest.mark.slow
def test_batch_pixel_work_in_worker_processes(harness, client, tmp_path, monkeypatch):
    """From KQUANT_BATCH_PROCESS_MIN new images the batch does its pixel work in worker
    processes: the stores are byte-identical to the library's, and a bad image's error
    crosses back as itself (one line, quarantined)."""
    from helpers import files

    import kquant
    from flows.batch import quantize_batch

    monkeypatch.setenv("KQUANT_BATCH_PROCESS_MIN", "2")
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    for i in range(3):
        write_png(inbox / f"p{i}.png", photo_like(50, 70, seed=80 + i), age_seconds=60)
    truncated_png(inbox / "bad.png")
    state = quantize_batch(
        inbox=str(inbox),
        outbox=str(outbox),
        params=QuantizeParams(k=6, seed=1),
        settle_seconds=0,
        return_state=True,
    )
    assert state.is_failed() and "1 of 4 images failed" in state.message
    assert "bad.png: " in state.message and "is not a readable image" in state.message
    logs = _logs(client, _run_id(state), "worker processes")
    assert any(m.startswith("pixel work in ") and "worker processes" in m for m in logs)
    assert (outbox / "bad.png.quarantined.json").is_file()
    for i in range(3):
        kquant.quantize(
            inbox / f"p{i}.png", tmp_path / f"lib{i}.kquant", QuantizeParams(k=6, seed=1)
        )
        mine, lib = outbox / f"p{i}.png.kquant", tmp_path / f"lib{i}.kquant"
        assert files(mine).keys() == files(lib).keys()
        assert files(mine, but=("zarr.json",)) == files(lib, but=("zarr.json",))
        assert (outbox / f"p{i}.png-preview.png").is_file()


def test_batch_image_in_three_task_runs_and_a_failed_preview_is_a_warning(
    harness, client, tmp_path
):
    """An image of the batch is three task runs (inspect, fit, write-verify-preview); a
    preview that cannot be written leaves the verified store and the image done."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.batch import quantize_batch
    from kquant.store import open_store

    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    write_png(inbox / "a.png", photo_like(50, 60, seed=21), age_seconds=60)
    write_png(inbox / "b.png", photo_like(40, 70, seed=22), age_seconds=60)
    (outbox / "b.png-preview.png").mkdir(parents=True)  # a folder where its preview goes
    state = quantize_batch(
        inbox=str(inbox),
        outbox=str(outbox),
        params=QuantizeParams(k=5, seed=1),
        settle_seconds=0,
        return_state=True,
    )
    assert state.is_completed(), state.message
    for name in ("a", "b"):
        open_store(outbox / f"{name}.png.kquant").verify()
    assert (outbox / "a.png-preview.png").is_file()
    assert (outbox / "b.png-preview.png").is_dir()  # untouched
    rows = {r["image"]: r for r in state.result()["results"]}
    assert rows["a.png"]["preview"] and rows["b.png"]["preview"] is None
    runs = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[_run_id(state)]))
    )
    names = sorted(r.name.rsplit("-", 1)[0] for r in runs)
    assert names == ["fit-palette"] * 2 + ["inspect-source"] * 2 + ["write-verify-preview"] * 2
    logs = _logs(client, _run_id(state), "no preview: ")
    assert any("b.png-preview.png: no preview: " in m for m in logs)
