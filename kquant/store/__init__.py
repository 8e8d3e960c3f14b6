"""The kquant store: a zarr v3 group of a palette and bit-packed labels (docs/format.md).

* :mod:`~kquant.store.format` -- the attributes (:class:`StoreMeta`), versions, checksums;
* :mod:`~kquant.store.writer` -- writing under a temporary name, committed last;
* :mod:`~kquant.store.reader` -- opening complete stores only;
* :mod:`~kquant.store.targets` -- what a run may write or replace;
* :mod:`~kquant.store.recovery` -- settling what earlier runs left at a target;
* :mod:`~kquant.store.locking` -- one writer per target;
* :mod:`~kquant.store.direct` -- the zarr files of small stores, written directly;
* :mod:`~kquant.store.codecs` -- the packbits codec, for zarr-python;
* :mod:`~kquant.store.pyramid` -- the levels of mode-downsampled labels;
* :mod:`~kquant.store.ngff` -- the OME-NGFF metadata.
"""

from kquant.store.format import (
    FORMAT,
    FORMAT_VERSION,
    READABLE_VERSIONS,
    STATUS_COMPLETE,
    STATUS_WRITING,
    StoreMeta,
    chunk_digest,
    combine_digests,
    zstd_level,
)
from kquant.store.pyramid import build as build_pyramid
from kquant.store.reader import KquantStore, open_store, read_meta
from kquant.store.recovery import recover
from kquant.store.targets import check_output, check_target, exists, remove, status
from kquant.store.writer import DirectStoreWriter, StoreWriter, write_packed_chunk

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "STATUS_COMPLETE",
    "STATUS_WRITING",
    "DirectStoreWriter",
    "KquantStore",
    "StoreMeta",
    "StoreWriter",
    "build_pyramid",
    "check_output",
    "check_target",
    "chunk_digest",
    "combine_digests",
    "exists",
    "open_store",
    "read_meta",
    "recover",
    "remove",
    "status",
    "write_packed_chunk",
    "zstd_level",
]
