"""The flows on S3-compatible object storage: moto's S3 server on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import moto_s3, photo_like, write_png

from kquant.params import QuantizeParams


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback, the environment pointing at it, a bucket ``kqflows``."""
    with moto_s3(tmp_path_factory.mktemp("moto"), "kqflows") as fs:
        yield fs


def _artifacts(client, flow_run_id) -> dict:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    arts = client.read_artifacts(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )
    return {a.key: a for a in arts}


def test_quantize_image_s3_to_s3_with_cached_rerun(harness, client, s3, tmp_path):
    from flows.quantize import quantize_image
    from kquant.store import open_store

    s3.put_file(
        str(write_png(tmp_path / "p.png", photo_like(60, 90, seed=41))), "kqflows/src/p.png"
    )
    state = quantize_image(
        source="s3://kqflows/src/p.png",
        target="s3://kqflows/st/p.kquant",
        params=QuantizeParams(k=6, sample_size=3000),
        return_state=True,
    )
    assert state.is_completed(), state.message
    r = state.result()
    assert r["target"] == "s3://kqflows/st/p.kquant" and r["fit_cached"] is False
    st = open_store("s3://kqflows/st/p.kquant")
    st.verify()
    assert s3.exists("kqflows/st/p-preview.png") and r["preview"] == "s3://kqflows/st/p-preview.png"
    arts = _artifacts(client, state.state_details.flow_run_id)
    assert "s3://kqflows/st/p.kquant" in arts["p-kquant-summary"].data
    # the preview, read back from the object store, inline in the summary
    assert "](data:image/jpeg;base64," in arts["p-kquant-summary"].data

    # same object (same ETag, size, mtime) and parameters: already done, nothing rewritten
    written = s3.info("kqflows/st/p.kquant/zarr.json")["LastModified"]
    again = quantize_image(
        source="s3://kqflows/src/p.png",
        target="s3://kqflows/st/p.kquant",
        params=QuantizeParams(k=6, sample_size=3000),
        return_state=True,
    )
    assert again.is_completed() and again.result()["already_done"] is True, again.message
    s3.invalidate_cache()
    assert s3.info("kqflows/st/p.kquant/zarr.json")["LastModified"] == written
    # with overwrite: rewritten, and the fit comes from the cache (same identity)
    over = quantize_image(
        source="s3://kqflows/src/p.png",
        target="s3://kqflows/st/p.kquant",
        params=QuantizeParams(k=6, sample_size=3000),
        overwrite=True,
        return_state=True,
    )
    assert over.is_completed(), over.message
    assert over.result()["fit_cached"] is True and over.result()["already_done"] is False
    assert np.array_equal(open_store("s3://kqflows/st/p.kquant").palette, st.palette)
    # other parameters: the target exists, refused unless overwrite
    other = quantize_image(
        source="s3://kqflows/src/p.png",
        target="s3://kqflows/st/p.kquant",
        params=QuantizeParams(k=5, sample_size=3000),
        return_state=True,
    )
    assert other.is_failed() and "exists" in other.message and "overwrite=true" in other.message


def test_batch_over_an_s3_prefix(harness, client, s3, tmp_path):
    from flows.batch import quantize_batch
    from kquant.store import open_store

    big = photo_like(48, 120, seed=42)
    for i in range(3):
        s3.put_file(
            str(write_png(tmp_path / f"t{i}.png", big[:, 40 * i : 40 * (i + 1)])),
            f"kqflows/inbox/t{i}.png",
        )
    s3.pipe_file("kqflows/inbox/notes.txt", b"not an image")
    kw = dict(
        inbox="s3://kqflows/inbox",
        outbox="s3://kqflows/outbox",
        params=QuantizeParams(k=5, sample_size=3000),
        shared_palette=True,
        settle_seconds=0,
    )
    state = quantize_batch(**kw, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["processed"] == ["t0.png", "t1.png", "t2.png"]
    stores = [open_store(f"s3://kqflows/outbox/t{i}.png.kquant") for i in range(3)]
    for st in stores:
        st.verify()
    assert all(np.array_equal(st.palette, stores[0].palette) for st in stores)
    assert s3.exists("kqflows/outbox/t0.png-preview.png")

    s3.put_file(
        str(write_png(tmp_path / "t3.png", photo_like(30, 40, seed=43))), "kqflows/inbox/t3.png"
    )
    again = quantize_batch(**kw, return_state=True)
    assert again.is_completed(), again.message
    assert again.result()["processed"] == ["t3.png"]
    assert again.result()["skipped"] == ["t0.png", "t1.png", "t2.png"]
    assert np.array_equal(
        open_store("s3://kqflows/outbox/t3.png.kquant").palette, stores[0].palette
    )
    rows = json.loads(
        _artifacts(client, again.state_details.flow_run_id)["kquant-batch-outbox-images"].data
    )
    assert sorted(r["status"] for r in rows) == ["skipped (store exists)"] * 3 + ["written"]
