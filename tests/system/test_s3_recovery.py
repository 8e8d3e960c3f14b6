"""What an object-store outage leaves behind, and who may take it over.

Real ``python -m kquant`` processes write to moto's S3 server through a TCP proxy on
127.0.0.1 (``tcpproxy.TcpProxy``) that resets every connection at a chosen request: the
N-th chunk PUT of a new store, of an ``--overwrite`` copy, or the N-th object copied over
the old store. The storage options make a run give up within seconds (1 s timeouts, one
attempt per request). Then the endpoint comes back and the same command runs again.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import tifffile
from faultkit import one_error_line, run_env
from helpers import moto_s3, photo_like
from tcpproxy import TcpProxy

import kquant
from kquant import QuantizeParams
from kquant.errors import TargetLockedError
from kquant.store import locking, read_meta

BUCKET = "kqrec"
#: A run gives up within seconds when the endpoint is gone.
FAST_FAIL = {
    "config_kwargs": {"connect_timeout": 1, "read_timeout": 2, "retries": {"total_max_attempts": 1}}
}
#: 256 x 256 px in 64 x 64 tiles: 16 label chunks, a run of ~3 s.
ARGS = ("--restarts", "0", "--chunk", "64", "--seed", "1")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_s3(tmp_path_factory.mktemp("moto"), BUCKET) as fs:
        yield fs


@pytest.fixture
def proxy(s3):
    with TcpProxy(int(os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])) as p:
        yield p


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "img.tif"
    tifffile.imwrite(
        path,
        photo_like(256, 256, seed=5) & 0xF0,
        tile=(64, 64),
        compression="zlib",
        photometric="rgb",
    )
    return path


def env_via(proxy, **extra) -> dict:
    return run_env(
        AWS_ENDPOINT_URL=proxy.url, KQUANT_STORAGE_OPTIONS=json.dumps(FAST_FAIL), **extra
    )


def kquant_cli(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kquant", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def leftovers(s3, folder: str) -> list[str]:
    """Temporary stores and locks under ``BUCKET/folder``."""
    s3.invalidate_cache()
    return sorted(p for p in s3.find(f"{BUCKET}/{folder}") if ".kquant-" in p)


def assert_verifies(env, target: str, n_colors: int) -> None:
    p = kquant_cli(env, "info", "--verify", target)
    assert p.returncode == 0 and "checksum verified" in p.stdout, p.stderr
    assert f"{n_colors} colours" in p.stdout, p.stdout


@pytest.mark.slow
def test_outage_mid_write_leaves_a_store_the_rerun_takes_over(s3, proxy, source):
    """The endpoint goes away after 3 of 16 chunks of a new store: the run fails in one
    line and leaves a ``writing`` store and its lock; the same command, once the endpoint
    is back, takes them over and writes the store."""
    target = f"s3://{BUCKET}/new/img.kquant"
    env = env_via(proxy)
    proxy.arm(rb"PUT /kqrec/new/img\.kquant/labels/c/", after=4, mode="refuse")
    p = kquant_cli(env, "quantize", source, target, "-k", "4", *ARGS)
    assert proxy.tripped.is_set(), p.stderr
    assert p.returncode == 1, p.stderr
    line = one_error_line(p.stderr)
    assert line.startswith(f"kquant: error: {target}: cannot reach the object store"), line
    assert read_meta(target).status == "writing"  # what the outage left
    assert s3.exists(f"{BUCKET}/new/.img.kquant.kquant-lock")

    proxy.restore()
    p = kquant_cli(env, "quantize", source, target, "-k", "4", *ARGS)
    assert p.returncode == 0, p.stderr
    assert_verifies(env, target, 4)
    assert leftovers(s3, "new") == []


@pytest.mark.slow
def test_outage_while_copying_over_the_old_store_rolls_the_copy_forward(s3, proxy, source):
    """``--overwrite`` on object storage: the endpoint goes away while the complete new
    store is being copied over the old one (old one already deleted). The copy is then the
    only complete store: the next run for the target puts it in place (nothing lost)."""
    target = f"s3://{BUCKET}/roll/img.kquant"
    env = env_via(proxy)
    kquant.quantize(source, target, QuantizeParams(k=2, restarts=0, chunk=64))
    proxy.arm(rb"x-amz-copy-source", after=3, mode="refuse")
    p = kquant_cli(env, "quantize", source, target, "-k", "4", "--overwrite", *ARGS)
    assert proxy.tripped.is_set(), p.stderr
    assert p.returncode == 1, p.stderr
    assert "cannot reach the object store" in one_error_line(p.stderr)
    assert not s3.exists(f"{BUCKET}/roll/img.kquant/zarr.json")  # the old store is gone
    tmps = {t.split("/")[2] for t in leftovers(s3, "roll") if ".kquant-tmp-" in t}
    assert len(tmps) == 1 and read_meta(f"s3://{BUCKET}/roll/{tmps.pop()}").complete

    proxy.restore()
    # a rerun without --overwrite: the target is the store the interrupted run completed
    p = kquant_cli(env, "quantize", source, target, "-k", "4", *ARGS)
    assert p.returncode == 2 and "exists" in one_error_line(p.stderr), p.stderr
    st = kquant.open_store(target)
    assert st.meta.n_colors == 4
    st.verify()
    assert leftovers(s3, "roll") == []


@pytest.mark.slow
def test_outage_while_writing_the_overwrite_copy_keeps_the_old_store(s3, proxy, source):
    """``--overwrite``: the endpoint goes away while the new store is written under its
    temporary prefix. The old store stays complete; the rerun removes the partial copy
    and replaces the old store."""
    target = f"s3://{BUCKET}/keep/img.kquant"
    env = env_via(proxy)
    kquant.quantize(source, target, QuantizeParams(k=2, restarts=0, chunk=64))
    proxy.arm(
        rb"PUT /kqrec/keep/\.img\.kquant\.kquant-tmp-[0-9a-f]+/labels/c/", after=4, mode="refuse"
    )
    p = kquant_cli(env, "quantize", source, target, "-k", "4", "--overwrite", *ARGS)
    assert proxy.tripped.is_set() and p.returncode == 1, p.stderr
    old = kquant.open_store(target)
    assert old.meta.n_colors == 2
    old.verify()
    assert any(".kquant-tmp-" in t for t in leftovers(s3, "keep"))

    proxy.restore()
    p = kquant_cli(env, "quantize", source, target, "-k", "4", "--overwrite", *ARGS)
    assert p.returncode == 0, p.stderr
    st = kquant.open_store(target)
    assert st.meta.n_colors == 4
    st.verify()
    assert leftovers(s3, "keep") == []


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


_CONTENDER = """
import os, sys, time
go, target, after = sys.argv[1], sys.argv[2], float(sys.argv[3])
from kquant.store import locking
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.002)
time.sleep(after)
try:
    locking.acquire(target)
except Exception as e:
    print("lost", type(e).__name__, e, flush=True)
    sys.exit(3)
print("won", flush=True)
while not os.path.exists(go + ".release"):  # held until every contender has tried
    time.sleep(0.01)
locking.release(target)
"""


@pytest.mark.slow
def test_racing_takeovers_of_a_stale_s3_lock_leave_one_holder(s3, proxy, tmp_path):
    """Runs that find the same dead holder's lock: a slow one (its link delays its second
    write request to the lock by 2 s) has read the lock as stale when two others, 0.5 s
    later, find it stale too and race for it; the slow one's takeover lands last. Exactly
    one run holds the lock; the others fail as if it were held."""
    target = f"s3://{BUCKET}/race/img.kquant"
    key = f"{BUCKET}/race/.img.kquant.kquant-lock"
    s3.pipe(
        key,
        json.dumps(
            {
                "host": socket.gethostname(),
                "pid": _dead_pid(),
                "started": time.time(),
                "lease": 300,
                "token": "dead",
            }
        ).encode(),
    )
    # the slow run's second write request to the lock (the first is its refused create):
    # a PUT, a DELETE or a bulk delete (POST ?delete)
    proxy.delay(
        rb"(PUT|DELETE) /kqrec/race/\.img\.kquant\.kquant-lock|POST /kqrec\?delete", 2.0, after=2
    )
    go = tmp_path / "go"
    runs = [(run_env(AWS_ENDPOINT_URL=proxy.url), "0")] + [(run_env(), "0.5")] * 2
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, str(go), target, after],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for env, after in runs
    ]
    assert all(p.stdout.readline().startswith("ready") for p in procs)
    go.touch()
    try:
        outs = [p.stdout.readline() for p in procs]  # every outcome, while winners hold on
    finally:
        (tmp_path / "go.release").touch()
    for p in procs:
        p.communicate(timeout=60)
    assert sum(o.startswith("won") for o in outs) == 1, outs
    assert all(o.startswith(("won", "lost TargetLockedError")) for o in outs), outs
    assert not s3.exists(key)  # released by the winner


def test_lock_of_another_host_is_taken_over_only_after_its_lease(s3):
    """A lock written elsewhere is respected while its lease (by the store's clock) runs,
    and taken over once it ran out without a renewal."""
    target = f"s3://{BUCKET}/lease/img.kquant"
    s3.pipe(
        f"{BUCKET}/lease/.img.kquant.kquant-lock",
        json.dumps(
            {"host": "elsewhere", "pid": 1, "started": time.time(), "lease": 2, "token": "theirs"}
        ).encode(),
    )
    with pytest.raises(TargetLockedError, match="elsewhere"):
        locking.acquire(target)
    time.sleep(3.2)  # the lease, and a second of the store's clock resolution
    with locking.hold(target):
        holder = json.loads(s3.cat(f"{BUCKET}/lease/.img.kquant.kquant-lock"))
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert not s3.exists(f"{BUCKET}/lease/.img.kquant.kquant-lock")


_HOLDER = """
import sys, time
from kquant.store import locking
from kquant.errors import LockLostError
target = sys.argv[1]
locking.acquire(target)
print("held", flush=True)
deadline = time.time() + 60
while time.time() < deadline:
    try:
        locking.check(target)
    except LockLostError as e:
        print("lost", e, flush=True)
        sys.exit(5)
    time.sleep(0.05)
"""


@pytest.mark.slow
def test_live_holder_is_respected_and_a_frozen_one_taken_over(s3, monkeypatch):
    """A holder whose heartbeat renews its lock is never taken over, however long it
    holds it; frozen (SIGSTOP: alive, silent), its lock goes stale after the lease and
    another run takes over; thawed, it finds its lock lost and stops, leaving the new
    holder's lock alone."""
    target = f"s3://{BUCKET}/live/img.kquant"
    key = f"{BUCKET}/live/.img.kquant.kquant-lock"
    lease = {"KQUANT_LOCK_LEASE_SECONDS": "2", "KQUANT_LOCK_HEARTBEAT_SECONDS": "0.25"}
    for k, v in lease.items():
        monkeypatch.setenv(k, v)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, target],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=run_env(**lease),
    )
    try:
        assert holder.stdout.readline().startswith("held")
        time.sleep(3.2)  # longer than the lease: only the heartbeat keeps it fresh
        with pytest.raises(TargetLockedError, match=f"pid {holder.pid} "):
            locking.acquire(target)

        os.kill(holder.pid, signal.SIGSTOP)
        time.sleep(3.2)  # the lease, and a second of the store's clock resolution
        with locking.hold(target):  # taken over from a live but silent process
            os.kill(holder.pid, signal.SIGCONT)
            out, _ = holder.communicate(timeout=30)
            assert holder.returncode == 5 and out.startswith("lost"), out
            assert json.loads(s3.cat(key))["pid"] == os.getpid()  # our lock untouched
        assert not s3.exists(key)
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.wait()


# --------------------------------------------------------------------------- errors


def _moto_auth(count: str) -> None:
    """Make moto check credentials ("0") or not ("inf"); its test key is not a real one."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    urllib.request.urlopen(
        urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        ),
        timeout=10,
    ).read()


@pytest.fixture
def denied(s3):
    _moto_auth("0")
    try:
        yield
    finally:
        _moto_auth("inf")


@pytest.mark.parametrize("case", ["target-bucket", "source-bucket", "denied", "unreachable"])
def test_object_store_errors_name_the_url_and_the_cause(s3, source, case, request):
    """A missing bucket, denied access, an unreachable endpoint: one line naming the URL
    and the cause, a non-zero exit, no traceback."""
    s3.put(str(source), f"{BUCKET}/src/img.tif")
    env = run_env(KQUANT_STORAGE_OPTIONS=json.dumps(FAST_FAIL))
    local_out = request.getfixturevalue("tmp_path") / "out.kquant"
    if case == "target-bucket":
        args, url, cause = (
            (source, "s3://nobucket/out.kquant"),
            "s3://nobucket/out.kquant",
            "bucket 'nobucket' does not exist",
        )
    elif case == "source-bucket":
        args, url, cause = (
            ("s3://nobucket/img.tif", local_out),
            "s3://nobucket/img.tif",
            "bucket 'nobucket' does not exist",
        )
    elif case == "denied":
        request.getfixturevalue("denied")
        args, url, cause = (
            (f"s3://{BUCKET}/src/img.tif", local_out),
            f"s3://{BUCKET}/src/img.tif",
            "access denied (InvalidAccessKeyId",
        )
    else:
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
        args, url, cause = (
            (source, f"s3://{BUCKET}/out.kquant"),
            f"s3://{BUCKET}/out.kquant",
            f"cannot reach the object store at http://127.0.0.1:{port}",
        )
    p = kquant_cli(env, "quantize", *args, "-k", "4", *ARGS)
    line = one_error_line(p.stderr)
    assert p.returncode != 0
    assert line.startswith(f"kquant: error: {url}: {cause}"), line
    assert "Traceback" not in p.stderr and "unexpected" not in line
    assert not local_out.exists()
