"""Composition: source -> palette -> store, as plain functions the CLI and flows call.

* :mod:`~kquant.pipeline.run` -- the whole job (:func:`quantize`), :func:`write`,
  :func:`preview`, imposed palettes, a run's own finished store;
* :mod:`~kquant.pipeline.fitting` -- the fit pass (exact histogram or bounded sample) and the fit;
* :mod:`~kquant.pipeline.chunked` -- the write pass on dask, chunk by chunk;
* :mod:`~kquant.pipeline.in_memory` -- the write pass of one-chunk images, without dask or zarr;
* :mod:`~kquant.pipeline.plan` -- what both write passes share;
* :mod:`~kquant.pipeline.shared_palette` -- one palette over several images;
* :mod:`~kquant.pipeline.palettes` -- palettes read from files and stores.
"""

from kquant.pipeline.fitting import fit, fit_histogram, inspect, sample_chunks, sample_graph
from kquant.pipeline.plan import (
    LUT_MIN_PIXELS,
    same_source,
    source_record,
    store_chunks,
    store_shards,
    uses_lut,
    write_metrics,
)
from kquant.pipeline.run import (
    QuantizeResult,
    check_export,
    export_cog,
    export_path,
    finished_store,
    imposed_fit,
    imposed_palette,
    preview,
    quantize,
    reserve_imposed,
    write,
)
from kquant.pipeline.shared_palette import fit_shared

__all__ = [
    "LUT_MIN_PIXELS",
    "QuantizeResult",
    "check_export",
    "export_cog",
    "export_path",
    "finished_store",
    "fit",
    "fit_histogram",
    "fit_shared",
    "imposed_fit",
    "imposed_palette",
    "inspect",
    "preview",
    "quantize",
    "reserve_imposed",
    "same_source",
    "sample_chunks",
    "sample_graph",
    "source_record",
    "store_chunks",
    "store_shards",
    "uses_lut",
    "write",
    "write_metrics",
]
