"""Bounded resources, on real processes: memory per dask thread, tiles above the decoding
budget, out of memory while decoding, zarr arrays of tiny chunks, tiny TIFF tiles."""

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from helpers import photo_like

from kquant import errors, pipeline
from kquant.io import readers
from kquant.params import QuantizeParams

# Runs `python -m kquant ARGS` as its only child and prints the child's peak RSS (bytes).
_PEAK_RSS = """
import resource, subprocess, sys
p = subprocess.run([sys.executable, "-m", "kquant", *sys.argv[1:]], capture_output=True)
sys.stderr.buffer.write(p.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
sys.exit(p.returncode)
"""

#: Bound on the peak RSS each dask thread adds to a write pass (README, bench/README.md:
#: measured 7 MiB dithered, 38 MiB in CIELAB; before, 510 and 250-390 MiB).
PER_THREAD_MIB = 64


def _tiled_photo(path, size: int, tile: int = 512) -> None:
    import tifffile

    def tiles():
        for i in range((size // tile) ** 2):
            yield photo_like(tile, tile, seed=i)

    tifffile.imwrite(
        path,
        tiles(),
        shape=(size, size, 3),
        dtype=np.uint8,
        tile=(tile, tile),
        compression="zlib",
        photometric="rgb",
    )


def _peak_rss(args, threads: int) -> int:
    env = dict(os.environ, DASK_NUM_WORKERS=str(threads))
    p = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    return int(p.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("options", [["--dither", "blue-noise"], ["--space", "lab"]])
def test_write_pass_memory_does_not_grow_with_threads(tmp_path, options):
    """K=256 onto a 2048x2048 TIFF in 512x512 chunks at 1, 2 and 4 dask threads
    (DASK_NUM_WORKERS, as a user sets it): each thread adds less than PER_THREAD_MIB."""
    src = tmp_path / "photo.tif"
    _tiled_photo(src, 2048)
    palette = tmp_path / "p256.npy"
    np.save(palette, np.random.default_rng(0).integers(0, 256, (256, 3)).astype(np.uint8))
    peaks = {}
    for threads in (1, 2, 4):
        out = tmp_path / f"t{threads}.kquant"
        peaks[threads] = _peak_rss(
            ["quantize", src, out, "--palette", palette, "--chunk", 512, *options], threads
        )
    per_thread = {n: (peaks[n] - peaks[1]) / (n - 1) / 2**20 for n in (2, 4)}
    assert max(per_thread.values()) < PER_THREAD_MIB, (peaks, per_thread)


def _one_tile_tiff(path, rows: int, cols: int, *, tiled: bool = True) -> None:
    """A TIFF whose header says one tile (or strip) of rows x cols RGB pixels; its bytes
    are a few zeros compressed, so the file is tiny (only the header matters)."""
    import tifffile

    layout = {"tile": (rows, cols)} if tiled else {"rowsperstrip": rows}
    tifffile.imwrite(
        path,
        iter([zlib.compress(bytes(1024))]),
        shape=(rows, cols, 3),
        dtype=np.uint8,
        compression="zlib",
        photometric="rgb",
        bigtiff=True,
        **layout,
    )


def _cli(*args, env=None, timeout=120, preexec_fn=None):
    return subprocess.run(
        [sys.executable, "-m", "kquant", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def test_tile_above_the_budget_is_refused_before_decoding(tmp_path):
    big = tmp_path / "one-tile.tif"
    _one_tile_tiff(big, 32768, 32768)
    p = _cli("quantize", big, tmp_path / "out.kquant")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(
        f"kquant: error: {big}: a TIFF tile of 32768x32768 pixels decodes "
        "to 3.0 GiB, above the budget of 256.0 MiB per tile"
    )
    assert "KQUANT_MAX_TILE_BYTES" in p.stderr
    assert not (tmp_path / "out.kquant").exists()
    strip = tmp_path / "one-strip.tif"
    _one_tile_tiff(strip, 12000, 12000, tiled=False)
    with pytest.raises(errors.ImageTooLargeError, match="a TIFF strip of 12000x12000 pixels"):
        readers.inspect_image(strip)
    # the budget is configurable: a parameter, or the environment
    assert readers.inspect_image(big, max_tile_bytes=3 << 30).tile == (32768, 32768)
    small = tmp_path / "small.tif"
    _tiled_photo(small, 512, tile=256)
    env = dict(os.environ, KQUANT_MAX_TILE_BYTES=str(100_000))
    p = _cli("quantize", small, tmp_path / "s.kquant", env=env)
    assert (
        p.returncode == 2
        and "a TIFF tile of 256x256 pixels decodes to 192.0 KiB, above the budget of 97.7 KiB"
        in p.stderr
    ), p.stderr
    for bad in ("0", "lots"):
        env["KQUANT_MAX_TILE_BYTES"] = bad
        p = _cli("quantize", small, tmp_path / "s.kquant", env=env)
        assert p.returncode == 2 and "KQUANT_MAX_TILE_BYTES" in p.stderr, p.stderr
    assert not (tmp_path / "s.kquant").exists()


def _address_space_cap(limit):
    def apply():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def test_out_of_memory_while_decoding_names_the_file_and_the_tile(tmp_path):
    """A 3 GiB tile admitted by a raised budget, decoded under a 3 GiB address-space cap."""
    big = tmp_path / "one-tile.tif"
    _one_tile_tiff(big, 32768, 32768)
    env = dict(
        os.environ,
        KQUANT_MAX_TILE_BYTES=str(1 << 40),
        DASK_NUM_WORKERS="1",
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        MALLOC_ARENA_MAX="2",
    )
    p = _cli(
        "quantize", big, tmp_path / "out.kquant", env=env, preexec_fn=_address_space_cap(3 << 30)
    )
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(
        f"kquant: error: {big}: out of memory decoding TIFF tile 0 of 1 "
        "(32768x32768 pixels, 3.0 GiB decoded)"
    ), p.stderr
    assert not (tmp_path / "out.kquant").exists()


def test_error_reasons_are_never_empty():
    assert errors.reason(MemoryError()) == "MemoryError"
    assert errors.reason(ValueError("bad\n  value")) == "bad value"


def test_zarr_chunk_above_the_budget_is_refused(tmp_path):
    import zarr

    huge = tmp_path / "huge-chunk.zarr"
    zarr.create_array(huge, shape=(16384, 16384, 3), chunks=(16384, 16384, 3), dtype=np.uint8)
    with pytest.raises(errors.ImageTooLargeError, match="a zarr chunk of 16384x16384 pixels"):
        readers.inspect_image(huge)


def test_zarr_of_tiny_chunks_is_refused_at_once(tmp_path):
    """512x512 in 1x1 chunks: 262144 chunk reads a pass (~55 s each here); refused from
    its metadata (the chunks need not even exist), in one line saying how to rechunk."""
    import zarr

    src = tmp_path / "tiny.zarr"
    zarr.create_array(src, shape=(512, 512, 3), chunks=(1, 1, 3), dtype=np.uint8)
    p = _cli("quantize", src, tmp_path / "out.kquant", "-k", 4, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert f"{src}: its 262144 zarr chunks of 1x1 pixels are too small" in p.stderr
    assert "rechunk it first, e.g. dask.array.from_zarr(SRC, chunks=(2048, 2048, -1))" in p.stderr
    assert not (tmp_path / "out.kquant").exists()
    fewer = tmp_path / "fewer.zarr"  # below the count: read, in blocks of many chunks
    z = zarr.create_array(fewer, shape=(128, 256, 3), chunks=(8, 8, 3), dtype=np.uint8)
    img = photo_like(128, 256, seed=4)
    z[...] = img
    image = readers.open_image(fewer)
    assert image.numblocks == (1, 1, 1)
    assert np.array_equal(image.compute(), img)


def test_zarr_is_read_in_blocks_of_whole_native_chunks(tmp_path):
    import zarr

    src = tmp_path / "big-chunks.zarr"
    zarr.create_array(src, shape=(6000, 5000, 3), chunks=(3000, 2504, 3), dtype=np.uint8)
    assert readers.open_image(src).chunksize[:2] == (3000, 2504)
    mid = tmp_path / "mid-chunks.zarr"
    zarr.create_array(mid, shape=(6000, 5000, 3), chunks=(1000, 1000, 3), dtype=np.uint8)
    assert readers.open_image(mid).chunksize[:2] == (2000, 2000)


def test_tiny_tiff_tiles_are_sampled_in_windows_of_many_tiles(tmp_path):
    """A sample-mode sample of a TIFF of 16x16 tiles holds its 2**20 pixels (windows of one
    tile held 128 x 256 pixels in all); such tiles and one-row strips quantize as a PNG."""
    import dask
    import imageio.v3 as iio
    import tifffile

    import kquant

    img = photo_like(2048, 2048, seed=7)
    tiny = tmp_path / "tiles16.tif"
    tifffile.imwrite(tiny, img, tile=(16, 16), compression="zlib", photometric="rgb")
    params = QuantizeParams(k=8)
    (sample,) = dask.compute(
        pipeline.sample_graph(readers.inspect_image(tiny), params.sample_size, params)
    )
    assert len(sample) == params.sample_size
    small = img[:384, :320]
    png = tmp_path / "p.png"
    iio.imwrite(png, small)
    palette = np.random.default_rng(1).integers(0, 256, (16, 3)).astype(np.uint8)
    ref = kquant.quantize(png, tmp_path / "png.kquant", params, palette=palette)
    for name, layout in (("tiles16", {"tile": (16, 16)}), ("strips1", {"rowsperstrip": 1})):
        path = tmp_path / f"small-{name}.tif"
        tifffile.imwrite(path, small, compression="zlib", photometric="rgb", **layout)
        res = kquant.quantize(path, tmp_path / f"{name}.kquant", params, palette=palette)
        assert res.meta.metrics["sse"] == ref.meta.metrics["sse"]
        assert np.array_equal(
            np.asarray(kquant.open_store(res.target).labels),
            np.asarray(kquant.open_store(ref.target).labels),
        )
