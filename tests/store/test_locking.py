"""One writer per target: the lock, its holder, stale locks taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

import kquant
from kquant import QuantizeParams
from kquant.errors import TargetExistsError, TargetLockedError
from kquant.store import locking


def test_second_writer_fails_fast_naming_the_holder(photo_png, tmp_path):
    path, _ = photo_png
    target = str(tmp_path / "s.kq")
    with locking.hold(target):
        t = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-m", "kquant", "quantize", str(path), target],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 2
        line = p.stderr.strip().splitlines()[-1]
        assert "being written by another run" in line and f"pid {os.getpid()}" in line
        assert socket.gethostname() in line
        assert time.perf_counter() - t < 30
        assert not os.path.exists(target)
    assert not os.path.exists(locking.lock_path(target))  # released
    kquant.quantize(path, target, QuantizeParams(k=4, restarts=0))
    assert not os.path.exists(locking.lock_path(target))


def test_lock_is_reentrant_in_process_and_exclusive_across(tmp_path):
    target = str(tmp_path / "t.kq")
    with locking.hold(target):
        with locking.hold(target):
            assert os.path.exists(locking.lock_path(target))
        assert os.path.exists(locking.lock_path(target))
        holder = json.loads(open(locking.lock_path(target)).read())
        assert holder["pid"] == os.getpid()
    assert not os.path.exists(locking.lock_path(target))


def test_stale_lock_of_a_dead_process_is_taken_over(photo_png, tmp_path):
    path, _ = photo_png
    target = str(tmp_path / "s.kq")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(locking.lock_path(target), "w") as fh:
        json.dump({"host": socket.gethostname(), "pid": dead.pid, "started": time.time()}, fh)
    kquant.quantize(path, target, QuantizeParams(k=4, restarts=0))
    assert kquant.open_store(target).meta.complete


def test_lock_of_another_host_is_respected(tmp_path, photo_png):
    path, _ = photo_png
    target = str(tmp_path / "s.kq")
    with open(locking.lock_path(target), "w") as fh:
        json.dump({"host": "elsewhere", "pid": 1, "started": time.time()}, fh)
    with pytest.raises(TargetLockedError, match="elsewhere"):
        kquant.quantize(path, target, QuantizeParams(k=4, restarts=0))


def test_racing_takeovers_of_a_stale_lock_leave_one_holder(tmp_path):
    """Several runs that find the same dead holder at once: exactly one takes over."""
    target = str(tmp_path / "r.kq")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(locking.lock_path(target), "w") as fh:
        json.dump({"host": socket.gethostname(), "pid": dead.pid, "started": time.time()}, fh)
    code = (
        "import sys, time\nfrom kquant.store import locking\n"
        "try:\n    locking.acquire(sys.argv[1])\nexcept Exception as e:\n"
        "    print('lost', e); sys.exit(3)\nprint('won'); sys.stdout.flush(); time.sleep(3)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, target], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert sum(o.startswith("won") for o in outs) == 1, outs
    assert all(o.startswith(("won", "lost")) for o in outs), outs


def test_takeover_puts_a_complete_temporary_store_in_place(photo_png, tmp_path):
    """A run that died between the two renames of an overwrite (the old store moved aside,
    the complete new one not yet in place) left the only complete store under its
    temporary name: the next run puts it in place and removes the old one."""
    path, _ = photo_png
    target = tmp_path / "s.kq"
    kquant.quantize(path, target, QuantizeParams(k=4, restarts=0))
    kquant.quantize(path, tmp_path / "old.kq", QuantizeParams(k=2, restarts=0))
    os.rename(target, tmp_path / ".s.kq.kquant-tmp-0123456789ab")
    os.rename(tmp_path / "old.kq", tmp_path / ".s.kq.kquant-old-0123456789ab")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(locking.lock_path(str(target)), "w") as fh:
        json.dump({"host": socket.gethostname(), "pid": dead.pid, "started": time.time()}, fh)
    with pytest.raises(TargetExistsError):  # the rerun finds it in place
        kquant.quantize(path, target, QuantizeParams(k=3, restarts=0))
    st = kquant.open_store(target)
    assert st.meta.n_colors == 4
    st.verify()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png", "s.kq"]
