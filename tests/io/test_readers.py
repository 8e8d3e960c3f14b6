"""Readers: PNG, JPEG, TIFF, zarr inputs to RGB, orientation, limits, refusals."""

import struct
import zlib

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr
from helpers import photo_like
from PIL import Image, ImageOps

import kquant
from kquant.errors import ImageTooLargeError, InputError
from kquant.io import convert, pillow, readers


def _read(path, **kw):
    return np.asarray(kquant.open_image(path, **kw).compute(scheduler="threads"))


def _png_header_only(width, height):
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_png_rgb_round_trip_and_chunking(tmp_path):
    img = photo_like(70, 90)
    iio.imwrite(tmp_path / "a.png", img)
    arr = kquant.open_image(tmp_path / "a.png", chunks=30)
    assert arr.dtype == np.uint8 and arr.shape == (70, 90, 3)
    assert arr.chunks[0][0] == 32 and arr.chunks[1][0] == 32  # rounded up to a multiple of 8
    assert np.array_equal(arr.compute(), img)


def test_grey_is_replicated(tmp_path):
    grey = photo_like(20, 30)[:, :, 0]
    iio.imwrite(tmp_path / "g.png", grey)
    out = _read(tmp_path / "g.png")
    assert np.array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


def test_16_bit_grey_is_scaled(tmp_path):
    grey16 = (np.arange(600, dtype=np.uint32).reshape(20, 30) * 109).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    out = _read(tmp_path / "g16.png")
    assert np.array_equal(out[:, :, 0], np.rint(grey16 / 257.0).astype(np.uint8))


def test_rgba_is_composited_over_white(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(25, 35, 4), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", rgba)
    out = _read(tmp_path / "a.png")
    c, a = rgba[:, :, :3].astype(float), rgba[:, :, 3:].astype(float)
    expected = np.rint((c * a + 255.0 * (255.0 - a)) / 255.0).astype(np.uint8)
    assert np.array_equal(out, expected)
    black = _read(tmp_path / "a.png", background=(0, 0, 0))
    assert np.array_equal(black, np.rint(c * a / 255.0).astype(np.uint8))


def test_palette_png_is_expanded(tmp_path):
    img = photo_like(30, 40)
    pal_img = Image.fromarray(img).quantize(colors=12)
    pal_img.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.array_equal(_read(tmp_path / "p.png"), np.asarray(pal_img.convert("RGB")))


def test_exif_orientation_is_applied(tmp_path):
    img = photo_like(30, 50)
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    pil.save(tmp_path / "r.png", exif=exif)
    src = readers.inspect_image(tmp_path / "r.png")
    assert src.orientation == 6 and (src.height, src.width) == (50, 30)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "r.png")).convert("RGB"))
    assert np.array_equal(_read(tmp_path / "r.png"), expected)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_matches_pillow(tmp_path, orientation):
    img = photo_like(24, 40)
    path = tmp_path / "o.tif"
    tifffile.imwrite(path, img, photometric="rgb", extratags=[(274, 3, 1, orientation, True)])
    pil = ImageOps.exif_transpose(Image.open(path))
    assert np.array_equal(_read(path, chunks=16), np.asarray(pil.convert("RGB")))


def test_tiled_tiff_is_lazy_and_tile_aligned(tmp_path):
    img = photo_like(300, 500)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, img, tile=(128, 128), compression="zlib", photometric="rgb")
    arr = kquant.open_image(path, chunks=300)
    assert arr.chunks[0][0] == 256 and arr.chunks[1][0] == 256  # whole tiles
    assert np.array_equal(arr[100:250, 300:480].compute(), img[100:250, 300:480])
    assert np.array_equal(arr.compute(), img)


def test_striped_planar_and_16_bit_tiff(tmp_path):
    img = photo_like(60, 70)
    tifffile.imwrite(tmp_path / "s.tif", img, rowsperstrip=8, photometric="rgb")
    assert np.array_equal(_read(tmp_path / "s.tif", chunks=16), img)
    tifffile.imwrite(
        tmp_path / "p.tif", np.moveaxis(img, 2, 0), planarconfig="separate", photometric="rgb"
    )
    assert np.array_equal(_read(tmp_path / "p.tif"), img)
    img16 = img.astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / "16.tif", img16, photometric="rgb", tile=(32, 32))
    assert np.array_equal(_read(tmp_path / "16.tif"), img)


def test_palette_and_miniswhite_tiff(tmp_path):
    idx = (photo_like(40, 48)[:, :, 0] // 64).astype(np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :4] = np.array([[0, 100, 200, 255], [10, 20, 30, 40], [255, 0, 128, 64]]) * 257
    tifffile.imwrite(tmp_path / "pal.tif", idx, photometric="palette", colormap=cmap)
    out = _read(tmp_path / "pal.tif")
    assert np.array_equal(out, (cmap[:, :4].T // 257).astype(np.uint8)[idx])
    grey = photo_like(16, 24)[:, :, 1]
    tifffile.imwrite(tmp_path / "w.tif", grey, photometric="miniswhite")
    assert np.array_equal(_read(tmp_path / "w.tif")[:, :, 0], 255 - grey)


def test_zarr_array_input(tmp_path):
    img = photo_like(50, 60)
    z = zarr.create_array(
        str(tmp_path / "img.zarr"), shape=img.shape, dtype="uint8", chunks=(16, 16, 3)
    )
    z[...] = img
    assert np.array_equal(_read(tmp_path / "img.zarr", chunks=24), img)
    f = zarr.create_array(str(tmp_path / "f.zarr"), shape=(4, 4, 3), dtype="float32")
    f[...] = np.full((4, 4, 3), np.nan, np.float32)
    with pytest.raises(InputError, match="NaN"):
        _read(tmp_path / "f.zarr")


def test_float_rule():
    block = np.array([[[0.0, 0.5, 1.0]]], np.float32)
    assert convert.to_rgb8(block).tolist() == [[[0, 128, 255]]]
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        convert.to_rgb8(block * 2)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "empty"),
        (b"hello, I am text pretending to be a picture\n", "not a recognised image"),
        (bytes(range(256)) * 8, "not a recognised image"),
    ],
)
def test_not_images(tmp_path, content, match):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        kquant.open_image(path)


def test_truncated_png_is_rejected(tmp_path):
    iio.imwrite(tmp_path / "ok.png", photo_like(64, 64))
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.png"):
        _read(tmp_path / "cut.png")


def test_header_bomb_is_rejected_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    with pytest.raises(ImageTooLargeError, match="10000000000 pixels"):
        kquant.open_image(tmp_path / "bomb.png")
    iio.imwrite(tmp_path / "small.png", photo_like(40, 40))
    with pytest.raises(ImageTooLargeError):
        kquant.open_image(tmp_path / "small.png", max_pixels=1000)


def test_multi_frame_inputs_are_rejected(tmp_path):
    frames = np.stack([photo_like(20, 20, seed=s) for s in range(3)])
    iio.imwrite(tmp_path / "anim.gif", frames, loop=0)
    with pytest.raises(InputError, match="3 frames"):
        kquant.open_image(tmp_path / "anim.gif")
    tifffile.imwrite(tmp_path / "multi.tif", frames, photometric="rgb")
    with pytest.raises(InputError, match="multi-page"):
        kquant.open_image(tmp_path / "multi.tif")


def test_missing_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        kquant.open_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="directory"):
        kquant.open_image(tmp_path)


def test_bigtiff_tiled_and_striped_chunks_follow_the_file(tmp_path):
    img = photo_like(200, 260)
    tifffile.imwrite(
        tmp_path / "b.tif", img, tile=(48, 64), compression="zlib", bigtiff=True, photometric="rgb"
    )
    with open(tmp_path / "b.tif", "rb") as fh:
        assert fh.read(4) == b"II+\x00"  # BigTIFF
    arr = kquant.open_image(tmp_path / "b.tif", chunks=100)
    assert arr.chunks[0][0] == 96 and arr.chunks[1][0] == 64  # whole tiles
    assert np.array_equal(arr.compute(), img)
    tifffile.imwrite(
        tmp_path / "s.tif", img, rowsperstrip=24, photometric="rgb", compression="zlib"
    )
    arr = kquant.open_image(tmp_path / "s.tif", chunks=100)
    assert arr.chunks[0][0] == 96 and arr.chunks[1] == (260,)  # whole strips, full width
    assert np.array_equal(arr.compute(), img)


def test_png_exif_after_the_pixels_is_applied(tmp_path):
    """Orientation in an eXIf chunk after IDAT (Pillow finds it only by decoding): still read."""
    img = photo_like(30, 50)
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6
    pil.save(tmp_path / "early.png", exif=exif)
    data = (tmp_path / "early.png").read_bytes()
    chunks, pos = [], 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        chunks.append(data[pos : pos + 12 + length])
        pos += 12 + length
    tags = [c[4:8] for c in chunks]
    exif_chunk = chunks[tags.index(b"eXIf")]
    rest = [c for c in chunks if c[4:8] != b"eXIf"]
    late = rest[:-1] + [exif_chunk, rest[-1]]  # ... IDAT, eXIf, IEND
    assert [c[4:8] for c in late].index(b"eXIf") > [c[4:8] for c in late].index(b"IDAT")
    (tmp_path / "late.png").write_bytes(data[:8] + b"".join(late))
    for name in ("early.png", "late.png"):
        src = kquant.inspect_image(tmp_path / name)
        assert src.orientation == 6 and (src.height, src.width) == (50, 30)
        assert np.array_equal(_read(tmp_path / name), np.rot90(img, -1))


@pytest.mark.parametrize(
    "kind",
    [
        "rgb.png",
        "rgba.png",
        "l.png",
        "la.png",
        "rgb.jpg",
        "l.jpg",
        "rgb.bmp",
        "rgb.webp",
        "p.png",
        "p.gif",
        "i16.png",
        "oriented.jpg",
        "cmyk.jpg",
    ],
)
def test_plain_decode_equals_imageio(tmp_path, kind):
    """Plain modes are decoded by Pillow directly: the same array as imageio's plugin."""
    img = photo_like(33, 47, seed=4)
    name, ext = kind.split(".")
    pil = {
        "rgb": lambda: Image.fromarray(img),
        "rgba": lambda: Image.fromarray(img).convert("RGBA"),
        "l": lambda: Image.fromarray(img).convert("L"),
        "la": lambda: Image.fromarray(img).convert("LA"),
        "p": lambda: Image.fromarray(img).quantize(30),
        "i16": lambda: Image.fromarray(img[..., 0].astype(np.uint16) * 257),
        "oriented": lambda: Image.fromarray(img),
        "cmyk": lambda: Image.fromarray(img).convert("CMYK"),
    }[name]()
    path = tmp_path / kind
    if name == "oriented":
        exif = pil.getexif()
        exif[0x0112] = 8
        pil.save(path, exif=exif)
    else:
        pil.save(path)
    data = path.read_bytes()
    plain = pillow._decode_plain(data)
    with Image.open(path) as im:
        expect_plain = im.mode in ("RGB", "RGBA", "L", "LA") and name != "oriented"
    assert (plain is not None) == expect_plain
    if plain is not None:
        ref = iio.imread(data, plugin="pillow", index=0, rotate=True)
        assert plain.dtype == ref.dtype and np.array_equal(plain, ref)
        assert np.array_equal(_read(path), convert.to_rgb8(ref))
    src = readers.inspect_image(path)
    assert _read(path).shape == (src.height, src.width, 3)
