"""Where dask work runs: an existing scheduler, or the embedded local default."""

from __future__ import annotations

import contextlib
import os

ENV_ADDRESS = "DASK_SCHEDULER_ADDRESS"


def resolve_address(address: str | None) -> str | None:
    """The scheduler address to use: the argument, else ``$DASK_SCHEDULER_ADDRESS``, else None."""
    return address or os.environ.get(ENV_ADDRESS) or None


@contextlib.contextmanager
def scheduler(address: str | None = None):
    """Run the dask work inside on a cluster (``address``) or on local threads.

    Yields the :class:`distributed.Client` when connected to a cluster, else None.

    Raises
    ------
    KquantError
        If the scheduler cannot be reached.
    """
    import dask

    from .errors import KquantError

    address = resolve_address(address)
    if not address:
        with dask.config.set(scheduler="threads"):
            yield None
        return
    from distributed import Client

    try:
        client = Client(address, timeout="15s", set_as_default=True)
    except (OSError, TimeoutError) as exc:
        raise KquantError(f"cannot reach dask scheduler {address}: {exc}") from None
    try:
        yield client
    finally:
        client.close()


def compute(*collections, progress: bool = False):
    """``dask.compute`` on the active scheduler, with an optional progress bar on stderr."""
    import sys

    import dask

    if progress:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
        if client is None:
            from dask.diagnostics import ProgressBar

            with ProgressBar(out=sys.stderr, minimum=1.0):
                return dask.compute(*collections)
        from distributed import progress as dist_progress

        futures = client.compute(list(collections))
        dist_progress(futures)
        return tuple(client.gather(futures))
    return dask.compute(*collections)
