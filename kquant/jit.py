"""numba compilation on first use.

Modules whose compiled kernels only some paths need (huge images) must not import numba
(~0.4 s) at import time: :func:`compiled` compiles a kernel, with the GIL released and
cached on disk, the first time it is asked for, and keeps it for the process.
"""

from __future__ import annotations

_COMPILED: dict = {}


def compiled(fn):
    """``fn`` compiled by numba (``nogil=True, cache=True``), built on the first call."""
    key = (fn.__module__, fn.__qualname__)
    kernel = _COMPILED.get(key)
    if kernel is None:
        import numba

        kernel = _COMPILED.setdefault(key, numba.njit(nogil=True, cache=True)(fn))
    return kernel
