"""Cloud-Optimized GeoTIFF of a store's labels (``kquant export STORE OUT.tif --cog``),
written through GDAL (rasterio) chunk by chunk: the labels go into a tiled paletted GeoTIFF
next to the output, band by band of store blocks, then GDAL's COG driver copies it with
its overviews, resampled by **mode** (labels are categories), down to one tile.

The file: one uint8 band of palette indices, tiled 512 x 512, deflate or zstd, the palette
as its colour table (the nodata entry with alpha 0), the nodata index as GDAL's nodata
value, the store's CRS and transform. Memory stays bounded whatever the image size: one
band of blocks at a time, and GDAL's block cache (``GDAL_CACHEMAX``).
"""

from __future__ import annotations

import os

import numpy as np

#: Tile edge of the COG (GDAL's COG default).
TILE = 512
#: Compressions offered.
COMPRESSIONS = ("deflate", "zstd")
#: GDAL's block cache while writing (MiB): the memory bound of the overviews and the copy.
CACHE_MB = 256


def colour_table(palette: np.ndarray, nodata_index: int | None) -> dict[int, tuple]:
    """rasterio's colour map: palette entry ``i`` opaque, the nodata entry alpha 0."""
    table = {i: (int(r), int(g), int(b), 255) for i, (r, g, b) in enumerate(palette)}
    if nodata_index is not None:
        r, g, b, _ = table[nodata_index]
        table[nodata_index] = (r, g, b, 0)
    return table


def write(st, path: str, *, compress: str = "deflate") -> None:
    """Write the labels of the store ``st`` as a COG at ``path`` (a file the caller
    renames into place: :func:`kquant.export.outputs.export`).

    Raises
    ------
    ParameterError
        If ``compress`` is not one of :data:`COMPRESSIONS`.
    ImportError
        If rasterio is not installed.
    """
    import rasterio
    import rasterio.shutil
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.windows import Window

    from kquant.errors import ParameterError

    if compress not in COMPRESSIONS:
        raise ParameterError(f"compress must be one of {', '.join(COMPRESSIONS)}, got {compress!r}")
    meta = st.meta
    h, w = meta.height, meta.width
    nodata_index = meta.nodata_index
    geo = meta.georeferencing
    profile = dict(
        driver="GTiff",
        height=h,
        width=w,
        count=1,
        dtype="uint8",
        tiled=True,
        blockxsize=TILE,
        blockysize=TILE,
        compress="zstd",
        zstd_level=1,
        BIGTIFF="IF_SAFER",
        photometric="PALETTE",
    )
    if nodata_index is not None:
        profile["nodata"] = nodata_index
    if geo is not None:
        profile.update(crs=CRS.from_wkt(geo.wkt2), transform=Affine(*geo.transform))
    staging = f"{path}.staging.tif"
    labels = st.labels
    rows = max(TILE, -(-meta.block[0] // TILE) * TILE)  # whole tiles, whole store chunks
    cols = max(TILE, -(-min(w, 8192) // TILE) * TILE)
    try:
        with rasterio.Env(GDAL_CACHEMAX=CACHE_MB, GDAL_NUM_THREADS="ALL_CPUS"):
            with rasterio.open(staging, "w", **profile) as dst:
                dst.write_colormap(1, colour_table(st.palette, nodata_index))
                for y0 in range(0, h, rows):
                    for x0 in range(0, w, cols):
                        block = np.asarray(
                            labels[y0 : y0 + rows, x0 : x0 + cols].compute(scheduler="threads")
                        )
                        dst.write(
                            block[None], window=Window(x0, y0, block.shape[1], block.shape[0])
                        )
            rasterio.shutil.copy(
                staging,
                path,
                driver="COG",
                COMPRESS=compress.upper(),
                BLOCKSIZE=TILE,
                OVERVIEW_RESAMPLING="MODE",
                OVERVIEWS="AUTO",
                NUM_THREADS="ALL_CPUS",
                BIGTIFF="IF_SAFER",
            )
    finally:
        if os.path.exists(staging):
            os.remove(staging)
