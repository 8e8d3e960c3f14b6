"""The write pass on dask: the image read chunk by chunk, each chunk (or shard) labelled,
packed, written and measured in one task; nothing holds the whole image."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kquant import cluster, store
from kquant.fit import FitResult
from kquant.io import ImageSource, readers
from kquant.io import uri as uri_mod
from kquant.io.convert import MaskRule
from kquant.label import assign, dither, metrics, packing
from kquant.params import QuantizeParams
from kquant.pipeline.plan import (
    label_options,
    mask_rule,
    pyramid_levels,
    store_chunks,
    store_meta,
    store_shards,
    uses_lut,
    write_metrics,
)


def image(
    src: ImageSource, params: QuantizeParams, max_pixels: int | None, mask: MaskRule | None = None
):
    """The lazy RGB dask array of a source, chunked as ``params`` asks; with ``mask``,
    (H, W, 4) with the validity channel (:func:`kquant.io.convert.to_rgb8_masked`)."""
    return readers.open_source(
        src, chunks=params.chunk, max_pixels=max_pixels, background=params.background, mask=mask
    )


def _assign_write_block(
    block: np.ndarray,
    palette: np.ndarray,
    bits: int,
    root: str,
    row0: int,
    col0: int,
    packed_chunk: tuple[int, int],
    use_lut: bool,
    label_options: dict | None = None,
    nodata_index: int | None = None,
):
    """Kernel of the write pass: label one chunk, pack it, write it, measure it.

    With ``nodata_index`` (the palette's last entry) the block has a validity channel:
    masked pixels get that index (and, having its colour, no error), the others the
    nearest of the entries before it.
    """
    cluster.relax_worker_malloc()  # on a dask worker: no mmap per numpy temporary
    block = np.asarray(block)
    colours, valid = palette[:nodata_index], None  # all of it without a nodata index
    if block.shape[2] == 4:
        valid = block[..., 3] != 0
        block = np.ascontiguousarray(block[..., :3])
        if valid.all():
            valid = None
    if label_options:  # perceptual space or dithering (global coordinates: no seams)
        table = None
        if use_lut:  # dithering in RGB: the same labels through the table
            from kquant.label import lookup

            table = lookup.table_for(colours)
        labels = dither.label_block(block, colours, y0=row0, x0=col0, table=table, **label_options)
    elif use_lut and valid is None:
        from kquant.label import lookup  # compiled with numba: imported only where it is used

        packed, sse, counts = lookup.label_pack_block(
            block, lookup.table_for(colours), colours, bits
        )
        if len(counts) < len(palette):
            counts = np.concatenate([counts, np.zeros(len(palette) - len(counts), counts.dtype)])
        labels = None
    else:
        labels = assign.nearest_block(block, colours)
    if labels is not None:
        if valid is not None:
            labels[~valid] = nodata_index
        sse = metrics.sse_block(block, labels, palette)
        packed = packing.pack_rows(labels, bits)
        counts = metrics.label_counts(labels, len(palette))
    store.write_packed_chunk(root, packed, row0, col0 * bits // 8, packed_chunk)
    return sse, counts, store.chunk_digest(packed)


def warm_write_pass() -> None:
    """Load the write pass's compiled kernels in this process (a cluster worker), and
    undo a dask nanny's allocator setting there (:func:`kquant.cluster.relax_worker_malloc`)."""
    from kquant.label import lookup

    cluster.relax_worker_malloc()
    lookup.warm()


def write(
    src: ImageSource,
    target: str,
    palette: np.ndarray,
    params: QuantizeParams,
    *,
    overwrite: bool = False,
    max_pixels: int | None = None,
    address: str | None = None,
    progress: bool | Callable[[int, int], None] = False,
    fit_info: FitResult | None = None,
    nodata_index: int | None = None,
) -> store.StoreMeta:
    """The write pass on dask: one task labels, packs, writes and measures each chunk (or
    shard), then the store is committed (see :func:`kquant.pipeline.write`, which checks
    the target first). A callable ``progress(done, total)`` hears of each block written.

    Raises
    ------
    InputError, StoreError, ObjectStoreError, LockLostError
        As :func:`kquant.pipeline.write`; no store is left behind.
    """
    import dask

    rule = mask_rule(src, params) if nodata_index is not None else None
    with uri_mod.storage_errors(src.uri):
        pixels = image(src, params, max_pixels, rule)
    rows, cols = store_chunks(pixels)
    shards = store_shards((rows, cols), params.shard)
    palette = np.asarray(palette, np.uint8)
    colours = palette[:nodata_index]
    options = label_options(params, colours)
    use_lut = uses_lut(src, params)
    meta = store_meta(
        src,
        params,
        palette,
        nodata_index,
        chunks=(rows, cols),
        shards=shards,
        levels=pyramid_levels(params, src.height, src.width, (rows, cols)),
    )
    bits = meta.bits
    brows, bcols = meta.block  # one task writes one whole chunk, or one whole shard
    pixels = pixels.rechunk((brows, bcols, pixels.shape[2]))
    with store.StoreWriter(target, meta, palette, overwrite=overwrite) as writer:
        blocks = pixels.to_delayed()
        keys, tasks = [], []
        for i, j, _ in np.ndindex(*blocks.shape):
            keys.append((i, j))
            tasks.append(
                dask.delayed(_assign_write_block, pure=True)(
                    blocks[i, j, 0],
                    palette,
                    bits,
                    writer.root,
                    i * brows,
                    j * bcols,
                    meta.packed_block,
                    use_lut,
                    options,
                    nodata_index,
                )
            )
        with cluster.scheduler(address):
            results = cluster.compute(*tasks, progress=progress)
            store.build_pyramid(writer.root, meta, compute=cluster.compute)
        sse = sum(int(r[0]) for r in results)
        counts = np.sum([r[1] for r in results], axis=0)
        return writer.commit(
            metrics=write_metrics(
                sse,
                counts,
                src.height * src.width,
                params,
                options,
                "lut" if use_lut else "direct",
                fit_info,
                nodata_index=nodata_index,
            ),
            checksum=store.combine_digests(dict(zip(keys, (r[2] for r in results)))),
        )
