"""Bounded resources, on real processes: memory per dask thread."""

import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import photo_like

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

    tifffile.imwrite(path, tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile),
                     compression="zlib", photometric="rgb")


def _peak_rss(args, threads: int) -> int:
    env = dict(os.environ, DASK_NUM_WORKERS=str(threads))
    p = subprocess.run([sys.executable, "-c", _PEAK_RSS, *map(str, args)], env=env,
                       capture_output=True, text=True, timeout=600)
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
        peaks[threads] = _peak_rss(["quantize", src, out, "--palette", palette, "--chunk", 512,
                                    *options], threads)
    per_thread = {n: (peaks[n] - peaks[1]) / (n - 1) / 2**20 for n in (2, 4)}
    assert max(per_thread.values()) < PER_THREAD_MIB, (peaks, per_thread)
