"""Where dask work runs: an existing scheduler, or the embedded local default.

The embedded default is dask's local threads: measured on this project's 2-core machine,
a LocalCluster was never faster (process start-up, and each worker builds its own lookup
table), see bench/README.md. An address (argument or ``DASK_SCHEDULER_ADDRESS``) runs the
same graphs on that cluster.

The client is kept in a context variable, never installed as dask's process-wide default,
so concurrent runs in one process (threads of a Prefect or dask worker) do not see each
other's clients.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Callable

ENV_ADDRESS = "DASK_SCHEDULER_ADDRESS"

_client: contextvars.ContextVar = contextvars.ContextVar("kquant_dask_client", default=None)
_local_only: contextvars.ContextVar = contextvars.ContextVar("kquant_local_only", default=False)


ENV_SCHEDULER_FILE = "DASK_SCHEDULER_FILE"


def read_scheduler_file(path: str | os.PathLike) -> str:
    """The address in a dask scheduler file (``dask scheduler --scheduler-file F``, as HPC
    batch scripts start one).

    Raises
    ------
    KquantError
        If the file cannot be read or holds no address.
    """
    import json

    from kquant.errors import KquantError

    try:
        with open(path) as f:
            address = json.load(f)["address"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = f"no address in it ({type(exc).__name__})" if not isinstance(exc, OSError) else exc
        raise KquantError(f"cannot read dask scheduler file {path}: {why}") from None
    if not isinstance(address, str) or not address:
        raise KquantError(f"cannot read dask scheduler file {path}: no address in it")
    return address


def resolve_address(address: str | None, scheduler_file: str | None = None) -> str | None:
    """The scheduler address to use: the argument, else the address in ``scheduler_file``,
    else ``$DASK_SCHEDULER_ADDRESS``, else the address in ``$DASK_SCHEDULER_FILE``, else None.

    Raises
    ------
    KquantError
        If a scheduler file is given and cannot be read.
    """
    if address:
        return address
    if scheduler_file:
        return read_scheduler_file(scheduler_file)
    if os.environ.get(ENV_ADDRESS):
        return os.environ[ENV_ADDRESS]
    if os.environ.get(ENV_SCHEDULER_FILE):
        return read_scheduler_file(os.environ[ENV_SCHEDULER_FILE])
    return None


def connect(address: str):
    """A :class:`distributed.Client` of the scheduler at ``address`` (never dask's default
    client; the caller closes it).

    Raises
    ------
    KquantError
        If the scheduler cannot be reached.
    """
    from distributed import Client

    from kquant.errors import KquantError, reason

    try:
        return Client(address, timeout="15s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise KquantError(f"cannot reach dask scheduler {address}: {reason(exc)}") from None


@contextlib.contextmanager
def scheduler(address: str | None = None):
    """Run the kquant work inside on a cluster (``address``) or on local threads.

    Yields the :class:`distributed.Client` when connected to a cluster, else None.

    Raises
    ------
    KquantError
        If the scheduler cannot be reached.
    """
    address = None if _local_only.get() else resolve_address(address)
    if not address:
        token = _client.set(None)
        try:
            yield None
        finally:
            _client.reset(token)
        return
    client = connect(address)
    token = _client.set(client)
    try:
        yield client
    finally:
        _client.reset(token)
        client.close()


@contextlib.contextmanager
def local_only():
    """Inside, :func:`scheduler` runs on local threads whatever address it is given or the
    environment names: for work already placed on one worker of a cluster (an image of a
    batch), which must not submit graphs back to the cluster it runs on."""
    token = _local_only.set(True)
    try:
        yield
    finally:
        _local_only.reset(token)


def compute(*collections, progress: bool | Callable[[int, int], None] = False):
    """Compute dask collections on this context's cluster, or on local threads.

    With ``progress=True`` a progress bar goes to stderr; a callable ``progress(done,
    total)`` is called with the number of output chunks finished (one per delayed value;
    0 first, ``total`` last), in the calling thread.
    """
    import sys

    import dask

    client = _client.get()
    if callable(progress):
        return _compute_reporting(client, collections, progress)
    if client is None:
        import dask.threaded

        # the function, not the name "threads": naming it makes dask import
        # distributed (~0.5 s of start-up) just to look for a client
        if progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar(out=sys.stderr, minimum=1.0):
                return dask.compute(*collections, scheduler=dask.threaded.get)
        return dask.compute(*collections, scheduler=dask.threaded.get)
    futures = client.compute(list(collections))
    if progress:
        from distributed import progress as dist_progress

        dist_progress(futures)
    return tuple(client.gather(futures))


def _compute_reporting(client, collections, report: Callable[[int, int], None]):
    """:func:`compute`, calling ``report(done, total)`` as output chunks finish."""
    import dask
    from dask.core import flatten

    keys = {
        k for c in collections if dask.is_dask_collection(c) for k in flatten(c.__dask_keys__())
    }
    total = len(keys)
    report(0, total)
    if client is None:
        import dask.threaded
        from dask.callbacks import Callback

        done = 0

        def posttask(key, result, dsk, state, worker_id):
            nonlocal done
            if key in keys:
                done += 1
                report(done, total)

        with Callback(posttask=posttask):
            return dask.compute(*collections, scheduler=dask.threaded.get)
    import queue

    futures = client.compute(list(collections))  # one future per collection
    outputs = {
        f.key: sum(1 for _ in flatten(c.__dask_keys__())) for f, c in zip(futures, collections)
    }
    finished: queue.Queue = queue.Queue()
    for f in futures:
        f.add_done_callback(finished.put)  # called in the client's thread
    done = 0
    for _ in futures:
        done += outputs[finished.get().key]
        report(done, total)
    return tuple(client.gather(futures))


def warm_workers(fn, client=None) -> int:
    """Run ``fn()`` once on every worker of ``client``'s cluster (default: this context's),
    in the background.

    For loading what a later pass needs (modules, compiled kernels) while the workers are
    idle, e.g. while the client fits. Fire and forget: nothing waits for it, its result
    and errors are dropped (a failure only means the later pass loads it itself).
    Returns the number of workers it was sent to (0 on local threads).
    """
    client = client if client is not None else _client.get()
    if client is None:
        return 0
    from distributed import fire_and_forget

    workers = list(client.scheduler_info().get("workers", {}))
    for address in workers:
        fire_and_forget(
            client.submit(
                fn,
                workers=[address],
                allow_other_workers=False,
                pure=False,
                key=f"kquant-warm-{address}-{os.getpid()}",
            )
        )
    return len(workers)


#: glibc's mallopt parameters and the values :func:`relax_worker_malloc` sets: the ceiling
#: of glibc's own dynamic thresholds (bench/README.md, "Inbox throughput").
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 16 << 20, 32 << 20
_malloc_relaxed = False


def relax_worker_malloc() -> bool:
    """Undo, in this process, the small ``MALLOC_TRIM_THRESHOLD_`` a dask nanny gives its
    workers (65536 by default).

    Any such variable freezes glibc's mmap threshold at 128 KiB, so every numpy temporary
    above that is mapped and unmapped again, page faults included: the fit of a 512x512
    photo took twice as long in a dask worker as in a plain process. This sets the mmap
    threshold to 16 MiB and the trim threshold to 32 MiB (freed memory above that still
    goes back to the system). Only in a dask worker whose environment has the variable,
    only with glibc, once per process; returns whether it changed anything.
    """
    global _malloc_relaxed
    if _malloc_relaxed or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    distributed = sys.modules.get("distributed")  # a worker has imported it
    try:
        distributed.get_worker()  # type: ignore[union-attr]
    except (AttributeError, ValueError):  # not in a dask worker
        return False
    import ctypes
    import ctypes.util

    _malloc_relaxed = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to undo
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


def active_client():
    """The distributed client of this context, or None on local threads."""
    return _client.get()


def compute_alongside(work, *collections, progress: bool = False):
    """:func:`compute` the collections in a helper thread while ``work()`` runs in this one.

    For overlapping work that runs elsewhere (on a cluster's workers) with Python-heavy
    work in this process (imports, compilation). The helper thread runs in a copy of this
    context, so it uses this context's cluster. Returns what :func:`compute` returns.
    """
    import concurrent.futures

    ctx = contextvars.copy_context()
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kquant-compute")
    try:
        future = pool.submit(ctx.run, compute, *collections, progress=progress)
        work()
        return future.result()
    finally:
        pool.shutdown(wait=False)  # an error or Ctrl-C here does not wait for the compute
