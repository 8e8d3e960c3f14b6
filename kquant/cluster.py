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

ENV_ADDRESS = "DASK_SCHEDULER_ADDRESS"

_client: contextvars.ContextVar = contextvars.ContextVar("kquant_dask_client", default=None)


def resolve_address(address: str | None) -> str | None:
    """The scheduler address to use: the argument, else ``$DASK_SCHEDULER_ADDRESS``, else None."""
    return address or os.environ.get(ENV_ADDRESS) or None


@contextlib.contextmanager
def scheduler(address: str | None = None):
    """Run the kquant work inside on a cluster (``address``) or on local threads.

    Yields the :class:`distributed.Client` when connected to a cluster, else None.

    Raises
    ------
    KquantError
        If the scheduler cannot be reached.
    """
    from kquant.errors import KquantError, reason

    address = resolve_address(address)
    if not address:
        token = _client.set(None)
        try:
            yield None
        finally:
            _client.reset(token)
        return
    from distributed import Client

    try:
        client = Client(address, timeout="15s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise KquantError(f"cannot reach dask scheduler {address}: {reason(exc)}") from None
    token = _client.set(client)
    try:
        yield client
    finally:
        _client.reset(token)
        client.close()


def compute(*collections, progress: bool = False):
    """Compute dask collections on this context's cluster, or on local threads.

    With ``progress`` a progress bar goes to stderr.
    """
    import sys

    import dask

    client = _client.get()
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


def warm_workers(fn) -> int:
    """Run ``fn()`` once on every worker of this context's cluster, in the background.

    For loading what a later pass needs (modules, compiled kernels) while the workers are
    idle, e.g. while the client fits. Fire and forget: nothing waits for it, its result
    and errors are dropped (a failure only means the later pass loads it itself).
    Returns the number of workers it was sent to (0 on local threads).
    """
    client = _client.get()
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
