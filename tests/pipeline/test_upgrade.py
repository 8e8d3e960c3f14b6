"""``kquant upgrade``: format-2 (and 1) stores rewritten as format 3, atomically, under the lock."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from helpers import files, photo_like, write_old_store
from oracles import pyramid_oracle

import kquant
from kquant.params import QuantizeParams


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "kquant", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture()
def v2_store(tmp_path, monkeypatch):
    """A format-2 store written by the pipeline, and a format-3 one of the same image and
    palette."""
    img = photo_like(150, 203, seed=21)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, img, photometric="rgb", tile=(32, 32))
    params = QuantizeParams(k=11, chunk=64)
    with monkeypatch.context() as m:
        m.setattr("kquant.store.format.WRITE_VERSION", 2)
        res = kquant.quantize(src, tmp_path / "old.kq", params)
    kquant.quantize(src, tmp_path / "new.kq", params, palette=res.palette)
    return tmp_path, img, res


def test_format_2_store_upgraded_in_place(v2_store):
    tmp, img, res = v2_store
    old = kquant.open_store(tmp / "old.kq")
    assert old.meta.format_version == 2
    labels = np.asarray(old.labels)
    out = _cli("upgrade", tmp / "old.kq")
    assert out.returncode == 0, out.stderr
    assert "to format 3" in out.stdout
    st = kquant.open_store(tmp / "old.kq")
    assert st.meta.format_version == 3 and st.meta.checksum == old.meta.checksum
    assert st.meta.source == old.meta.source and st.meta.params == old.meta.params
    assert st.meta.metrics["sse"] == old.meta.metrics["sse"]
    assert np.array_equal(np.asarray(st.labels), labels)
    st.verify()
    upgraded, fresh = files(tmp / "old.kq"), files(tmp / "new.kq")
    same = [n for n in fresh if n.startswith(("labels/", "palette/"))]
    assert same and all(upgraded[n] == fresh[n] for n in same)  # the bytes a new store has
    assert sorted(p.name for p in tmp.iterdir()) == ["in.tif", "new.kq", "old.kq"]
    again = _cli("upgrade", tmp / "old.kq")
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_upgrade_with_a_pyramid(v2_store):
    tmp, img, res = v2_store
    labels = np.asarray(kquant.open_store(tmp / "old.kq").labels)
    out = _cli("upgrade", tmp / "old.kq", "--pyramid")
    assert out.returncode == 0, out.stderr
    st = kquant.open_store(tmp / "old.kq")
    assert st.meta.levels == 3
    for n, lv in enumerate(pyramid_oracle(labels, st.meta.levels)):
        assert np.array_equal(np.asarray(st.level(n)), lv)


def test_format_1_store_upgraded(tmp_path):
    labels = np.random.default_rng(3).integers(0, 5, (30, 41)).astype(np.uint8)
    write_old_store(tmp_path / "v1.kq", labels, 5, 1)
    out = _cli("upgrade", tmp_path / "v1.kq")
    assert out.returncode == 0, out.stderr
    st = kquant.open_store(tmp_path / "v1.kq")
    assert (st.meta.format_version, st.meta.bits) == (3, 4)
    assert np.array_equal(np.asarray(st.labels), labels)
    st.verify()


def test_a_damaged_store_is_not_replaced(v2_store):
    """Labels that do not match the checksum: the upgrade fails, the old store stays."""
    tmp, img, res = v2_store
    chunk = tmp / "old.kq" / "labels" / "c" / "0" / "0"
    from numcodecs.zstd import Zstd

    raw = bytearray(Zstd().decode(chunk.read_bytes()))
    raw[5] ^= 0xFF
    chunk.write_bytes(bytes(Zstd(level=3).encode(bytes(raw))))
    before = files(tmp / "old.kq")
    out = _cli("upgrade", tmp / "old.kq")
    assert out.returncode != 0 and out.stderr.startswith("kquant: error:")
    assert "checksum" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert files(tmp / "old.kq") == before
    assert sorted(p.name for p in tmp.iterdir()) == ["in.tif", "new.kq", "old.kq"]


def test_a_locked_store_is_refused(v2_store):
    from kquant.store import locking

    tmp, img, res = v2_store
    target = str(tmp / "old.kq")
    locking.acquire(target)
    try:
        out = _cli("upgrade", target)
    finally:
        locking.release(target)
    assert out.returncode != 0 and "kquant: error:" in out.stderr
    assert (
        json.loads((tmp / "old.kq" / "zarr.json").read_text())["attributes"]["kquant"][
            "format_version"
        ]
        == 2
    )


def test_not_a_store(tmp_path):
    (tmp_path / "x").mkdir()
    out = _cli("upgrade", tmp_path / "x")
    assert out.returncode == 2 and out.stderr.startswith("kquant: error:")
