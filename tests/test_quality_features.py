"""Issue 5 features: perceptual spaces, ordered dithering, imposed palettes, export, target PSNR."""

import subprocess
import sys

import numpy as np
import pytest

import kquant
from helpers import photo_like, run_cli_listing_modules
from kquant import colorspace, dither, palette_io
from kquant.errors import InputError, ParameterError
from kquant.params import QuantizeParams
from oracles import nearest_oracle


# --------------------------------------------------------------------------- colour spaces

def test_lab_and_oklab_reference_values():
    white = np.array([255, 255, 255])
    assert np.allclose(colorspace.from_rgb(white, "lab"), [100, 0, 0], atol=1e-3)
    assert np.allclose(colorspace.from_rgb(white, "oklab"), [100, 0, 0], atol=1e-2)
    red = colorspace.from_rgb(np.array([255, 0, 0]), "lab")
    assert np.allclose(red, [53.24, 80.09, 67.20], atol=0.05)  # sRGB red in CIELAB (D65)
    from skimage.color import rgb2lab

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(200, 3))
    # skimage rounds its D65 white and matrix differently: agree to 0.01 Lab units
    assert np.allclose(colorspace.from_rgb(rgb, "lab"), rgb2lab((rgb / 255.0)[None])[0], atol=0.01)


@pytest.mark.parametrize("space", ["rgb", "oklab", "lab"])
def test_space_round_trip(space):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(1000, 3))
    back = colorspace.to_rgb(colorspace.from_rgb(rgb, space), space)
    assert np.abs(back - rgb).max() < 1e-6


@pytest.mark.parametrize("space", ["rgb", "oklab", "lab"])
def test_nearest_in_space_matches_brute_force(space):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(3000, 3), dtype=np.uint8)
    pal = rng.integers(0, 256, size=(13, 3), dtype=np.uint8)
    got = colorspace.nearest(pixels, pal, space)
    p, c = colorspace.from_rgb(pixels, space), colorspace.from_rgb(pal, space)
    d = ((p[:, None] - c[None]) ** 2).sum(2)
    best = d.min(1)
    # the chosen entry is a nearest one (ties may go either way only within float noise)
    assert np.allclose(d[np.arange(len(p)), got], best, rtol=0, atol=1e-9 * best.max())


def test_unknown_space_is_refused():
    with pytest.raises(ParameterError):
        colorspace.from_rgb(np.zeros(3), "hsv")
    with pytest.raises(ParameterError):
        QuantizeParams(space="hsv")


def test_lab_mode_lowers_the_perceptual_error(tmp_path):
    import imageio.v3 as iio

    img = photo_like(96, 120, seed=21)
    src = tmp_path / "p.png"
    iio.imwrite(src, img)
    lab_err = {}
    for space in ("rgb", "lab"):
        res = kquant.quantize(src, tmp_path / f"{space}.kq", QuantizeParams(k=12, space=space))
        st = kquant.open_store(res.target)
        labels = np.asarray(st.labels.compute())
        # labels are the nearest entries in that space
        assert np.array_equal(labels.ravel(), colorspace.nearest(img.reshape(-1, 3), st.palette, space))
        diff = colorspace.from_rgb(img, "lab") - colorspace.from_rgb(st.palette[labels], "lab")
        lab_err[space] = float((diff ** 2).sum())
        assert st.meta.params["space"] == space
    assert lab_err["lab"] < lab_err["rgb"]


# --------------------------------------------------------------------------- dithering

def test_bayer_matrix():
    assert np.array_equal(dither.bayer_matrix(2), [[0, 2], [3, 1]])
    m = dither.bayer_matrix(8)
    assert sorted(m.ravel()) == list(range(64))
    with pytest.raises(ParameterError):
        dither.bayer_matrix(6)
    t = dither.threshold(0, 0, 8, 8)
    assert -0.5 < t.min() and t.max() < 0.5 and abs(t.mean()) < 1e-12


def _low_frequency_power(ranks):
    """Power of the half-on pattern of a rank matrix below 0.15 cycles/px, relative to
    its mean power: ~1 for white noise, near 0 for blue noise."""
    on = (ranks < ranks.size // 2).astype(float)
    power = np.abs(np.fft.fft2(on - on.mean())) ** 2
    f = np.fft.fftfreq(len(ranks))
    radius = np.hypot(f[:, None], f[None, :])
    return power[(radius > 0) & (radius < 0.15)].mean() / power[radius > 0].mean()


def test_blue_noise_matrix():
    m = dither.blue_noise_matrix()
    assert m.shape == (64, 64) and sorted(m.ravel()) == list(range(4096))
    assert _low_frequency_power(m) < 0.1  # blue: little low-frequency power
    white = np.random.default_rng(0).permutation(4096).reshape(64, 64)
    assert _low_frequency_power(white) > 0.5
    assert _low_frequency_power(dither.bayer_matrix(64)) < 0.1
    small = dither.void_and_cluster(16, seed=3)
    assert sorted(small.ravel()) == list(range(256)) and _low_frequency_power(small) < 0.3
    with pytest.raises(ParameterError):
        dither.void_and_cluster(2)
    t = dither.threshold(60, 62, 8, 8, method="blue-noise")  # wraps around the 64x64 tile
    assert -0.5 < t.min() and t.max() < 0.5
    assert t[5, 3] == pytest.approx((m[(60 + 5) % 64, (62 + 3) % 64] + 0.5) / 4096 - 0.5)


@pytest.mark.parametrize("space,method", [("rgb", "bayer"), ("lab", "bayer"),
                                          ("rgb", "blue-noise"), ("lab", "blue-noise")])
def test_dither_blockwise_equals_whole_image(space, method):
    img = photo_like(77, 91, seed=14)
    pal = np.array([[0, 0, 0], [255, 255, 255], [200, 40, 40], [40, 200, 40], [40, 40, 200],
                    [128, 128, 128]], np.uint8)
    amt = dither.amount(pal)
    whole = dither.label_block(img, pal, space=space, dither=method, dither_amount=amt)
    for rows, cols in ((8, 8), (13, 24), (40, 16), (77, 91), (5, 90)):
        out = np.empty_like(whole)
        for y in range(0, 77, rows):
            for x in range(0, 91, cols):
                out[y:y + rows, x:x + cols] = dither.label_block(
                    img[y:y + rows, x:x + cols], pal, space=space, dither=method,
                    dither_amount=amt, y0=y, x0=x)
        assert np.array_equal(out, whole), (rows, cols)
    # numpy oracle of the whole image: threshold by global coordinates, round, nearest
    if space == "rgb":
        ranks = dither.bayer_matrix(8) if method == "bayer" else dither.blue_noise_matrix()
        n = len(ranks)
        y, x = np.mgrid[0:77, 0:91]
        t = ((ranks[y % n, x % n] + 0.5) / (n * n) - 0.5) * amt
        moved = np.clip(np.rint(img + t[:, :, None]), 0, 255)
        assert np.array_equal(whole, nearest_oracle(moved, pal))
    # a block of more than dither.SUB_PIXELS is labelled sub-block by sub-block (in a
    # perceptual space each distinct colour once, colorspace.Labeller; in RGB also
    # through the lookup table): the labels of small blocks
    big = photo_like(300, 260, seed=16)
    assert big.shape[0] * big.shape[1] > dither.SUB_PIXELS
    options = dict(space=space, dither=method, dither_amount=amt)
    whole = dither.label_block(big, pal, y0=5, x0=70, **options)
    out = np.empty_like(whole)
    for y in range(0, 300, 64):
        for x in range(0, 260, 48):
            out[y:y + 64, x:x + 48] = dither.label_block(big[y:y + 64, x:x + 48], pal,
                                                         y0=5 + y, x0=70 + x, **options)
    assert np.array_equal(out, whole)
    if space == "rgb":
        from kquant import lut

        assert np.array_equal(dither.label_block(big, pal, y0=5, x0=70, table=lut.build(pal),
                                                 **options), whole)


@pytest.mark.parametrize("method", ["bayer", "blue-noise"])
def test_dither_reproduces_grey_levels_with_black_and_white(method):
    ramp = np.repeat(np.linspace(0, 255, 256)[None, :], 32, axis=0)
    img = np.repeat(np.rint(ramp)[:, :, None], 3, axis=2).astype(np.uint8)
    pal = np.array([[0, 0, 0], [255, 255, 255]], np.uint8)
    plain = pal[dither.label_block(img, pal)].astype(float)
    dith = pal[dither.label_block(img, pal, dither=method, dither_amount=255.0)].astype(float)
    # local (8x8) means follow the ramp only when dithered
    def block_err(rec):
        a = rec[..., 0].reshape(4, 8, 32, 8).mean((1, 3))
        b = img[..., 0].astype(float).reshape(4, 8, 32, 8).mean((1, 3))
        return np.abs(a - b).mean()
    assert block_err(dith) < 10 < block_err(plain)
    assert np.array_equal(dither.label_block(img, pal, dither=method, dither_amount=0.0),
                          dither.label_block(img, pal))


@pytest.mark.parametrize("method", ["bayer", "blue-noise"])
def test_dithered_store_is_the_same_over_chunkings(tmp_path, method):
    import imageio.v3 as iio

    img = photo_like(70, 90, seed=15)
    src = tmp_path / "p.png"
    iio.imwrite(src, img)
    labels = []
    for chunk in (16, 40, None):
        res = kquant.quantize(src, tmp_path / f"c{chunk}.kq",
                              QuantizeParams(k=6, chunk=chunk, dither=method, restarts=0))
        st = kquant.open_store(res.target)
        labels.append((st.palette, np.asarray(st.labels.compute())))
        assert st.meta.metrics["dither_amount"] == pytest.approx(dither.amount(st.palette))
    for pal, lab in labels[1:]:
        assert np.array_equal(pal, labels[0][0]) and np.array_equal(lab, labels[0][1])
    pal, lab = labels[0]
    expect = dither.label_block(img, pal, dither=method, dither_amount=dither.amount(pal))
    assert np.array_equal(lab, expect)
    assert not np.array_equal(lab, nearest_oracle(img, pal))


# --------------------------------------------------------------------------- imposed palette

PAL = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 128, 255], [17, 200, 90]], np.uint8)


def _palette_files(tmp_path):
    from PIL import Image

    files = {}
    p = tmp_path / "p.gpl"
    p.write_text("GIMP Palette\nName: test\nColumns: 4\n#\n"
                 + "".join(f"{r:3d} {g:3d} {b:3d}\tc{i}\n" for i, (r, g, b) in enumerate(PAL)))
    files["gpl"] = p
    p = tmp_path / "p.txt"
    p.write_text("// hex and decimal\n#000000\nffffff\n255,0,0\n0 128 255\n\n#11C85A\n")
    files["txt"] = p
    p = tmp_path / "p.npy"
    np.save(p, PAL.astype(np.int64))
    files["npy"] = p
    p = tmp_path / "p.png"
    im = Image.fromarray(np.arange(5, dtype=np.uint8).reshape(1, 5), mode="P")
    im.putpalette(PAL.ravel().tolist())
    im.save(p)
    files["indexed png"] = p
    p = tmp_path / "swatch.png"
    Image.fromarray(PAL[None]).save(p)
    files["rgb swatch"] = p
    return files


def test_read_palette_formats(tmp_path):
    for name, path in _palette_files(tmp_path).items():
        assert np.array_equal(palette_io.read_palette(path), PAL), name


def test_read_palette_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("#000000\nnot a colour\n")
    with pytest.raises(InputError, match="bad.txt:2"):
        palette_io.read_palette(bad)
    big = tmp_path / "big.npy"
    np.save(big, np.zeros((300, 3), np.uint8))
    with pytest.raises(InputError):
        palette_io.read_palette(big)
    neg = tmp_path / "neg.npy"
    np.save(neg, np.array([[0, 0, -1]]))
    with pytest.raises(InputError):
        palette_io.read_palette(neg)
    with pytest.raises(InputError):
        palette_io.read_palette(tmp_path / "missing.gpl")


@pytest.mark.parametrize("kind", ["gpl", "store", "array"])
def test_remap_onto_an_imposed_palette(tmp_path, photo_png, kind):
    path, img = photo_png
    if kind == "store":
        first = kquant.quantize(path, tmp_path / "first.kq", QuantizeParams(k=7, restarts=0))
        palette, expect_pal = first.target, kquant.open_store(first.target).palette
    elif kind == "gpl":
        palette, expect_pal = _palette_files(tmp_path)["gpl"], PAL
    else:
        palette, expect_pal = PAL, PAL
    res = kquant.quantize(path, tmp_path / "remap.kq", QuantizeParams(chunk=64), palette=palette)
    st = kquant.open_store(res.target)
    assert np.array_equal(st.palette, expect_pal)  # kept as given, in its order
    labels = np.asarray(st.labels.compute())
    assert np.array_equal(labels, nearest_oracle(img, expect_pal))
    sse = int(((img.astype(np.int64) - expect_pal.astype(np.int64)[labels]) ** 2).sum())
    assert res.fit.sse == sse == st.meta.metrics["sse"]


# --------------------------------------------------------------------------- export

@pytest.mark.parametrize("k", [2, 5, 16, 200])
def test_export_png_and_tiff_round_trip(tmp_path, k):
    import imageio.v3 as iio
    import tifffile
    from PIL import Image

    from kquant import export

    img = photo_like(300, 270, seed=16)  # more than one 256-px TIFF tile
    src = tmp_path / "p.png"
    iio.imwrite(src, img)
    res = kquant.quantize(src, tmp_path / "s.kq", QuantizeParams(k=k, chunk=128, restarts=0))
    st = kquant.open_store(res.target)
    labels, rgb = np.asarray(st.labels.compute()), np.asarray(st.rgb.compute())
    png = export.export(res.target, tmp_path / "s.png")
    with Image.open(png) as im:
        assert im.mode == "P"
        assert np.array_equal(np.asarray(im), labels)
        assert np.array_equal(np.asarray(im.convert("RGB")), rgb)
    tif = export.export(res.target, tmp_path / "s.tif")
    with tifffile.TiffFile(tif) as tf:
        page = tf.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        assert np.array_equal(page.asarray(), labels)
        cmap = page.colormap
        assert np.array_equal(cmap[:, :len(st.palette)].T // 257, st.palette)
    with Image.open(tif) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), rgb)


def test_export_refuses_bad_suffix_and_existing(tmp_path, photo_png):
    from kquant import export
    from kquant.errors import TargetExistsError

    path, _ = photo_png
    res = kquant.quantize(path, tmp_path / "s.kq", QuantizeParams(k=4, restarts=0))
    with pytest.raises(ParameterError):
        export.export(res.target, tmp_path / "s.jpg")
    out = export.export(res.target, tmp_path / "s.png")
    with pytest.raises(TargetExistsError):
        export.export(res.target, out)
    export.export(res.target, out, overwrite=True)


# --------------------------------------------------------------------------- CLI

def run(*args):
    return subprocess.run([sys.executable, "-m", "kquant", *map(str, args)],
                          capture_output=True, text=True)


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
    assert np.array_equal(kquant.open_store(tmp_path / "r.kq").palette,
                          kquant.open_store(tmp_path / "t.kq").palette)
    p = run("export", tmp_path / "d.kq", tmp_path / "d.tif")
    assert p.returncode == 0 and (tmp_path / "d.tif").exists(), p.stderr
    p = run("quantize", path, tmp_path / "b.kq", "-k", "4", "--dither", "blue-noise", "--json")
    assert p.returncode == 0, p.stderr
    st = kquant.open_store(tmp_path / "b.kq")
    assert st.meta.params["dither"] == "blue-noise"
    expect = dither.label_block(img, st.palette, dither="blue-noise",
                                dither_amount=dither.amount(st.palette))
    assert np.array_equal(np.asarray(st.labels.compute()), expect)


@pytest.mark.parametrize("args", [
    ("--target-psnr", "0"),
    ("--target-psnr", "abc"),
    ("--space", "hsv"),
    ("--dither", "floyd"),
    ("--palette", "MISSING.gpl"),
])
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
    p = run_cli_listing_modules(["quantize", path, tmp_path / "q.kq", "-k", "8"],
                                ("distributed", "numba", "sparse", "dask_ml", "sklearn"),
                                after="import sparse\nprint('sparse importable afterwards')")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-2:] == ["0", "sparse importable afterwards"]


# --------------------------------------------------------------------------- store format 2

@pytest.mark.parametrize("n, bits", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 4), (8, 4), (16, 4),
                                     (17, 8), (64, 8), (256, 8)])
def test_storage_bits(n, bits):
    from kquant import packing

    assert packing.storage_bits(n) == bits


def test_format_1_stores_still_read(tmp_path):
    """A version-1 store (3 bits a pixel for 5 colours) decodes as before."""
    from kquant import packing, store

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 5, size=(20, 27)).astype(np.uint8)
    pal = rng.integers(0, 256, size=(5, 3), dtype=np.uint8)
    meta = store.StoreMeta(height=20, width=27, k=5, n_colors=5, bits=3, chunk_rows=8,
                           chunk_cols=16, format_version=1)
    with store.StoreWriter(tmp_path / "v1.kq", meta, pal) as w:
        digests = {}
        for i, r0 in enumerate(range(0, 20, 8)):
            for j, c0 in enumerate(range(0, 27, 16)):
                packed = packing.pack_rows(labels[r0:r0 + 8, c0:c0 + 16], 3)
                store.write_packed_chunk(w.root, packed, r0, c0 * 3 // 8, meta.packed_chunks)
                digests[(i, j)] = store.chunk_digest(packed)
        w.commit(metrics={}, checksum=store.combine_digests(digests))
    st = kquant.open_store(tmp_path / "v1.kq")
    assert st.meta.format_version == 1 and st.meta.bits == 3
    assert np.array_equal(np.asarray(st.labels.compute()), labels)
    st.verify()
    with pytest.raises(Exception):  # a version-2 store must use 4 bits for 5 colours
        store.StoreMeta(height=20, width=27, k=5, n_colors=5, bits=3, chunk_rows=8, chunk_cols=16)


def test_new_stores_are_format_2_with_compact_metadata(tmp_path, photo_png):
    import json

    path, img = photo_png
    res = kquant.quantize(path, tmp_path / "s.kq", QuantizeParams(k=8, restarts=0))
    st = kquant.open_store(res.target)
    assert st.meta.format_version == 2 and st.meta.bits == 4
    text = (tmp_path / "s.kq" / "zarr.json").read_text()
    assert "\n" not in text.strip() and json.loads(text)["attributes"]["kquant"]["bits"] == 4
    assert np.array_equal(np.asarray(st.labels.compute()), nearest_oracle(img, st.palette))
