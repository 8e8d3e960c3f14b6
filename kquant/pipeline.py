"""Composition: source -> palette -> store, as plain functions the CLI and flows call.

Each step takes URIs and small values and returns small values; pixels only
move inside dask graphs and the zarr store.

* :func:`inspect` -- read the header;
* :func:`fit` -- one pass over the pixels for the exact colour histogram and a
  bounded sample, then :func:`kquant.fit.fit_palette`;
* :func:`write` -- a second pass: assign, pack and write each chunk, with the
  reconstruction error computed in the same tasks, then commit the store;
* :func:`quantize` -- all of the above, plus an optional preview picture.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from . import (assign, cluster, dither, histogram, inmemory, metrics, packing, readers, sampling,
               store)
from . import uri as uri_mod
from .errors import KquantError
from .fit import FitResult, fit_palette
from .params import QuantizeParams
from .readers import ImageSource


@dataclasses.dataclass(frozen=True)
class QuantizeResult:
    """What a run produced: the store's attributes, the fit, and timings (seconds)."""

    target: str
    meta: store.StoreMeta
    fit: FitResult
    timings: dict
    preview: str | None = None

    @property
    def palette(self) -> np.ndarray:
        return self.fit.palette


def inspect(source, *, max_pixels: int | None = None) -> ImageSource:
    """Header of the source (see :func:`kquant.readers.inspect_image`).

    Raises
    ------
    InputError
        As :func:`kquant.readers.inspect_image`.
    ObjectStoreError
        If the source's object store cannot be reached or refuses the read.
    """
    with uri_mod.storage_errors(source):
        return readers.inspect_image(source, max_pixels=max_pixels)


def _image(src: ImageSource, params: QuantizeParams, max_pixels):
    return readers.open_source(src, chunks=params.chunk, max_pixels=max_pixels,
                               background=params.background)


#: Images of at least this many pixels are labelled through a 2**24-entry lookup table.
#: Its build takes ~0.1 s for any K and numba's import ~0.4 s; measured in fresh processes
#: writing photo-like TIFFs, the table already wins at 1 Mpx (K=16: 1.14 vs 1.37 s;
#: K=256: 1.28 vs 2.95 s) and by far at 16 Mpx (K=256: 3.8 vs 30 s).
LUT_MIN_PIXELS = 1 << 20
#: Largest tile edge read per window when sampling without a full pass.
SAMPLE_WINDOW = 512
#: Fewest pixels a window holds: with tiny tiles (16x16, small zarr chunks) a window of
#: one tile would hold too few for the sample (2**20 pixels over 128 to 1024 windows,
#: sampling.windows_for, needs up to 8192 a window).
SAMPLE_MIN_PIXELS = 1 << 14


def sample_chunks(src: ImageSource) -> int:
    """Chunk edge for reading sample windows: the file's tile, at most SAMPLE_WINDOW, and
    enough for SAMPLE_MIN_PIXELS a window (chunks are whole tiles, readers.normalise_chunk)."""
    if not src.tile:
        return 256
    rows, cols = src.tile
    edge = max(8, rows)
    if edge * max(cols, edge) < SAMPLE_MIN_PIXELS:  # tiny tiles: several per window
        edge = -(-SAMPLE_MIN_PIXELS // cols) if cols >= 128 else 128
    return min(edge, SAMPLE_WINDOW)


def sample_graph(src: ImageSource, n: int, params: QuantizeParams, *,
                 max_pixels: int | None = None):
    """The delayed (m, 3) sample of about ``n`` pixels of sample mode: tiles spread over
    the image (:func:`kquant.sampling.sample_windows`, :func:`kquant.sampling.windows_for`),
    read at the file's tile size (:func:`sample_chunks`)."""
    image = readers.open_source(src, chunks=sample_chunks(src), max_pixels=max_pixels,
                                background=params.background)
    return sampling.sample_windows(image, n, seed=params.seed,
                                   n_windows=sampling.windows_for(src.n_pixels))


def _compute_reading(work: list, use_sample: bool, progress: bool):
    """Compute the fit's pass over the pixels. On a cluster, with dask-ml's sample fit to
    come, import and compile dask-ml in this process meanwhile (~1.8 s otherwise added
    after the pass). Not on local threads: there the import and the decoding threads
    contend for the GIL and the overlap was measured slower than doing one after the other."""
    if not use_sample or cluster.active_client() is None:
        return cluster.compute(*work, progress=progress)
    from .fit import prepare_sample_fit

    return cluster.compute_alongside(prepare_sample_fit, *work, progress=progress)


def fit(source, params: QuantizeParams | None = None, *, max_pixels: int | None = None,
        address: str | None = None, progress: bool = False) -> FitResult:
    """Fit the palette of a source.

    In ``exact`` mode one pass over every pixel computes the colour histogram
    and the sample together; in ``sample`` mode only a bounded number of tiles
    is read (see :func:`kquant.sampling.sample_windows`) and the fit is refined
    on the sample's histogram. ``params.mode == "auto"`` picks by image size.

    Raises
    ------
    InputError, ParameterError
        On a bad source or bad parameters.
    ObjectStoreError
        If the source's object store cannot be reached or refuses a read.
    """
    from . import fit as fit_mod

    params = params or QuantizeParams()
    src = source if isinstance(source, ImageSource) else inspect(source, max_pixels=max_pixels)
    mode = params.fit_mode(src.n_pixels)
    # dask-ml's sample fit seeds only large images (see kquant.fit.SAMPLE_FIT_MIN_PIXELS);
    # otherwise the exact pass skips drawing the sample
    use_sample = params.sample_fit == "always" or (
        params.sample_fit == "auto" and src.n_pixels >= fit_mod.SAMPLE_FIT_MIN_PIXELS)
    t0 = time.perf_counter()
    with cluster.scheduler(address), uri_mod.storage_errors(src.uri):
        if mode == "exact" and not use_sample and inmemory.eligible(src, params, address=address):
            colours, counts = inmemory.colour_histogram(src, params, max_pixels=max_pixels)
            sample = None
        elif mode == "exact":
            image = _image(src, params, max_pixels)
            sample = None
            if use_sample:  # drawn in the tasks that count each block: read once, not held
                samplers = sampling.block_samplers(image, params.sample_size, seed=params.seed)
                ((colours, counts), parts), = _compute_reading(
                    [histogram.colour_histogram(image, per_block=samplers)], True, progress)
                sample = np.concatenate(parts, axis=0)
            else:
                ((colours, counts),) = cluster.compute(histogram.colour_histogram(image),
                                                       progress=progress)
        else:
            (sample,) = _compute_reading(
                [sample_graph(src, params.sample_size, params, max_pixels=max_pixels)],
                use_sample, progress)
            colours, counts = histogram.block_histogram(sample[None])
        if uses_lut(src, params):  # the workers are idle while this process fits
            cluster.warm_workers(_warm_write_pass)
    t1 = time.perf_counter()
    result = fit_histogram(sample, colours, counts, params, sampled=mode == "sample",
                           sample_fit="always" if use_sample else "never")
    timings = {"read" if mode == "exact" else "sample": t1 - t0,
               "fit": time.perf_counter() - t1}
    return dataclasses.replace(result, mode=mode, timings=timings)


def fit_histogram(sample, colours, counts, params: QuantizeParams, *, sampled: bool,
                  sample_fit: str = "auto") -> FitResult:
    """The fit of ``params`` (K or a target PSNR, seed, restarts, space) on a histogram.

    ``sample``, ``colours``, ``counts`` and ``sample_fit`` are those of
    :func:`kquant.fit.fit_palette`; ``sampled`` says the histogram is a sample's.
    With ``params.target_psnr`` the smallest K up to ``params.k`` that reaches it
    (:func:`kquant.fit.fit_for_psnr`; ``target_met`` says whether it did).

    Raises
    ------
    ParameterError
        As :func:`kquant.fit.fit_palette`.
    """
    from . import fit as fit_mod

    options = dict(seed=params.seed, restarts=params.restarts, max_iter=params.max_iter,
                   sample_fit=sample_fit, space=params.space, sampled=sampled)
    if params.target_psnr is not None:
        result, met = fit_mod.fit_for_psnr(sample, colours, counts, params.target_psnr,
                                           k_max=params.k, **options)
        return dataclasses.replace(result, target_met=met)
    return fit_palette(sample, colours, counts, params.k, **options)


def store_chunks(image) -> tuple[int, int]:
    """Pixel chunk (rows, cols) of the store for a dask image (cols a multiple of 8)."""
    rows, cols = image.chunks[0][0], image.chunks[1][0]
    if cols < image.shape[1] and cols % packing.PIXEL_ALIGN:
        cols = -(-cols // packing.PIXEL_ALIGN) * packing.PIXEL_ALIGN
    return rows, cols


def store_shards(chunks: tuple[int, int], shard: int | None) -> tuple[int, int] | None:
    """Shard (rows, cols) in pixels: ``shard`` rounded down to whole chunks, or None."""
    if shard is None:
        return None
    rows, cols = chunks
    return max(rows, shard // rows * rows), max(cols, shard // cols * cols)


def _assign_write_block(block: np.ndarray, palette: np.ndarray, bits: int, root: str,
                        row0: int, col0: int, packed_chunk: tuple[int, int], use_lut: bool,
                        label_options: dict | None = None):
    """Kernel of the write pass: label one chunk, pack it, write it, measure it."""
    block = np.asarray(block)
    if label_options:  # perceptual space or dithering (global coordinates: no seams)
        table = None
        if use_lut:  # dithering in RGB: the same labels through the table
            from . import lut

            table = lut.table_for(palette)
        labels = dither.label_block(block, palette, y0=row0, x0=col0, table=table,
                                    **label_options)
        sse = metrics.sse_block(block, labels, palette)
        packed = packing.pack_rows(labels, bits)
        counts = metrics.label_counts(labels, len(palette))
    elif use_lut:
        from . import lut  # compiled with numba: imported only where it is used

        packed, sse, counts = lut.label_pack_block(block, lut.table_for(palette), palette, bits)
    else:
        labels = assign.nearest_block(block, palette)
        sse = metrics.sse_block(block, labels, palette)
        packed = packing.pack_rows(labels, bits)
        counts = metrics.label_counts(labels, len(palette))
    store.write_packed_chunk(root, packed, row0, col0 * bits // 8, packed_chunk)
    return sse, counts, store.chunk_digest(packed)


def source_record(src: ImageSource) -> dict:
    """The ``source`` attribute of a store written from ``src``: what it was and the file's
    identity (URI, size, mtime, ETag), so a rerun can tell its own store (:func:`same_source`)."""
    return {"uri": src.uri, "format": src.format, "size_bytes": src.size_bytes,
            "mtime_ns": src.mtime_ns, "etag": src.etag, "orientation": src.orientation,
            "mode": src.mode}


def same_source(record: dict, source) -> bool:
    """Whether a store's ``source`` record names ``source`` as it is now: same URI, size,
    modification time and ETag (a stat, no decoding); False if the record predates the
    identity fields or the source cannot be reached."""
    if "mtime_ns" not in record:
        return False
    uri = uri_mod.normalise(source)
    if record.get("uri") != uri:
        return False
    try:
        size, mtime_ns, etag = readers._stat(uri)
    except (OSError, ValueError, StopIteration, KquantError):
        return False
    return (record.get("size_bytes"), record.get("mtime_ns"), record.get("etag", "")) == (
        size, mtime_ns, etag)


def write_metrics(sse: int, counts, n_pixels: int, params: QuantizeParams,
                  label_options: dict | None, assigned: str,
                  fit_info: FitResult | None) -> dict:
    """The ``metrics`` attribute of a store: error, PSNR, palette use and how it was made."""
    mse = metrics.mse(sse, n_pixels)
    psnr = metrics.psnr(mse)
    extra = {}
    if label_options and label_options.get("dither") != "none":
        extra["dither_amount"] = label_options["dither_amount"]
    if params.target_psnr is not None:
        extra["target_psnr_met"] = bool(not np.isfinite(psnr) or psnr >= params.target_psnr)
    return {"sse": sse, "mse": mse, "psnr": psnr if np.isfinite(psnr) else None,
            "lossless": sse == 0, "n_pixels": n_pixels,
            "palette_counts": [int(c) for c in counts], "assign": assigned,
            "fit_mode": fit_info.mode if fit_info else None, **extra}


def _plain_rgb(params: QuantizeParams) -> bool:
    """Pixels are labelled by plain RGB nearness: no perceptual space, no dithering."""
    return params.space == "rgb" and params.dither == "none"


def uses_lut(src: ImageSource, params: QuantizeParams) -> bool:
    """Whether the write pass labels through the lookup table (:mod:`kquant.lut`; in RGB,
    dithered or not); the in-memory path records the same in the store, for the same labels."""
    return src.n_pixels >= LUT_MIN_PIXELS and params.space == "rgb"


def _warm_write_pass() -> None:
    """Load the write pass's compiled kernels in this process (a cluster worker)."""
    from . import lut

    lut.warm()


def _label_options(params: QuantizeParams, palette: np.ndarray) -> dict | None:
    """Options of :func:`kquant.dither.label_block`; None for the plain RGB assignment."""
    if _plain_rgb(params):
        return None
    return {"space": params.space, "dither": params.dither,
            "dither_amount": dither.amount(palette) if params.dither != "none" else 0.0}


def write(source, target, palette: np.ndarray, params: QuantizeParams | None = None, *,
          overwrite: bool = False, max_pixels: int | None = None, address: str | None = None,
          progress: bool = False, fit_info: FitResult | None = None) -> store.StoreMeta:
    """Assign every pixel to ``palette`` and write a complete store at ``target``.

    Raises
    ------
    TargetExistsError
        If ``target`` exists and ``overwrite`` is false (checked before any work).
    UnsafeTargetError
        If ``target`` is or holds the source, or is not a kquant store that ``overwrite``
        may replace (see :func:`kquant.store.check_target`; checked before any work).
    InputError, StoreError
        On a bad source or a failed write; no store is left behind.
    ObjectStoreError
        If an object store cannot be reached or refuses a request (naming the URL).
    LockLostError
        If the target is on object storage and the run lost its lock (it stops writing).
    """
    params = params or QuantizeParams()
    store.check_target(target, overwrite=overwrite, source=source)
    src = source if isinstance(source, ImageSource) else inspect(source, max_pixels=max_pixels)
    if inmemory.eligible(src, params, address=address, target=target):  # one chunk: no dask
        palette = np.asarray(palette, np.uint8)
        return inmemory.write(src, target, palette, params, overwrite=overwrite,
                              max_pixels=max_pixels, fit_info=fit_info,
                              label_options=_label_options(params, palette))
    import dask

    with uri_mod.storage_errors(src.uri):
        image = _image(src, params, max_pixels)
    rows, cols = store_chunks(image)
    shards = store_shards((rows, cols), params.shard)
    palette = np.asarray(palette, np.uint8)
    bits = packing.storage_bits(len(palette))
    label_options = _label_options(params, palette)
    use_lut = uses_lut(src, params)
    meta = store.StoreMeta(
        height=src.height, width=src.width, k=params.k, n_colors=len(palette), bits=bits,
        chunk_rows=rows, chunk_cols=cols,
        shard_rows=shards[0] if shards else None, shard_cols=shards[1] if shards else None,
        source=source_record(src), params=params.to_json())
    brows, bcols = meta.block  # one task writes one whole chunk, or one whole shard
    image = image.rechunk((brows, bcols, 3))
    with store.StoreWriter(target, meta, palette, overwrite=overwrite) as writer:
        blocks = image.to_delayed()
        keys, tasks = [], []
        for i, j, _ in np.ndindex(*blocks.shape):
            keys.append((i, j))
            tasks.append(dask.delayed(_assign_write_block, pure=True)(
                blocks[i, j, 0], palette, bits, writer.root, i * brows, j * bcols,
                meta.packed_block, use_lut, label_options))
        with cluster.scheduler(address):
            results = cluster.compute(*tasks, progress=progress)
        sse = sum(int(r[0]) for r in results)
        counts = np.sum([r[1] for r in results], axis=0)
        return writer.commit(
            metrics=write_metrics(sse, counts, src.height * src.width, params, label_options,
                                  "lut" if use_lut else "direct", fit_info),
            checksum=store.combine_digests(dict(zip(keys, (r[2] for r in results)))))


def preview(source, palette: np.ndarray, out, params: QuantizeParams | None = None, *,
            max_pixels: int | None = None, max_width: int = 1600,
            overwrite: bool = True) -> str:
    """Write original | reconstruction with the palette strip to ``out`` (PNG).

    ``overwrite`` replaces an existing plain file at ``out`` (the default: a preview is
    derived output); the source, folders and anything inside the source are never
    replaced (:func:`kquant.store.check_output`).

    Raises
    ------
    UnsafeTargetError, TargetExistsError, StoreError
        As :func:`kquant.store.check_output` (checked before any work).
    InputError
        On a bad source.
    """
    from . import preview as pv

    params = params or QuantizeParams()
    out = store.check_output(out, overwrite=overwrite, sources=[source])
    src = source if isinstance(source, ImageSource) else inspect(source, max_pixels=max_pixels)
    step = pv.stride_for(src.height, src.width, max_width)
    if inmemory.eligible(src, params):
        whole = inmemory.image(src, params, max_pixels=max_pixels)
        small = np.ascontiguousarray(whole[::step, ::step])
    else:
        image = _image(src, params, max_pixels)
        small = np.asarray(image[::step, ::step].compute(scheduler="threads"))
    options = _label_options(params, np.asarray(palette, np.uint8))
    labels = (dither.label_block(small, palette, **options) if options
              else assign.nearest_block(small, palette))
    recon = np.asarray(palette, np.uint8)[labels]
    pv.write_png(out, pv.compose(small, recon, palette), overwrite=overwrite)
    return str(out)


def imposed_palette(palette, params: QuantizeParams) -> tuple[np.ndarray, QuantizeParams]:
    """An imposed palette (array-like or a palette file or store) and the parameters of a
    run that maps onto it: ``k`` is the palette's size (at least 2), no target PSNR.

    Raises
    ------
    ParameterError
        If an array is not 1-256 RGB colours of integers 0-255.
    InputError, StoreError
        As :func:`kquant.palette_io.read_palette` for a file or store.
    """
    import os

    from .errors import ParameterError

    if isinstance(palette, (str, os.PathLike)):
        from . import palette_io

        arr = palette_io.read_palette(palette)
    else:
        arr = np.asarray(palette)
        if arr.ndim != 2 or arr.shape[1] != 3 or not 1 <= len(arr) <= 256 \
                or arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255:
            raise ParameterError("an imposed palette must be 1-256 RGB colours of integers 0-255")
    return arr.astype(np.uint8), dataclasses.replace(params, k=max(2, len(arr)), target_psnr=None)


def imposed_fit(palette: np.ndarray, n_pixels: int) -> FitResult:
    """The :class:`FitResult` recorded for an imposed palette (``mode="imposed"``)."""
    return FitResult(palette=np.asarray(palette, np.uint8), sse=0, n_pixels=int(n_pixels),
                     n_unique=0, lossless=False, refined_from="imposed", mode="imposed")


def quantize(source, target, params: QuantizeParams | None = None, *, overwrite: bool = False,
             preview_path=None, max_pixels: int | None = None, address: str | None = None,
             progress: bool = False, palette=None) -> QuantizeResult:
    """Quantize ``source`` into a kquant store at ``target`` (the whole job).

    Parameters
    ----------
    source : str or path-like
        Image file or zarr array.
    target : str or path-like
        Store to write (refused if it exists, unless ``overwrite``).
    params : QuantizeParams, optional
        K, seed, sample size, chunking, restarts.
    overwrite : bool, keyword-only
    preview_path : path-like, optional, keyword-only
        Also write a side-by-side preview PNG there.
    max_pixels : int, optional, keyword-only
        Pixel limit for the source's header.
    address : str, optional, keyword-only
        Dask scheduler address; default ``$DASK_SCHEDULER_ADDRESS`` or local threads.
    progress : bool, keyword-only
        Show a progress bar on stderr.
    palette : array-like (n, 3) or path-like, optional, keyword-only
        Impose this palette (1-256 colours; or a palette file or store, see
        :func:`kquant.palette_io.read_palette`) instead of fitting one; ``params.k``
        and ``params.target_psnr`` are then ignored.

    Returns
    -------
    QuantizeResult

    Raises
    ------
    TargetLockedError
        If another run is writing ``target`` (checked before any work).
    UnsafeTargetError
        If ``target`` or ``preview_path`` may not be written, even with ``overwrite``
        (:func:`kquant.store.check_target`, :func:`kquant.store.check_output`; checked
        before any work).
    KquantError
        Any user-facing failure (bad input, bad parameters, existing target);
        nothing is left at ``target`` or ``preview_path`` then.
    """
    from . import locking

    params = params or QuantizeParams()
    target = store.check_target(target, overwrite=overwrite, source=source)
    if preview_path is not None:
        store.check_output(preview_path, overwrite=overwrite, sources=[source], stores=[target])
    with locking.hold(target):  # fail fast if another run writes the same target
        return _quantize(source, target, params, overwrite=overwrite, preview_path=preview_path,
                         max_pixels=max_pixels, address=address, progress=progress,
                         palette=palette)


def _quantize(source, target, params, *, overwrite, preview_path, max_pixels, address, progress,
              palette=None):
    timings = {}
    t0 = time.perf_counter()
    imposed = None
    if palette is not None:
        imposed, params = imposed_palette(palette, params)
    src = inspect(source, max_pixels=max_pixels)
    timings["inspect"] = time.perf_counter() - t0
    t = time.perf_counter()
    if imposed is None:
        result = fit(src, params, max_pixels=max_pixels, address=address, progress=progress)
    else:
        result = imposed_fit(imposed, src.height * src.width)
    timings["fit"] = time.perf_counter() - t
    timings.update({f"fit.{k}": v for k, v in result.timings.items()})
    t = time.perf_counter()
    meta = write(src, target, result.palette, params, overwrite=overwrite,
                 max_pixels=max_pixels, address=address, progress=progress, fit_info=result)
    timings["assign_write"] = time.perf_counter() - t
    if imposed is not None:
        result = dataclasses.replace(result, sse=int(meta.metrics["sse"]),
                                     lossless=bool(meta.metrics["lossless"]))
    written_preview = None
    if preview_path is not None:
        t = time.perf_counter()
        written_preview = preview(src, result.palette, preview_path, params, max_pixels=max_pixels,
                                  overwrite=overwrite)
        timings["preview"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return QuantizeResult(target=uri_mod.normalise(target), meta=meta, fit=result,
                          timings=timings, preview=written_preview)
