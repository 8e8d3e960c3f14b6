"""The in-memory path (one-chunk images, no dask, no zarr) against the dask/zarr path."""

import imageio.v3 as iio
import numpy as np
import pytest
from helpers import files, photo_like, run_cli_listing_modules

import kquant
from kquant import errors, pipeline, store
from kquant.io import readers
from kquant.params import QuantizeParams
from kquant.pipeline import in_memory


def _both(src, tmp_path, monkeypatch, params, **kwargs):
    """Quantize ``src`` once by each path; return the two stores' files and results."""
    fast = pipeline.quantize(src, tmp_path / "fast.kq", params, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(in_memory, "eligible", lambda *a, **k: False)
        slow = pipeline.quantize(src, tmp_path / "dask.kq", params, **kwargs)
    return files(tmp_path / "fast.kq"), files(tmp_path / "dask.kq"), fast, slow


CASES = {
    "photo-k16": (photo_like(150, 213, seed=3), dict(k=16)),
    "photo-k2-1bit": (photo_like(61, 77, seed=1), dict(k=2, restarts=0)),
    "photo-k3-2bit": (photo_like(40, 90, seed=2), dict(k=3)),
    "photo-k64-8bit": (photo_like(97, 131, seed=4), dict(k=64, restarts=1)),
    "lab": (photo_like(80, 120, seed=5), dict(k=8, space="lab")),
    "oklab-bayer": (photo_like(80, 120, seed=6), dict(k=8, space="oklab", dither="bayer")),
    "bayer": (photo_like(72, 101, seed=7), dict(k=6, dither="bayer")),
    "target-psnr": (photo_like(64, 64, seed=8), dict(k=32, target_psnr=30.0)),
}


def _input(kind: str, path):
    from PIL import Image

    img = photo_like(70, 90, seed=11)
    if kind == "rgba":
        alpha = np.linspace(0, 255, 70 * 90).reshape(70, 90, 1).astype(np.uint8)
        iio.imwrite(path, np.concatenate([img, alpha], axis=2))
    elif kind == "grey":
        iio.imwrite(path, img[..., 1])
    elif kind == "grey16":
        iio.imwrite(path, (img[..., 0].astype(np.uint16) * 257))
    elif kind == "palette":
        Image.fromarray(img).quantize(40).save(path)
    elif kind == "oriented-jpeg":
        pil = Image.fromarray(img)
        exif = pil.getexif()
        exif[0x0112] = 6
        pil.save(path, exif=exif, quality=92)
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_inmemory_store_is_byte_identical_to_dask_store(case, tmp_path, monkeypatch):
    img, options = CASES[case]
    src = tmp_path / "in.png"
    iio.imwrite(src, img)
    fast, slow, res_fast, res_slow = _both(src, tmp_path, monkeypatch, QuantizeParams(**options))
    assert fast == slow
    assert set(fast) >= {"zarr.json", "palette/zarr.json", "labels/zarr.json", "labels/c/0/0"}
    assert res_fast.meta == res_slow.meta
    st = kquant.open_store(tmp_path / "fast.kq")
    st.verify()
    assert st.labels.shape == img.shape[:2]
    assert res_fast.meta.metrics["sse"] == int(
        ((img.astype(np.int64) - st.palette[np.asarray(st.labels)].astype(np.int64)) ** 2).sum()
    )


@pytest.mark.parametrize(
    "options",
    [dict(k=16), dict(k=256, restarts=0), dict(k=8, space="lab"), dict(k=8, dither="blue-noise")],
)
def test_lookup_table_sizes_are_byte_identical(options, tmp_path, monkeypatch):
    """From pipeline.LUT_MIN_PIXELS on, the dask path labels through kquant.label.lookup
    (numba), dithered or not (in RGB)."""
    monkeypatch.setattr("kquant.pipeline.plan.LUT_MIN_PIXELS", 0)
    img = photo_like(96, 140, seed=12)
    src = tmp_path / "lut.png"
    iio.imwrite(src, img)
    fast, slow, res, _ = _both(src, tmp_path, monkeypatch, QuantizeParams(**options))
    assert fast == slow
    assert res.meta.metrics["assign"] == ("direct" if "space" in options else "lut")
    kquant.open_store(tmp_path / "fast.kq").verify()


@pytest.mark.parametrize("colour", [(0, 0, 0), (200, 10, 30)])
def test_flat_images_skip_empty_chunks_as_zarr_does(colour, tmp_path, monkeypatch):
    """One colour: labels all 0 (zarr writes no such chunk); black: palette all 0 too."""
    img = np.broadcast_to(np.array(colour, np.uint8), (20, 30, 3)).copy()
    src = tmp_path / "flat.png"
    iio.imwrite(src, img)
    fast, slow, res, _ = _both(src, tmp_path, monkeypatch, QuantizeParams(k=4))
    assert fast == slow
    assert "labels/c/0/0" not in fast
    assert ("palette/c/0/0" in fast) == any(colour)
    st = kquant.open_store(tmp_path / "fast.kq")
    st.verify()
    assert res.meta.metrics["lossless"]
    assert np.array_equal(np.asarray(st.rgb), img)


def test_few_colours_and_odd_width(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    pal = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    img = pal[rng.integers(0, 5, (33, 45))]
    src = tmp_path / "few.png"
    iio.imwrite(src, img)
    fast, slow, res, _ = _both(src, tmp_path, monkeypatch, QuantizeParams(k=16))
    assert fast == slow and res.meta.metrics["lossless"]
    assert np.array_equal(np.asarray(kquant.open_store(tmp_path / "fast.kq").rgb), img)


def test_imposed_palette_and_preview(tmp_path, monkeypatch):
    img = photo_like(90, 70, seed=9)
    src = tmp_path / "p.jpg"
    iio.imwrite(src, img, quality=90)
    palette = np.array(
        [[0, 0, 0], [255, 255, 255], [200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8
    )
    fast, slow, _, _ = _both(src, tmp_path, monkeypatch, QuantizeParams(), palette=palette)
    assert fast == slow
    pipeline.quantize(src, tmp_path / "a.kq", QuantizeParams(k=4), preview_path=tmp_path / "a.png")
    with monkeypatch.context() as m:
        m.setattr(in_memory, "eligible", lambda *a, **k: False)
        pipeline.quantize(
            src, tmp_path / "b.kq", QuantizeParams(k=4), preview_path=tmp_path / "b.png"
        )
    assert np.array_equal(iio.imread(tmp_path / "a.png"), iio.imread(tmp_path / "b.png"))


def test_eligibility(tmp_path, monkeypatch):
    src_path = tmp_path / "e.png"
    iio.imwrite(src_path, photo_like(100, 60))
    src = readers.inspect_image(src_path)
    assert in_memory.eligible(src, QuantizeParams())
    assert in_memory.eligible(src, QuantizeParams(chunk=100))
    assert not in_memory.eligible(src, QuantizeParams(chunk=56))  # two chunks
    assert not in_memory.eligible(src, QuantizeParams(shard=4096))
    assert not in_memory.eligible(src, QuantizeParams(mode="sample"))
    assert not in_memory.eligible(src, QuantizeParams(sample_fit="always"))
    assert not in_memory.eligible(src, QuantizeParams(), address="tcp://127.0.0.1:1")
    assert not in_memory.eligible(src, QuantizeParams(), target="s3://bucket/x.kq")
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")
    assert not in_memory.eligible(src, QuantizeParams())
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    import tifffile

    tif = tmp_path / "e.tif"
    tifffile.imwrite(tif, photo_like(100, 60), photometric="rgb")
    assert not in_memory.eligible(readers.inspect_image(tif), QuantizeParams())


def test_direct_writer_protocol(tmp_path, monkeypatch):
    """Existing target refused, overwrite replaces it, a failed write leaves nothing."""
    img = photo_like(50, 40, seed=1)
    src = tmp_path / "w.png"
    iio.imwrite(src, img)
    target = tmp_path / "w.kq"
    pipeline.quantize(src, target, QuantizeParams(k=4))
    before = files(target)
    with pytest.raises(errors.TargetExistsError):
        pipeline.quantize(src, target, QuantizeParams(k=8))
    assert files(target) == before

    def boom(self, packed):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.DirectStoreWriter, "write_labels", boom)
    with pytest.raises(errors.NoSpaceError):
        pipeline.quantize(src, target, QuantizeParams(k=8), overwrite=True)
    assert files(target) == before  # the old store stays; no temporary store is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.kq", "w.png"]
    monkeypatch.undo()
    res = pipeline.quantize(src, target, QuantizeParams(k=8), overwrite=True)
    assert res.meta.n_colors == 8 and files(target) != before
    kquant.open_store(target).verify()


def test_direct_writer_refuses_other_layouts(tmp_path):
    meta = store.StoreMeta(
        height=10, width=64, k=4, n_colors=4, bits=2, chunk_rows=8, chunk_cols=64
    )
    with pytest.raises(errors.ParameterError):
        store.DirectStoreWriter(tmp_path / "x.kq", meta, np.zeros((4, 3), np.uint8))


def test_cli_small_image_imports_neither_dask_nor_zarr(tmp_path, photo_png):
    path, img = photo_png
    p = run_cli_listing_modules(
        ["quantize", path, tmp_path / "q.kq", "-k", "8"],
        ("dask", "zarr", "numba", "sparse"),
        after="import dask.array, sparse\nprint('dask.array and sparse importable afterwards')",
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-2:] == [
        "0",
        "dask.array and sparse importable afterwards",
    ]
    st = kquant.open_store(tmp_path / "q.kq")
    st.verify()
    assert st.labels.shape == img.shape[:2]


def test_cli_dask_path_still_skips_sparse(tmp_path, photo_png):
    """Two chunks: the dask path, still without pydata/sparse (nor numba)."""
    path, _ = photo_png
    p = run_cli_listing_modules(
        ["quantize", path, tmp_path / "q.kq", "-k", "8", "--chunk", "64"],
        ("dask.array", "zarr", "numba", "sparse"),
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "0 dask.array zarr"
    kquant.open_store(tmp_path / "q.kq").verify()


@pytest.mark.parametrize("kind", ["rgba", "grey", "grey16", "palette", "oriented-jpeg"])
def test_input_kinds_are_byte_identical(kind, tmp_path, monkeypatch):
    src = _input(kind, tmp_path / ("in.jpg" if kind.endswith("jpeg") else "in.png"))
    fast, slow, res, _ = _both(src, tmp_path, monkeypatch, QuantizeParams(k=12, restarts=1))
    assert fast == slow
    if kind == "oriented-jpeg":
        assert (res.meta.height, res.meta.width) == (90, 70)
    kquant.open_store(tmp_path / "fast.kq").verify()
