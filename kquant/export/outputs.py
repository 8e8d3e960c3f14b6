"""A store's outputs as image files other tools open: :func:`export` writes the labels as they
are with the store's palette (no pixel is re-quantized), :func:`decode` the reconstructed RGB
(or a window of it). One module per format (:mod:`~kquant.export.png`,
:mod:`~kquant.export.tiff`), chosen by the output's suffix."""

from __future__ import annotations

import os
from pathlib import Path

from kquant.errors import ParameterError
from kquant.export import png, tiff

#: Output formats by suffix.
FORMATS = {".png": png, ".tif": tiff, ".tiff": tiff}
SUFFIXES = tuple(FORMATS)


def _format(out: Path, what: str):
    module = FORMATS.get(out.suffix.lower())
    if module is None:
        raise ParameterError(
            f"{what} must end in .png, .tif or .tiff (export: or .ome.zarr), got {out.name!r}"
        )
    return module


def export(
    store_uri: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    cog: bool = False,
    compress: str = "deflate",
) -> Path:
    """Write the store at ``store_uri`` as an indexed PNG, a palette TIFF or an OME-Zarr
    folder at ``out``; with ``cog`` (a ``.tif`` output) a Cloud-Optimized GeoTIFF
    compressed with ``compress`` (``deflate`` or ``zstd``; :mod:`kquant.export.cog`,
    needs rasterio: ``kquant[geo]``).

    The format follows the suffix of ``out`` (``.png``, ``.tif``, ``.tiff``; ``.zarr``, e.g.
    ``OUT.ome.zarr``: :func:`kquant.export.ome_zarr.write`).
    The file is written whole or not at all (:func:`kquant.io.atomicfile.replacing`);
    ``overwrite`` replaces a plain file only (:func:`kquant.store.check_output`).

    Returns
    -------
    Path
        ``out``, absolute.

    Raises
    ------
    ParameterError
        If the suffix is not one of :data:`SUFFIXES` (``.tif``/``.tiff`` with ``cog``), or
        ``cog`` without rasterio.
    TargetExistsError
        If ``out`` exists and ``overwrite`` is false.
    UnsafeTargetError
        If ``out`` lies inside the store, or is a folder (checked before any work).
    StoreError, IncompleteStoreError
        If the store cannot be opened.
    """
    from kquant import store
    from kquant.io import atomicfile

    if os.fspath(out).rstrip("/").endswith(".zarr"):  # a folder: OME-NGFF
        from kquant.export import ome_zarr

        return ome_zarr.write(store_uri, out, overwrite=overwrite)
    module = _format(Path(out), "export output")
    if cog and module is not tiff:
        raise ParameterError(f"a COG is a .tif or .tiff file, got {Path(out).name!r}")
    if cog and not _has_rasterio():
        raise ParameterError("--cog needs rasterio: install kquant[geo]")
    out = store.check_output(Path(out), overwrite=overwrite, stores=[store_uri])
    st = store.open_store(store_uri)
    with atomicfile.replacing(out, overwrite=overwrite) as fh:
        if cog:
            from kquant.export import cog as cog_mod

            cog_mod.write(st, fh.name, compress=compress)
        else:
            module.write_indexed(st, fh)
    return out


def decode(
    store_uri: str | os.PathLike,
    out: str | os.PathLike,
    *,
    window: tuple[int, int, int, int] | None = None,
    overwrite: bool = False,
    level: int = 0,
    fill: tuple[int, int, int] | None = None,
) -> tuple[Path, tuple[int, int]]:
    """Write the RGB image of the store at ``store_uri`` (or the window ``(y0, y1, x0, x1)``
    of it) to ``out``, a PNG or a tiled TIFF by its suffix, whole or not at all.

    With ``level``, from that pyramid level (the window in its pixels): a preview of a
    gigapixel store reads a level, not the image. A store with masked pixels (a nodata
    index) gives RGBA, masked pixels transparent, or RGB with them ``fill``. A
    georeferenced store gives a GeoTIFF (with rasterio, ``kquant[geo]``) whose transform is
    the store's shifted to the window (and scaled to the level).

    Returns
    -------
    out : Path
        ``out``, absolute.
    shape : tuple of int
        Rows and columns written.

    Raises
    ------
    ParameterError
        If the suffix is not ``.png``, ``.tif`` or ``.tiff``, the window is outside
        the image (the level), or the store has no such level.
    TargetExistsError, UnsafeTargetError, StoreError, IncompleteStoreError
        As :func:`export`.
    """
    from kquant import store
    from kquant.io import atomicfile

    module = _format(Path(out), "output")
    out = store.check_output(Path(out), overwrite=overwrite, stores=[store_uri])
    st = store.open_store(store_uri)
    from kquant.label import reconstruct

    labels = st.level(level)  # refuses a level the store lacks
    h, w = labels.shape
    y0, y1, x0, x1 = 0, h, 0, w
    if window is not None:
        y0, y1, x0, x1 = window
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            what = f"level {level}" if level else "the image"
            raise ParameterError(f"window {y0}:{y1},{x0}:{x1} is outside {what} (0:{h},0:{w})")
    palette = reconstruct.output_palette(st.palette, st.meta.nodata_index, fill)
    rgb = reconstruct.reconstruct(labels[y0:y1, x0:x1], palette)
    geo = st.meta.georeferencing
    with atomicfile.replacing(out, overwrite=overwrite) as fh:
        if geo is not None and module is tiff and _has_rasterio():
            from kquant.export import geotiff

            geotiff.write_rgb(rgb, fh.name, geo.shifted(y0, x0, scale=1 << level))
        else:
            if geo is not None:
                import warnings

                from kquant.errors import KquantWarning

                how = "a PNG has no place for it" if module is png else "install kquant[geo]"
                warnings.warn(
                    f"{out.name}: the store's georeferencing is not written ({how})",
                    KquantWarning,
                    stacklevel=2,
                )
            module.write_rgb(rgb, fh)
    return out, (int(rgb.shape[0]), int(rgb.shape[1]))


def _has_rasterio() -> bool:
    from kquant.io import geo

    return geo.available()
