"""The flows with georeferenced, masked sources: ``nodata`` and ``export`` reach the stores
and the COGs, the summary names the COG (in-process, against the prefect_test_harness)."""

from __future__ import annotations

import numpy as np
import rasterio
from helpers import photo_like, write_geotiff

from kquant.params import QuantizeParams


def _collar_tif(path, seed, collar=24):
    img = photo_like(96, 128, seed=seed)
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    rgba[:collar, :, 3] = 0
    return write_geotiff(path, rgba, block=64)


def test_quantize_image_nodata_and_export_cog(harness, client, tmp_path):
    from flows.quantize import quantize_image
    from kquant.store import open_store

    src = _collar_tif(tmp_path / "ortho.tif", seed=1)
    state = quantize_image(
        source=str(src),
        target=str(tmp_path / "ortho.kquant"),
        params=QuantizeParams(k=8, sample_size=4000, export="cog"),
        preview=False,
        return_state=True,
    )
    assert state.is_completed(), state.message
    r = state.result()
    assert r["export"] == str(tmp_path / "ortho.cog.tif")
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    arts = client.read_artifacts(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    )
    summary = next(a for a in arts if a.key == "ortho-kquant-summary")
    assert (
        f"| export | `file://{tmp_path / 'ortho.cog.tif'}` (Cloud-Optimized GeoTIFF) |"
        in summary.data
    )
    st = open_store(tmp_path / "ortho.kquant")
    assert st.meta.nodata_index == 7 and st.meta.metrics["masked_pixels"] == 24 * 128
    with rasterio.open(src) as s, rasterio.open(r["export"]) as d:
        assert d.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert d.crs == s.crs and d.transform == s.transform and d.nodata == 7
        assert np.array_equal(d.read(1), np.asarray(st.labels.compute()))


def test_batch_shared_palette_masks_and_cogs(harness, tmp_path):
    from flows.batch import quantize_batch
    from kquant.store import open_store

    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    for i in range(2):
        _collar_tif(inbox / f"tile-{i}.tif", seed=i)
    state = quantize_batch(
        inbox=str(inbox),
        outbox=str(outbox),
        params=QuantizeParams(k=6, sample_size=4000, export="cog"),
        shared_palette=True,
        settle_seconds=0,
        preview=False,
        return_state=True,
    )
    assert state.is_completed(), state.message
    r = state.result()
    assert r["processed"] == ["tile-0.tif", "tile-1.tif"]
    stores = [open_store(outbox / f"tile-{i}.tif.kquant") for i in range(2)]
    assert all(np.array_equal(st.palette, stores[0].palette) for st in stores)
    assert [st.meta.nodata_index for st in stores] == [5, 5]  # 5 colours + the reserved one
    assert [row["export"] for row in r["results"]] == [
        str(outbox / f"tile-{i}.tif.cog.tif") for i in range(2)
    ]
    for i, st in enumerate(stores):
        labels = np.asarray(st.labels.compute())
        assert (labels[:24] == 5).all() and (labels[24:] != 5).all()
        with rasterio.open(outbox / f"tile-{i}.tif.cog.tif") as d:
            assert d.nodata == 5 and np.array_equal(d.read(1), labels)


def test_imposed_palette_on_a_masked_source_as_the_cli_does(harness, tmp_path):
    import kquant
    from flows.quantize import quantize_image

    src = _collar_tif(tmp_path / "m.tif", seed=3)
    pal = [[0, 0, 0], [250, 250, 250], [200, 30, 30], [30, 90, 200]]
    out = quantize_image(
        str(src), str(tmp_path / "m.kquant"), QuantizeParams(), preview=False, palette=pal
    )
    ref = kquant.quantize(src, tmp_path / "ref.kquant", QuantizeParams(), palette=np.array(pal))
    st = kquant.open_store(out["target"])
    assert st.meta.nodata_index == 4 == ref.meta.nodata_index
    assert np.array_equal(st.palette, kquant.open_store(ref.target).palette)
    assert st.meta.params == ref.meta.params
    assert np.array_equal(
        np.asarray(st.labels.compute()), np.asarray(kquant.open_store(ref.target).labels.compute())
    )


def test_an_existing_cog_fails_the_run_before_any_store(harness, tmp_path):
    from flows.quantize import quantize_image

    src = _collar_tif(tmp_path / "o.tif", seed=2)
    (tmp_path / "o.cog.tif").write_bytes(b"someone else's file")
    state = quantize_image(
        source=str(src),
        target=str(tmp_path / "o.kquant"),
        params=QuantizeParams(k=8, export="cog"),
        preview=False,
        return_state=True,
    )
    assert state.is_failed() and "o.cog.tif exists" in state.message
    assert not (tmp_path / "o.kquant").exists()
    assert (tmp_path / "o.cog.tif").read_bytes() == b"someone else's file"


def test_batch_refuses_one_export_path_for_many_stores(harness, tmp_path):
    from flows.batch import quantize_batch

    (tmp_path / "in").mkdir()
    state = quantize_batch(
        inbox=str(tmp_path / "in"),
        outbox=str(tmp_path / "out"),
        params=QuantizeParams(export=str(tmp_path / "one.tif")),
        return_state=True,
    )
    assert state.is_failed() and "export must be cog" in state.message
