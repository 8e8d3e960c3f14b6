"""kquant: K-means colour quantization of RGB imagery, from a phone photo to a gigapixel mosaic.

Public API (imported lazily, so that ``import kquant`` stays cheap)::

    kquant.open_image(uri, chunks=...)       # lazy (H, W, 3) uint8 dask array
    kquant.quantize(source, target, params)  # the whole job -> QuantizeResult
    kquant.open_store(uri)                   # palette, lazy labels, lazy RGB
    kquant.QuantizeParams(k=16, seed=0, ...)
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "open_image": "kquant.io",
    "inspect_image": "kquant.io",
    "open_store": "kquant.store",
    "read_meta": "kquant.store",
    "StoreMeta": "kquant.store",
    "quantize": "kquant.pipeline",
    "QuantizeResult": "kquant.pipeline",
    "QuantizeParams": "kquant.params",
    "KquantError": "kquant.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kquant' has no attribute {name!r}")
