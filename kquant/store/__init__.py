"""The kquant store: a zarr v3 group of a palette and bit-packed labels (docs/format.md)."""

from kquant.store.core import (FORMAT, FORMAT_VERSION, READABLE_VERSIONS, STATUS_COMPLETE,
                               STATUS_WRITING, DirectStoreWriter, KquantStore, StoreMeta,
                               StoreWriter, check_output, check_target, chunk_digest, combine_digests,
                               exists, open_store, read_meta, recover, remove, status,
                               write_packed_chunk, zstd_level)
