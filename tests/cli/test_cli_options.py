"""The command line's options: spaces, dithering, imposed palettes, export, target PSNR, imports."""

import subprocess
import sys

import numpy as np
import pytest
from helpers import run_cli_listing_modules

import kquant
from kquant.label import dither


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "kquant", *map(str, args)], capture_output=True, text=True
    )


def test_cli_features(tmp_path, photo_png):
    path, img = photo_png
    p = run("quantize", path, tmp_path / "t.kq", "-k", "64", "--target-psnr", "24", "--json")
    assert p.returncode == 0, p.stderr
    import json

    meta = json.loads(p.stdout)["meta"]
    assert meta["metrics"]["target_psnr_met"] and meta["metrics"]["psnr"] >= 24
    assert meta["n_colors"] < 64
    p = run("quantize", path, tmp_path / "d.kq", "-k", "8", "--space", "lab", "--dither", "bayer")
    assert p.returncode == 0, p.stderr
    p = run("quantize", path, tmp_path / "r.kq", "--palette", tmp_path / "t.kq")
    assert p.returncode == 0, p.stderr
    assert np.array_equal(
        kquant.open_store(tmp_path / "r.kq").palette, kquant.open_store(tmp_path / "t.kq").palette
    )
    p = run("export", tmp_path / "d.kq", tmp_path / "d.tif")
    assert p.returncode == 0 and (tmp_path / "d.tif").exists(), p.stderr
    p = run("quantize", path, tmp_path / "b.kq", "-k", "4", "--dither", "blue-noise", "--json")
    assert p.returncode == 0, p.stderr
    st = kquant.open_store(tmp_path / "b.kq")
    assert st.meta.params["dither"] == "blue-noise"
    expect = dither.label_block(
        img, st.palette, dither="blue-noise", dither_amount=dither.amount(st.palette)
    )
    assert np.array_equal(np.asarray(st.labels.compute()), expect)


@pytest.mark.parametrize(
    "args",
    [
        ("--target-psnr", "0"),
        ("--target-psnr", "abc"),
        ("--space", "hsv"),
        ("--dither", "floyd"),
        ("--palette", "MISSING.gpl"),
    ],
)
def test_cli_bad_feature_options(tmp_path, photo_png, args):
    path, _ = photo_png
    args = tuple(str(tmp_path / a) if a == "MISSING.gpl" else a for a in args)
    p = run("quantize", path, tmp_path / "x.kq", *args)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kquant: error:")
    assert not (tmp_path / "x.kq").exists()
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".x.kq")]


def test_cli_export_errors(tmp_path, photo_png):
    path, _ = photo_png
    assert run("quantize", path, tmp_path / "s.kq", "-k", "4", "--restarts", "0").returncode == 0
    for out in ("s.jpg", "missing.kq"):
        store = tmp_path / ("s.kq" if out == "s.jpg" else out)
        p = run("export", store, tmp_path / "o.png" if out != "s.jpg" else tmp_path / out)
        assert p.returncode != 0 and p.stderr.startswith("kquant: error:")
        assert len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "s.jpg").exists()


def test_cli_quantize_imports_only_what_it_needs(tmp_path, photo_png):
    """No distributed, numba, dask-ml or scikit-learn on the local path of a small image."""
    path, _ = photo_png
    p = run_cli_listing_modules(
        ["quantize", path, tmp_path / "q.kq", "-k", "8"],
        ("distributed", "numba", "sparse", "dask_ml", "sklearn"),
        after="import sparse\nprint('sparse importable afterwards')",
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-2:] == ["0", "sparse importable afterwards"]
