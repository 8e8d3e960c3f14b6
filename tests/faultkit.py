"""Helpers of the fault-injection tests (a plain module, not a conftest).

Shared by tests/test_faults.py and tests/flows/test_faults_prefect.py. ``FAULTS`` counts
the faults injected and the stores found complete that should not be.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import (
    files,  # noqa: F401  (re-exported for the fault tests)
    poll,
)

import kquant
from kquant.errors import IncompleteStoreError, StoreError
from kquant.store import locking, read_meta

DASK = str(Path(sys.executable).parent / "dask")
REPO = Path(__file__).resolve().parents[1]
#: Parameters of every run here: a 4096 x 4096 image, exact fit, 64 write blocks.
#: A run lasts about 10 s on 2 cores: ~6 s of reading and fitting, then ~3-4 s of writing.
ARGS = ("-k", "16", "--restarts", "0", "--seed", "3")
TILES = 8  # of 512 x 512 px

FAULTS: collections.Counter = collections.Counter()


# --------------------------------------------------------------------------- helpers


def run_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env.pop("KQUANT_DEBUG", None)
    return env


def spawn(log_dir: Path, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    """Start ``kquant ARGS`` in its own session (stdout/stderr to files in ``log_dir``)."""
    out = open(log_dir / f"{name}.out", "wb")
    err = open(log_dir / f"{name}.err", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kquant", *map(str, args)],
        stdout=out,
        stderr=err,
        env=env or run_env(),
        start_new_session=True,
        cwd=log_dir,
    )
    out.close()
    err.close()
    proc.stderr_path = log_dir / f"{name}.err"
    return proc


def stderr_of(proc) -> str:
    return proc.stderr_path.read_text(errors="replace")


def stop(proc: subprocess.Popen) -> None:
    """Kill a process started by :func:`spawn` (its whole group) if it is still alive."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def quantize_cli(src, target, *extra, timeout=300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kquant", "quantize", str(src), str(target), *ARGS, *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or run_env(),
    )


def tmp_dirs(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.kquant-tmp-*"))


def chunk_files(root: Path) -> int:
    return sum(1 for p in (root / "labels").rglob("*") if p.is_file() and p.name != "zarr.json")


def wait_until(
    pred, timeout: float, what: str, proc: subprocess.Popen | None = None, interval: float = 0.02
):
    def died():
        if proc is not None and proc.poll() is not None:
            return f"process exited ({proc.returncode}) before {what}:\n" + stderr_of(proc)[-2000:]
        return None

    return poll(pred, timeout, what, interval=interval, abort=died)


def wait_for_write_pass(proc, target: Path, timeout: float = 180, ignore=()) -> Path:
    """Poll until a hidden temporary store of ``target`` (not in ``ignore``) holds a label chunk."""

    def writing():
        for d in tmp_dirs(target):
            if d in ignore:
                continue
            try:
                if chunk_files(d) >= 1:
                    return d
            except FileNotFoundError:
                pass
        return None

    return wait_until(writing, timeout, f"the write pass of {target.name}", proc)


def assert_nothing_complete(target: Path, *, kind: str) -> None:
    """No store at ``target`` that opens as complete; every temporary store says ``writing``."""
    bad = 0
    if target.exists():
        try:
            kquant.open_store(target)
            bad += 1
        except (IncompleteStoreError, StoreError):
            pass
    for d in tmp_dirs(target):
        if (d / "zarr.json").exists() and read_meta(d).status != "writing":
            bad += 1
    for d in target.parent.iterdir():  # nothing else complete-looking beside it either
        if d.is_dir() and d.name.startswith(f".{target.name}") and (d / "zarr.json").exists():
            if read_meta(d).complete:
                bad += 1
    FAULTS[f"complete-but-should-not ({kind})"] += bad
    FAULTS["complete-but-should-not"] += bad
    assert bad == 0, f"{bad} complete-looking store(s) left after {kind}"
    assert not target.exists() or read_meta(target).status != "complete"


def lock_holder(target: Path) -> dict:
    return json.loads(Path(locking.lock_path(str(target))).read_text() or "{}")


def assert_clean_finish(target: Path, reference: Path) -> None:
    """A complete store, verified by the CLI, byte-identical to the clean run's; no lock left."""
    assert files(target) == files(reference), "store differs from the clean run's"
    p = subprocess.run(
        [sys.executable, "-m", "kquant", "info", "--verify", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        env=run_env(),
    )
    assert p.returncode == 0 and "checksum verified" in p.stdout, p.stderr
    assert not os.path.exists(locking.lock_path(str(target)))


def one_error_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{text}"
    return lines[0]


# --------------------------------------------------------------------------- inputs


def make_source(path: Path) -> Path:
    """A 4096 x 4096 tiled TIFF of photo tiles with 4 bits per channel (a fast exact fit)."""
    import tifffile

    sys.path.insert(0, str(REPO / "bench"))
    try:
        from make_mosaic import TILE, tiles
    finally:
        sys.path.remove(str(REPO / "bench"))
    tifffile.imwrite(
        path,
        (t & 0xF0 for t in tiles(TILES, TILES, seed=6)),
        shape=(TILES * TILE, TILES * TILE, 3),
        dtype=np.uint8,
        tile=(TILE, TILE),
        photometric="rgb",
        compression="zlib",
    )
    return path
