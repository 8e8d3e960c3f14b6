"""``kquant upgrade``: a store of format 1 or 2 rewritten as format 3 in place, as every
write is: the new store is written under a hidden temporary name (beside it, or a temporary
prefix on object storage) and replaces the old one only once complete
(:class:`kquant.store.StoreWriter`, overwrite), under the target's lock."""

from __future__ import annotations

import os

import numpy as np

from kquant import cluster, store
from kquant.label import packing
from kquant.params import QuantizeParams
from kquant.pipeline.plan import pyramid_levels

#: Metrics recomputed by the commit (they describe the files).
_FILE_METRICS = ("store_bytes", "store_bits_per_pixel", "label_bits_per_pixel")


def _convert_block(labels, root: str, row0: int, col0: int, bits: int, block) -> str:
    labels = np.asarray(labels, np.uint8)
    packed = packing.pack_rows(labels, bits)
    store.write_packed_chunk(root, packed, row0, col0 * bits // 8, block)
    return store.chunk_digest(packed)


def upgrade(
    uri: str | os.PathLike,
    *,
    pyramid: bool | None = None,
    address: str | None = None,
    progress: bool = False,
) -> tuple[store.StoreMeta, bool]:
    """Rewrite the complete store at ``uri`` in the current format (3), atomically.

    The labels, palette, attributes (source, parameters, metrics) and chunking are kept;
    the labels are re-encoded block by block (chunk-parallel, on ``address`` or local
    threads) and, with a pyramid, the levels written. A format-2 store keeps its checksum
    (verified); a format-1 store's labels widen to 1, 2, 4 or 8 bits.

    Parameters
    ----------
    uri : str or path-like
        The store (local path, ``file://`` or ``s3://`` URL).
    pyramid : bool or None, keyword-only
        Write pyramid levels; None: as ``kquant quantize`` decides by the image's size.
    address : str, optional, keyword-only
        Dask scheduler address; default ``$DASK_SCHEDULER_ADDRESS`` or local threads.
    progress : bool, keyword-only
        Show a progress bar on stderr.

    Returns
    -------
    meta : StoreMeta
        The store's attributes now.
    changed : bool
        False when the store was already in the current format (nothing written).

    Raises
    ------
    StoreError, IncompleteStoreError
        If ``uri`` is not a complete kquant store, or its labels changed while being copied
        (then nothing is replaced).
    TargetLockedError
        If another run is writing the store.
    ObjectStoreError, LockLostError
        As every write to object storage.
    """
    from kquant.errors import StoreError
    from kquant.store import locking

    target = store.check_target(uri, overwrite=True)
    with locking.hold(target):
        old = store.open_store(target)
        m = old.meta
        if m.format_version >= store.FORMAT_VERSION:
            return m, False
        levels = pyramid_levels(
            QuantizeParams(pyramid=pyramid), m.height, m.width, (m.chunk_rows, m.chunk_cols)
        )
        meta = store.StoreMeta(
            height=m.height,
            width=m.width,
            k=m.k,
            n_colors=m.n_colors,
            bits=packing.storage_bits(m.n_colors),
            chunk_rows=m.chunk_rows,
            chunk_cols=m.chunk_cols,
            shard_rows=m.shard_rows,
            shard_cols=m.shard_cols,
            source=m.source,
            params=m.params,
            levels=levels,
            format_version=store.FORMAT_VERSION,
        )
        brows, bcols = meta.block
        labels = old.labels.rechunk((brows, bcols))
        with store.StoreWriter(target, meta, old.palette, overwrite=True) as writer:
            import dask

            blocks = labels.to_delayed()
            keys, tasks = [], []
            for i, j in np.ndindex(*blocks.shape):
                keys.append((i, j))
                tasks.append(
                    dask.delayed(_convert_block, pure=True)(
                        blocks[i, j],
                        writer.root,
                        i * brows,
                        j * bcols,
                        meta.bits,
                        meta.packed_block,
                    )
                )
            with cluster.scheduler(address):
                digests = cluster.compute(*tasks, progress=progress)
                store.build_pyramid(writer.root, meta, compute=cluster.compute)
            checksum = store.combine_digests(dict(zip(keys, digests)))
            if m.format_version == 2 and checksum != m.checksum:
                raise StoreError(
                    f"{target}: labels do not match the store's checksum; not upgraded"
                )
            metrics = {k: v for k, v in m.metrics.items() if k not in _FILE_METRICS}
            return writer.commit(metrics=metrics, checksum=checksum), True
