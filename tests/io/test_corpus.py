"""A corpus of bad and odd inputs, generated here: each is processed exactly or refused.

Refused inputs must give one line on stderr, a non-zero exit, within seconds and under a
memory cap, and leave nothing that looks like a store. Processed inputs are checked pixel
for pixel against an independent decode."""

import io
import json
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from helpers import photo_like
from PIL import Image, ImageOps

import kquant

TIME_CAP = 60.0


COUNTS = {"tried": 0, "processed": 0, "rejected": 0}


def _png(rows: np.ndarray, bit_depth: int, colour_type: int, *, bad_crc: bool = False) -> bytes:
    """A PNG written by hand (filter 0 on every row), for depths Pillow cannot write."""
    h, w = rows.shape[:2]

    def chunk(tag, data, corrupt=False):
        crc = zlib.crc32(tag + data) ^ (0xFFFFFFFF if corrupt else 0)
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    raw = rows.astype(">u2" if bit_depth == 16 else np.uint8).reshape(h, -1).view(np.uint8)
    data = b"".join(b"\x00" + raw[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(data), corrupt=bad_crc)
        + chunk(b"IEND", b"")
    )


def run_cli(*args, limit=True):
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "kquant", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limits if limit else None,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    return p, time.perf_counter() - t


def _make_rejects(d: Path) -> dict[str, tuple[bytes, str]]:
    good_png = d / "g.png"
    iio.imwrite(good_png, photo_like(64, 64))
    png = good_png.read_bytes()
    jpeg = _jpeg(photo_like(64, 64))
    tif_tmp = d / "tmp.tif"
    tifffile.imwrite(tif_tmp, photo_like(64, 64), photometric="rgb", compression="zlib")
    tif = tif_tmp.read_bytes()
    rng = np.random.default_rng(0)
    frames = [photo_like(16, 16, seed=s) for s in range(3)]
    gif = io.BytesIO()
    Image.fromarray(frames[0]).save(
        gif, format="GIF", save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]]
    )
    multi = io.BytesIO()
    tifffile.imwrite(multi, np.stack(frames), photometric="rgb")
    cmyk_tif = io.BytesIO()
    tifffile.imwrite(
        cmyk_tif, rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), photometric="separated"
    )
    nan_tif = io.BytesIO()
    f = np.full((16, 16, 3), 0.5, np.float32)
    f[3, 4, 1] = np.nan
    tifffile.imwrite(nan_tif, f, photometric="rgb")
    return {
        "truncated.png": (png[: len(png) // 2], "truncated.png"),
        "bad-crc.png": (_png(photo_like(8, 8), 8, 2, bad_crc=True), "bad-crc.png"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated.jpg"),
        "truncated.tif": (tif[: len(tif) // 2], "truncated.tif"),
        "corrupt-tile.tif": (_corrupt_tiff(tif_tmp), "corrupt-tile.tif"),
        "zero.png": (b"", "empty"),
        "text.jpg": (b"this is not a picture\n" * 20, "not a recognised image"),
        "random.tif": (rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "random.tif"),
        "random.png": (
            b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, 500, dtype=np.uint8).tobytes(),
            "random.png",
        ),
        "bomb.png": (_png_header_only(100_000, 100_000), "10000000000 pixels"),
        "bomb.jpg": (_sof_bomb(jpeg), "4294836225 pixels"),
        "bomb.tif": (_tiff_bomb(tif_tmp), "10000000000 pixels"),
        "animated.gif": (gif.getvalue(), "3 frames"),
        "multipage.tif": (multi.getvalue(), "multi-page"),
        "cmyk.tif": (cmyk_tif.getvalue(), "SEPARATED"),
        "nan.tif": (nan_tif.getvalue(), "NaN"),
    }


def _store_rgb(path: Path, tmp: Path, k: int = 16) -> np.ndarray:
    target = tmp / (path.name + ".kquant")
    p, _ = run_cli("quantize", path, target, "-k", str(k), "--restarts", "0", limit=False)
    assert p.returncode == 0, p.stderr
    COUNTS["tried"] += 1
    COUNTS["processed"] += 1
    return kquant.open_store(target).rgb.compute()


def _few_colours(h, w, n, seed=0):
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    return colours[rng.integers(0, n, size=(h, w))]


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature, IHDR (correct CRC) and IEND: a header-only bomb."""

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _limits():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _jpeg(img: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def _sof_bomb(jpeg: bytes) -> bytes:
    """The same JPEG with its frame header claiming 65535 x 65535 and its data cut off."""
    data = bytearray(jpeg)
    i = data.find(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", 65535, 65535)
    sos = data.find(b"\xff\xda")
    return bytes(data[: sos + 64])  # whole header, a few bytes of scan data


def _tiff_bomb(tmp: Path) -> bytes:
    tifffile.imwrite(tmp, np.zeros((64, 64, 3), np.uint8), tile=(16, 16), photometric="rgb")
    with tifffile.TiffFile(tmp) as tf:
        tags = tf.pages[0].tags
        spots = [
            (tags["ImageWidth"].valueoffset, tags["ImageWidth"].dtype),
            (tags["ImageLength"].valueoffset, tags["ImageLength"].dtype),
        ]
    data = bytearray(tmp.read_bytes())
    for off, _dtype in spots:
        data[off : off + 4] = struct.pack("<I", 100_000)  # 100000 x 100000 = 10^10 pixels
    return bytes(data)


def _corrupt_tiff(tmp: Path) -> bytes:
    tifffile.imwrite(
        tmp, photo_like(256, 256), tile=(64, 64), compression="zlib", photometric="rgb"
    )
    data = bytearray(tmp.read_bytes())
    with tifffile.TiffFile(tmp) as tf:
        off = tf.pages[0].dataoffsets[5]
    data[off : off + 64] = os.urandom(64)
    return bytes(data)


MEMORY_CAP = 3 * 2**30  # address-space cap for each refused run


def test_rejected_inputs(tmp_path):
    cases = _make_rejects(tmp_path)
    failures = []
    for name, (content, fragment) in cases.items():
        src = tmp_path / name
        src.write_bytes(content)
        target = tmp_path / f"{name}.kquant"
        p, seconds = run_cli("quantize", src, target, "-k", "8")
        COUNTS["tried"] += 1
        lines = p.stderr.strip().splitlines()
        ok = (
            p.returncode not in (0, None)
            and len(lines) == 1
            and lines[0].startswith("kquant: error:")
            and fragment in lines[0]
            and seconds < TIME_CAP
            and not target.exists()
            and not list(tmp_path.glob(f".{name}.kquant*"))
        )
        if ok:
            COUNTS["rejected"] += 1
        else:
            failures.append((name, p.returncode, round(seconds, 1), p.stderr[-400:]))
    assert not failures, failures


@pytest.mark.parametrize("shape", [(1, 1), (1, 53), (41, 1)])
def test_tiny_images_round_trip(tmp_path, shape):
    img = _few_colours(*shape, n=min(5, shape[0] * shape[1]))
    iio.imwrite(tmp_path / "tiny.png", img)
    assert np.array_equal(_store_rgb(tmp_path / "tiny.png", tmp_path), img)


def test_single_colour_and_fewer_colours_than_k(tmp_path):
    one = np.full((30, 40, 3), (12, 200, 77), np.uint8)
    iio.imwrite(tmp_path / "one.png", one)
    assert np.array_equal(_store_rgb(tmp_path / "one.png", tmp_path), one)
    assert kquant.open_store(tmp_path / "one.png.kquant").meta.n_colors == 1
    few = _few_colours(50, 60, 11, seed=3)
    iio.imwrite(tmp_path / "few.png", few)
    assert np.array_equal(_store_rgb(tmp_path / "few.png", tmp_path), few)


def test_grey_palette_rgba_16bit_float_are_converted_exactly(tmp_path):
    rng = np.random.default_rng(8)
    levels = np.array([0, 40, 90, 160, 255], np.uint8)
    # grey PNG with 5 levels -> replicated
    grey = levels[rng.integers(0, 5, (20, 30))]
    iio.imwrite(tmp_path / "grey.png", grey)
    assert np.array_equal(_store_rgb(tmp_path / "grey.png", tmp_path), np.dstack([grey] * 3))
    # 16-bit grey PNG (hand-written): round(v / 257)
    g16 = (levels.astype(np.uint16) * 257 + 100)[rng.integers(0, 5, (20, 30))]
    (tmp_path / "grey16.png").write_bytes(_png(g16, 16, 0))
    exp = np.rint(g16 / 257.0).astype(np.uint8)
    assert np.array_equal(_store_rgb(tmp_path / "grey16.png", tmp_path), np.dstack([exp] * 3))
    # 16-bit RGB PNG: Pillow reduces it to its high bytes (documented exception)
    rgb16 = _few_colours(20, 30, 6, seed=4).astype(np.uint16) * 257 + 90
    (tmp_path / "rgb16.png").write_bytes(_png(rgb16, 16, 2))
    assert np.array_equal(
        _store_rgb(tmp_path / "rgb16.png", tmp_path), (rgb16 >> 8).astype(np.uint8)
    )
    # palette PNG
    pal_img = Image.fromarray(_few_colours(25, 35, 7, seed=5)).quantize(colors=7)
    pal_img.save(tmp_path / "pal.png")
    assert np.array_equal(
        _store_rgb(tmp_path / "pal.png", tmp_path), np.asarray(pal_img.convert("RGB"))
    )
    # RGBA: composited over white
    rgba = np.dstack(
        [_few_colours(20, 20, 3, seed=6), np.where(np.eye(20) > 0, 0, 255).astype(np.uint8)]
    )
    iio.imwrite(tmp_path / "rgba.png", rgba)
    exp = np.where(np.eye(20)[:, :, None] > 0, 255, rgba[:, :, :3]).astype(np.uint8)
    assert np.array_equal(_store_rgb(tmp_path / "rgba.png", tmp_path), exp)
    # float TIFF in [0, 1] with few values
    fcolours = np.array(
        [[0, 0.25, 0.5], [1, 1, 1], [0.5, 0, 0.75], [0.1, 0.2, 0.3], [1, 0, 0]], np.float32
    )
    f = fcolours[rng.integers(0, 5, (16, 24))]
    tifffile.imwrite(tmp_path / "float.tif", f, photometric="rgb")
    assert np.array_equal(
        _store_rgb(tmp_path / "float.tif", tmp_path),
        np.rint(f.astype(np.float64) * 255).astype(np.uint8),
    )


def test_cmyk_and_rotated_jpeg(tmp_path):
    cmyk = Image.fromarray(_few_colours(32, 48, 4, seed=7)).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    expected = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB"))
    got = kquant.open_image(tmp_path / "cmyk.jpg").compute()
    assert np.array_equal(got, expected)
    rgb = _store_rgb(tmp_path / "cmyk.jpg", tmp_path, k=256)
    if len(np.unique(expected.reshape(-1, 3), axis=0)) <= 256:
        assert np.array_equal(rgb, expected)
    img = Image.fromarray(photo_like(30, 50))
    exif = img.getexif()
    exif[0x0112] = 8
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "rot.jpg")).convert("RGB"))
    got = kquant.open_image(tmp_path / "rot.jpg").compute()
    assert got.shape == (50, 30, 3) and np.array_equal(got, expected)
    COUNTS["tried"] += 1
    COUNTS["processed"] += 1


def test_zz_report_counts(tmp_path_factory):
    """Print the corpus counts (tried / processed / rejected) for the closing note."""
    out = Path(os.environ.get("KQUANT_CORPUS_REPORT", tmp_path_factory.mktemp("r") / "c.json"))
    out.write_text(json.dumps(COUNTS))
    print(f"\ncorpus: {COUNTS}")
    assert COUNTS["tried"] == COUNTS["processed"] + COUNTS["rejected"]
