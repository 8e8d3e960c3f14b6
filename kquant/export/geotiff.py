"""RGB(A) GeoTIFFs of a georeferenced store (``kquant decode STORE OUT.tif``), written with
rasterio (GDAL) block by block: tiled 512 x 512, deflate, the store's CRS and the transform of
the window decoded. Masked pixels have alpha 0 (a fourth band, ``ExtraSamples`` unassociated
alpha), or the fill colour asked for."""

from __future__ import annotations

import numpy as np

#: Tile edge of the GeoTIFFs written.
TILE = 512


def profile(height: int, width: int, count: int, geo, *, compress: str = "deflate") -> dict:
    """rasterio's creation options of a tiled GeoTIFF of ``count`` uint8 bands."""
    from affine import Affine
    from rasterio.crs import CRS

    options = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=count,
        dtype="uint8",
        compress=compress,
        BIGTIFF="IF_SAFER",
    )
    if height >= TILE and width >= TILE:
        options.update(tiled=True, blockxsize=TILE, blockysize=TILE)
    if geo is not None:
        options.update(crs=CRS.from_wkt(geo.wkt2), transform=Affine(*geo.transform))
    return options


def write_rgb(rgb, path: str, geo) -> None:
    """Write a lazy (h, w, 3 or 4) uint8 array to ``path`` as an RGB(A) GeoTIFF georeferenced
    by ``geo`` (a :class:`kquant.io.geo.GeoInfo` of the array's first pixel), in blocks of
    whole tiles (bounded memory)."""
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.windows import Window

    h, w, bands = rgb.shape
    options = profile(h, w, bands, geo)
    if bands == 4:
        options["photometric"] = "RGB"
        options["alpha"] = "UNASSOCIATED"
    else:
        options["photometric"] = "RGB"
    step = TILE * 4
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(path, "w", **options) as dst:
        if bands == 4:
            dst.colorinterp = [
                ColorInterp.red,
                ColorInterp.green,
                ColorInterp.blue,
                ColorInterp.alpha,
            ]
        for y0 in range(0, h, step):
            for x0 in range(0, w, step):
                block = np.asarray(rgb[y0 : y0 + step, x0 : x0 + step].compute(scheduler="threads"))
                window = Window(x0, y0, block.shape[1], block.shape[0])
                dst.write(np.moveaxis(block, 2, 0), window=window)
