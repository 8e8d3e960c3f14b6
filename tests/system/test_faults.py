"""Faults injected into real processes, killed by PID: crashes, concurrent writers, Ctrl-C,
a full disk."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from faultkit import (
    ARGS,
    FAULTS,
    assert_clean_finish,
    assert_nothing_complete,
    chunk_files,
    files,
    lock_holder,
    make_source,
    one_error_line,
    quantize_cli,
    run_env,
    spawn,
    stderr_of,
    stop,
    tmp_dirs,
    wait_for_write_pass,
    wait_until,
)
from helpers import dask_processes

import kquant
from kquant.errors import IncompleteStoreError
from kquant.store import locking, read_meta


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_source(tmp_path_factory.mktemp("faults-src") / "mosaic.tif")


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> Path:
    """The clean run's store."""
    target = tmp_path_factory.mktemp("faults-ref") / "clean.kq"
    p = quantize_cli(source, target)
    assert p.returncode == 0, p.stderr
    return target


@pytest.fixture
def dask_cluster(tmp_path):
    """A real `dask scheduler` and `dask worker --nworkers 2 --nthreads 1` on 127.0.0.1."""
    logs = tmp_path / "dask"
    logs.mkdir()
    with dask_processes(logs, env=run_env()) as (address, worker):
        yield address, worker


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


@pytest.fixture
def small_tmpfs(tmp_path, reference):
    """A tmpfs about half the size of the clean store, mounted for this test only."""
    size = sum(len(b) for b in files(reference).values()) // 2
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({p.stderr.strip() or p.returncode}): "
            "the full-disk test needs root or CAP_SYS_ADMIN"
        )
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_kill9_cli_during_fit_then_during_write_then_rerun(source, reference, tmp_path):
    target = tmp_path / "s.kq"
    lock = Path(locking.lock_path(str(target)))

    # run 1, killed during the fit: the lock is held, no temporary store exists yet
    p1 = spawn(tmp_path, "run1", "quantize", source, target, *ARGS)
    try:
        wait_until(lock.exists, 120, "run 1 to take the lock", p1)
        time.sleep(1.0)  # well inside the ~6 s read + fit
        assert p1.poll() is None and not tmp_dirs(target), "expected run 1 to be fitting"
        os.kill(p1.pid, signal.SIGKILL)
        FAULTS["kill -9 CLI (fit)"] += 1
        assert p1.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop(p1)
    assert not target.exists() and not tmp_dirs(target)
    assert lock_holder(target)["pid"] == p1.pid  # stale: its holder is dead
    assert_nothing_complete(target, kind="kill -9 CLI during fit")

    # run 2 takes the stale lock over, and is killed during the write pass
    p2 = spawn(tmp_path, "run2", "quantize", source, target, *ARGS)
    try:
        tmp = wait_for_write_pass(p2, target)
        assert lock_holder(target)["pid"] == p2.pid
        os.kill(p2.pid, signal.SIGKILL)
        FAULTS["kill -9 CLI (write)"] += 1
        assert p2.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop(p2)
    n_written = chunk_files(tmp)
    assert 1 <= n_written < len([f for f in files(reference) if f.startswith("labels/c/")])
    assert not target.exists()
    assert read_meta(tmp).status == "writing"
    with pytest.raises(IncompleteStoreError):
        kquant.open_store(tmp)
    assert_nothing_complete(target, kind="kill -9 CLI during write")

    # run 3: takes the lock of the dead run 2 over and gives the clean run's store
    p3 = quantize_cli(source, target)
    assert p3.returncode == 0, p3.stderr
    assert_clean_finish(target, reference)
    # the dead run's temporary store went with its stale lock
    assert not tmp_dirs(target)


@pytest.mark.slow
def test_kill9_dask_worker_during_write(source, reference, tmp_path, dask_cluster):
    from distributed import Client

    address, worker_group = dask_cluster
    target = tmp_path / "c.kq"
    proc = spawn(tmp_path, "cluster-run", "quantize", source, target, *ARGS, "--address", address)
    try:
        with Client(address, timeout="10s") as client:
            pids = client.run(os.getpid)  # worker address -> pid of its worker process
            wait_for_write_pass(proc, target)

            def busy_writer():  # a worker with a write task in flight
                for addr, keys in client.processing().items():
                    if any("_assign_write_block" in str(k) for k in keys):
                        return addr
                return None

            victim = wait_until(
                busy_writer, 60, "a worker running a write task", proc, interval=0.01
            )
            pid = pids[victim]
            # the worker process, not its nanny: a child of the `dask worker` command
            assert pid != worker_group.pid
            assert psutil.Process(pid).ppid() in {worker_group.pid} | {
                c.pid for c in psutil.Process(worker_group.pid).children()
            }
            os.kill(pid, signal.SIGKILL)
            FAULTS["kill -9 dask worker (write)"] += 1
            killed_during_run = proc.poll() is None
            wait_until(
                lambda: (
                    not psutil.pid_exists(pid)
                    or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
                ),
                30,
                "the worker to die",
            )
        rc = proc.wait(timeout=300)
    finally:
        stop(proc)
    assert killed_during_run, "the run ended before the worker was killed"
    err = stderr_of(proc)
    if rc == 0:
        # dask recomputed the lost tasks (each write task rewrites exactly one chunk)
        FAULTS["dask worker kill -> completed identical"] += 1
        assert_clean_finish(target, reference)
    else:
        FAULTS["dask worker kill -> failed cleanly"] += 1
        assert one_error_line(err).startswith("kquant: error:")
        assert_nothing_complete(target, kind="kill -9 dask worker")
        assert not tmp_dirs(target)
        assert not os.path.exists(locking.lock_path(str(target)))
    assert not tmp_dirs(target)


@pytest.mark.slow
def test_two_concurrent_cli_writers(source, reference, tmp_path):
    target = tmp_path / "both.kq"
    procs = [spawn(tmp_path, f"writer{i}", "quantize", source, target, *ARGS) for i in range(2)]
    FAULTS["concurrent writers"] += 1
    try:
        # the loser stops at the lock, long before the winner has written anything
        loser = wait_until(
            lambda: next((p for p in procs if p.poll() is not None), None),
            120,
            "one writer to give up",
        )
        winner = next(p for p in procs if p is not loser)
        assert winner.poll() is None, "both writers ended: no contention was seen"
        assert loser.returncode == 2
        line = one_error_line(stderr_of(loser))
        assert line.startswith("kquant: error:") and "being written by another run" in line
        assert f"pid {winner.pid} " in line and socket.gethostname() in line
        assert winner.wait(timeout=300) == 0, stderr_of(winner)
    finally:
        for p in procs:
            stop(p)
    assert_clean_finish(target, reference)  # never mixed: exactly the clean run's bytes
    assert not tmp_dirs(target)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["fit", "write"])
def test_ctrl_c_exits_130_and_leaves_nothing(source, tmp_path, phase):
    target = tmp_path / "i.kq"
    lock = Path(locking.lock_path(str(target)))
    proc = spawn(tmp_path, "interrupted", "quantize", source, target, *ARGS)
    try:
        if phase == "fit":
            wait_until(lock.exists, 120, "the run to take the lock", proc)
            time.sleep(1.0)
            assert not tmp_dirs(target), "expected the run to be fitting"
        else:
            wait_for_write_pass(proc, target)
        me = psutil.Process(proc.pid)
        before = me.children(recursive=True)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the foreground group
        FAULTS[f"SIGINT CLI ({phase})"] += 1
        rc = proc.wait(timeout=60)
        seconds = time.monotonic() - t0
    finally:
        stop(proc)
    assert rc == 130, stderr_of(proc)
    assert seconds < 30, f"took {seconds:.1f} s to stop"
    assert one_error_line(stderr_of(proc)) == "kquant: interrupted"
    assert not target.exists() and not tmp_dirs(target) and not lock.exists()
    orphans = [p for p in before if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not orphans, f"orphan processes: {orphans}"
    # nothing left in the process's session either (children re-parented elsewhere)
    left = [p for p in psutil.process_iter(["pid"]) if _sid(p.pid) == proc.pid]
    assert not left, f"processes left in the run's session: {left}"
    assert_nothing_complete(target, kind=f"SIGINT during {phase}")


@pytest.mark.slow
def test_full_disk_mid_write_fails_in_one_line(source, tmp_path, small_tmpfs):
    target = small_tmpfs / "full.kq"
    FAULTS["full disk (write)"] += 1
    p = quantize_cli(source, target)
    assert p.returncode != 0
    line = one_error_line(p.stderr)
    assert line.startswith("kquant: error:") and "no space left" in line.lower(), line
    assert "unexpected" not in line
    assert not target.exists() and not tmp_dirs(target)
    assert not os.path.exists(locking.lock_path(str(target)))
    assert_nothing_complete(target, kind="full disk")
    assert not [p for p in small_tmpfs.iterdir()], "the failed run left files on the full disk"


@pytest.mark.slow
def test_full_disk_before_start_leaves_no_lock(source, tmp_path, small_tmpfs):
    """A disk already full: one line, and no empty lock that would block every later run."""
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as fh:
        with pytest.raises(OSError):
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
    target = small_tmpfs / "full.kq"
    FAULTS["full disk (start)"] += 1
    p = quantize_cli(source, target)
    assert p.returncode == 1
    line = one_error_line(p.stderr)
    assert line.startswith("kquant: error: no space left on the device"), line
    assert sorted(x.name for x in small_tmpfs.iterdir()) == ["filler"]
    filler.unlink()
    with locking.hold(str(target)):  # the lock is free
        assert lock_holder(target)["pid"] == os.getpid()
