"""xarray's ``engine="kquant"``: ``xarray.open_dataset(uri, engine="kquant")`` is
:meth:`kquant.store.KquantStore.to_xarray` (registered through the ``xarray.backends``
entry point; imported by xarray only)."""

from __future__ import annotations

import os

from xarray.backends import BackendEntrypoint


class KquantBackendEntrypoint(BackendEntrypoint):
    """Open a complete kquant store as lazy ``labels``, ``rgb`` and its ``palette``."""

    description = "kquant stores: lazy labels(y, x) and rgb(y, x, band), palette and metrics"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "level")

    def open_dataset(self, filename_or_obj, *, drop_variables=None, level: int = 0):
        """The store at ``filename_or_obj`` (its pyramid ``level``).

        Raises
        ------
        StoreError, IncompleteStoreError
            If it is not a complete kquant store.
        """
        from kquant.store.reader import open_store

        ds = open_store(filename_or_obj).to_xarray(level=level)
        if drop_variables:
            ds = ds.drop_vars(drop_variables)
        return ds

    def guess_can_open(self, filename_or_obj) -> bool:
        if not isinstance(filename_or_obj, (str, os.PathLike)):
            return False
        path = os.fspath(filename_or_obj)
        return path.rstrip("/").endswith(".kquant")
