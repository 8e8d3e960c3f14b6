"""The whole job, as plain functions the CLI and the flows call: :func:`quantize` (inspect ->
fit -> write -> preview), :func:`write` (the write pass, in memory for one-chunk images or on
dask), :func:`preview`, imposed palettes, and recognising a run's own finished store."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from kquant import store
from kquant.errors import KquantError, ParameterError
from kquant.fit import FitResult
from kquant.io import ImageSource
from kquant.io import uri as uri_mod
from kquant.label import assign, dither
from kquant.params import QuantizeParams
from kquant.pipeline import chunked, in_memory
from kquant.pipeline.fitting import fit, inspect
from kquant.pipeline.plan import label_options, mask_rule, same_source


@dataclasses.dataclass(frozen=True)
class QuantizeResult:
    """What a run produced: the store's attributes, the fit, and timings (seconds)."""

    target: str
    meta: store.StoreMeta
    fit: FitResult
    timings: dict
    preview: str | None = None
    export: str | None = None

    @property
    def palette(self) -> np.ndarray:
        return self.fit.palette


def write(
    source,
    target,
    palette: np.ndarray,
    params: QuantizeParams | None = None,
    *,
    overwrite: bool = False,
    max_pixels: int | None = None,
    address: str | None = None,
    progress: bool | Callable[[int, int], None] = False,
    fit_info: FitResult | None = None,
    nodata_index: int | None = None,
) -> store.StoreMeta:
    """Assign every pixel to ``palette`` and write a complete store at ``target``.

    ``progress``: a bar on stderr (true), or a callable ``progress(done, total)`` called
    with the blocks (chunks or shards) written so far, 0 first and ``total`` last.

    ``nodata_index`` (default: ``fit_info``'s), the palette's last entry, is reserved for
    the pixels ``params.nodata`` masks; the others get the nearest of the entries before it.

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
    if nodata_index is None and fit_info is not None:
        nodata_index = fit_info.nodata_index
    if nodata_index is not None and nodata_index != len(palette) - 1:
        raise ValueError("the nodata index must be the palette's last entry")
    if in_memory.eligible(src, params, address=address, target=target):  # one chunk: no dask
        palette = np.asarray(palette, np.uint8)
        if callable(progress):
            progress(0, 1)
        meta = in_memory.write(
            src,
            target,
            palette,
            params,
            overwrite=overwrite,
            max_pixels=max_pixels,
            fit_info=fit_info,
            label_options=label_options(params, palette[:nodata_index]),
            nodata_index=nodata_index,
        )
        if callable(progress):
            progress(1, 1)
        return meta
    return chunked.write(
        src,
        target,
        palette,
        params,
        overwrite=overwrite,
        max_pixels=max_pixels,
        address=address,
        progress=progress,
        fit_info=fit_info,
        nodata_index=nodata_index,
    )


def preview(
    source,
    palette: np.ndarray,
    out,
    params: QuantizeParams | None = None,
    *,
    max_pixels: int | None = None,
    max_width: int = 1600,
    overwrite: bool = True,
    nodata_index: int | None = None,
) -> str:
    """Write original | reconstruction with the palette strip to ``out`` (PNG).

    With ``nodata_index`` (the palette's last entry, reserved for masked pixels) masked
    pixels show as a grey checkerboard on both sides.

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
    from kquant.export import preview as pv

    params = params or QuantizeParams()
    out = store.check_output(out, overwrite=overwrite, sources=[source])
    src = source if isinstance(source, ImageSource) else inspect(source, max_pixels=max_pixels)
    step = pv.stride_for(src.height, src.width, max_width)
    palette = np.asarray(palette, np.uint8)
    rule = mask_rule(src, params) if nodata_index is not None else None
    if in_memory.eligible(src, params):
        whole = in_memory.image(src, params, max_pixels=max_pixels, mask=rule)
        small = np.ascontiguousarray(whole[::step, ::step])
    else:
        image = chunked.image(src, params, max_pixels, rule)
        small = np.asarray(image[::step, ::step].compute(scheduler="threads"))
    valid = None
    if small.shape[2] == 4:
        valid = small[..., 3] != 0
        small = np.ascontiguousarray(small[..., :3])
    colours = palette[:nodata_index]  # all of it without a nodata index
    options = label_options(params, colours)
    labels = (
        dither.label_block(small, colours, **options)
        if options
        else assign.nearest_block(small, colours)
    )
    recon = colours[labels]
    if valid is not None:  # masked pixels: a checkerboard on both sides
        board = pv.checkerboard(*small.shape[:2])
        small[~valid] = board[~valid]
        recon[~valid] = board[~valid]
    pv.write_png(out, pv.compose(small, recon, palette), overwrite=overwrite)
    return str(out)


def export_path(target, params: QuantizeParams) -> str | None:
    """Where ``params.export`` writes the COG of the store at ``target``: ``cog``, next to
    it (``<stem>.cog.tif``), else the path or URI given; None without an export."""
    if params.export is None:
        return None
    if params.export != "cog":
        return uri_mod.normalise(params.export)
    root = uri_mod.normalise(target).rstrip("/")
    stem = root[: -len(".kquant")] if root.endswith(".kquant") else root
    return f"{stem}.cog.tif"


def check_export(out: str, *, overwrite: bool, source, target) -> None:
    """Refuse an export target that may not be written (as :func:`kquant.store.check_output`;
    on object storage: an existing object without ``overwrite``).

    Raises
    ------
    TargetExistsError
        If ``out`` exists and ``overwrite`` is false.
    UnsafeTargetError
        If ``out`` is the source, lies inside the store, or is a folder.
    ObjectStoreError
        If the object store cannot be reached.
    """
    if not uri_mod.is_remote(out):
        sources = [source] if source is not None else []
        store.check_output(out, overwrite=overwrite, sources=sources, stores=[target])
        return
    fs, path = uri_mod.filesystem(out)
    with uri_mod.storage_errors(out):
        exists = fs.exists(path)
    if exists and not overwrite:
        from kquant.errors import TargetExistsError

        raise TargetExistsError(f"{out} exists (use --overwrite to replace it)")


def export_cog(target, out: str, *, overwrite: bool = False, source=None) -> str:
    """Write the store at ``target`` as a COG at ``out`` (local, or uploaded to an object
    store from a local temporary file; :mod:`kquant.export.cog`).

    Raises
    ------
    ParameterError, TargetExistsError, UnsafeTargetError
        As :func:`kquant.export.export`.
    """
    import os
    import tempfile

    from kquant.export import outputs

    check_export(out, overwrite=overwrite, source=source, target=target)
    if not uri_mod.is_remote(out):
        return str(outputs.export(target, out, overwrite=overwrite, cog=True))
    fs, path = uri_mod.filesystem(out)
    with tempfile.TemporaryDirectory(prefix="kquant-cog-") as tmp:
        local = os.path.join(tmp, "export.tif")
        outputs.export(target, local, cog=True)
        fs.put_file(local, path)
    return out


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

    from kquant.errors import ParameterError

    if isinstance(palette, (str, os.PathLike)):
        from kquant.pipeline import palettes

        arr = palettes.read_palette(palette)
    else:
        arr = np.asarray(palette)
        if (
            arr.ndim != 2
            or arr.shape[1] != 3
            or not 1 <= len(arr) <= 256
            or arr.dtype.kind not in "iu"
            or arr.min() < 0
            or arr.max() > 255
        ):
            raise ParameterError("an imposed palette must be 1-256 RGB colours of integers 0-255")
    return arr.astype(np.uint8), dataclasses.replace(params, k=max(2, len(arr)), target_psnr=None)


def reserve_imposed(
    palette: np.ndarray, src: ImageSource, params: QuantizeParams
) -> tuple[np.ndarray, int | None]:
    """An imposed palette for ``src``: with the entry of masked pixels appended when
    ``params.nodata`` can mask pixels of ``src``, and that entry's index (else None).

    Raises
    ------
    ParameterError
        If the palette has 256 colours and the source may have masked pixels.
    InputError
        As :func:`kquant.pipeline.plan.mask_rule`.
    """
    from kquant.pipeline.plan import reserved_colour

    palette = np.asarray(palette, np.uint8)
    if mask_rule(src, params) is None:
        return palette, None
    if len(palette) >= 256:
        raise ParameterError(
            f"{src.uri} may have masked pixels (nodata {params.nodata}): an imposed palette "
            "of 256 colours leaves no index for them (use --nodata none)"
        )
    return np.vstack([palette, np.asarray([reserved_colour(params)], np.uint8)]), len(palette)


def imposed_fit(palette: np.ndarray, n_pixels: int) -> FitResult:
    """The :class:`FitResult` recorded for an imposed palette (``mode="imposed"``)."""
    return FitResult(
        palette=np.asarray(palette, np.uint8),
        sse=0,
        n_pixels=int(n_pixels),
        n_unique=0,
        lossless=False,
        refined_from="imposed",
        mode="imposed",
    )


def quantize(
    source,
    target,
    params: QuantizeParams | None = None,
    *,
    overwrite: bool = False,
    preview_path=None,
    max_pixels: int | None = None,
    address: str | None = None,
    progress: bool = False,
    palette=None,
) -> QuantizeResult:
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
    from kquant.store import locking

    params = params or QuantizeParams()
    target = store.check_target(target, overwrite=overwrite, source=source)
    if preview_path is not None:
        store.check_output(preview_path, overwrite=overwrite, sources=[source], stores=[target])
    exported = export_path(target, params)
    if exported is not None:  # refused before any work, as the store's target
        check_export(exported, overwrite=overwrite, source=source, target=target)
    with locking.hold(target):  # fail fast if another run writes the same target
        return _quantize(
            source,
            target,
            params,
            overwrite=overwrite,
            preview_path=preview_path,
            max_pixels=max_pixels,
            address=address,
            progress=progress,
            palette=palette,
        )


def _quantize(
    source, target, params, *, overwrite, preview_path, max_pixels, address, progress, palette=None
):
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
        reserved, nodata_index = reserve_imposed(imposed, src, params)
        if nodata_index is not None:  # masked pixels get one more entry
            result = dataclasses.replace(result, palette=reserved, nodata_index=nodata_index)
    timings["fit"] = time.perf_counter() - t
    timings.update({f"fit.{k}": v for k, v in result.timings.items()})
    t = time.perf_counter()
    meta = write(
        src,
        target,
        result.palette,
        params,
        overwrite=overwrite,
        max_pixels=max_pixels,
        address=address,
        progress=progress,
        fit_info=result,
    )
    timings["assign_write"] = time.perf_counter() - t
    if imposed is not None:
        result = dataclasses.replace(
            result, sse=int(meta.metrics["sse"]), lossless=bool(meta.metrics["lossless"])
        )
    written_preview = None
    if preview_path is not None:
        t = time.perf_counter()
        written_preview = preview(
            src,
            result.palette,
            preview_path,
            params,
            max_pixels=max_pixels,
            overwrite=overwrite,
            nodata_index=result.nodata_index,
        )
        timings["preview"] = time.perf_counter() - t
    exported = export_path(target, params)
    if exported is not None:
        t = time.perf_counter()
        exported = export_cog(target, exported, overwrite=overwrite, source=source)
        timings["export"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return QuantizeResult(
        target=uri_mod.normalise(target),
        meta=meta,
        fit=result,
        timings=timings,
        preview=written_preview,
        export=exported,
    )


def finished_store(target, source, params: QuantizeParams, *, palette=None):
    """The complete store at ``target`` if it is the result of this run, else None.

    The result of this run: made from ``source`` as it is now (:func:`same_source`), with
    the same parameters and, for an imposed ``palette``, that palette. A store that does not
    record its source's identity is not recognised.
    """
    try:
        st = store.open_store(target)
        same = QuantizeParams.from_json(st.meta.params) == params
    except KquantError:
        return None
    if not same or not same_source(st.meta.source, source):
        return None
    if palette is not None and st.palette.tolist() != np.asarray(palette).tolist():
        return None
    return st
