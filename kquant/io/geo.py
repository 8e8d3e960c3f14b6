"""Georeferencing of GeoTIFF and COG sources, read with rasterio (GDAL): the coordinate
reference system (WKT2 and, where there is one, its EPSG code) and the affine transform from
pixel to map coordinates (GDAL's convention: pixel corners, ``x = a * col + b * row + c``,
``y = d * col + e * row + f``).

Imported only when rasterio is installed (``kquant[geo]``); without it a GeoTIFF is read
as any TIFF, with a warning that its georeferencing is dropped (:mod:`kquant.io.tiff`).
The attribute names are those of the GeoZarr conventions (``proj:`` and ``spatial:``).
"""

from __future__ import annotations

import dataclasses
import math

from kquant.errors import InputError, reason

#: The GeoZarr convention names of the attributes (docs/format.md, "georeferencing").
CODE, WKT2, TRANSFORM = "proj:code", "proj:wkt2", "spatial:transform"


@dataclasses.dataclass(frozen=True)
class GeoInfo:
    """Where an image lies on the Earth: its CRS and its pixel-to-map affine transform.

    Attributes
    ----------
    wkt2 : str
        The CRS as WKT2 (2019).
    code : str or None
        ``"EPSG:<n>"`` when the CRS is an EPSG one, else None.
    transform : tuple of 6 float
        ``(a, b, c, d, e, f)``: ``x = a * col + b * row + c``, ``y = d * col + e * row + f``
        at pixel corners (rasterio's :class:`affine.Affine` order; GDAL's geotransform is
        ``(c, a, b, f, d, e)``).
    """

    wkt2: str
    code: str | None
    transform: tuple[float, float, float, float, float, float]

    @property
    def rotated(self) -> bool:
        """Whether the transform rotates or shears (``b`` or ``d`` not zero)."""
        return self.transform[1] != 0.0 or self.transform[3] != 0.0

    def shifted(self, row: int, col: int, *, scale: int = 1) -> GeoInfo:
        """The georeferencing of the pixels from ``(row, col)`` on, each ``scale`` source
        pixels wide (a window of pyramid level L: ``scale = 2**L``, ``row, col`` in its
        pixels)."""
        a, b, c, d, e, f = self.transform
        a, b, d, e = a * scale, b * scale, d * scale, e * scale
        moved = (a, b, c + a * col + b * row, d, e, f + d * col + e * row)
        return dataclasses.replace(self, transform=tuple(float(v) for v in moved))  # type: ignore[arg-type]

    def gdal_geotransform(self) -> tuple[float, ...]:
        """GDAL's order ``(c, a, b, f, d, e)``."""
        a, b, c, d, e, f = self.transform
        return (c, a, b, f, d, e)

    def to_json(self, height: int, width: int) -> dict:
        """The store's ``geo`` attribute: GeoZarr names, plus the shape and bounding box."""
        a, b, c, d, e, f = self.transform
        xs = [c, c + a * width, c + b * height, c + a * width + b * height]
        ys = [f, f + d * width, f + e * height, f + d * width + e * height]
        return {
            CODE: self.code,
            WKT2: self.wkt2,
            "spatial:transform_type": "affine",
            TRANSFORM: list(self.transform),
            "spatial:dimensions": ["y", "x"],
            "spatial:shape": [int(height), int(width)],
            "spatial:bbox": [min(xs), min(ys), max(xs), max(ys)],
            "spatial:registration": "pixel",
        }

    @classmethod
    def from_json(cls, data: dict | None) -> GeoInfo | None:
        """Inverse of :meth:`to_json` (None for a store without georeferencing)."""
        if not data:
            return None
        t = tuple(float(v) for v in data[TRANSFORM])
        return cls(wkt2=str(data[WKT2]), code=data.get(CODE), transform=t)  # type: ignore[arg-type]


def available() -> bool:
    """Whether rasterio can be imported (``kquant[geo]``)."""
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def _open(path: str):
    import rasterio

    from kquant.io import uri as uri_mod

    if uri_mod.is_remote(path):  # GDAL reads the object through fsspec's file (ranged reads)
        fs, key = uri_mod.filesystem(path)
        return rasterio.open(fs.open(key, "rb"))
    return rasterio.open(path)


def read(path: str, keys: dict | None = None) -> GeoInfo | None:
    """The georeferencing of the GeoTIFF at ``path``, or None if it has none.

    ``keys`` (the file's CRS GeoKeys by name, e.g. ``{"ProjectedCSTypeGeoKey": 32633}``)
    name the code in the message when GDAL cannot parse the CRS.

    A rotated or sheared transform is kept as it is (:attr:`GeoInfo.rotated`).

    Raises
    ------
    InputError
        If GDAL cannot parse the file's CRS (including the unnamed local CRS GDAL falls
        back to for GeoKeys it does not know), or the transform is not finite or is
        degenerate (a pixel of zero area).
    """
    import rasterio
    from rasterio.errors import CRSError, RasterioIOError

    try:
        with _open(path) as ds:
            crs, transform = ds.crs, ds.transform
            gcps = ds.gcps[0]
    except CRSError as exc:
        raise InputError(
            f"{path}: GDAL cannot parse the CRS of this GeoTIFF: {reason(exc)}"
        ) from None
    except (RasterioIOError, rasterio.errors.RasterioError) as exc:
        raise InputError(f"{path}: cannot read its georeferencing: {reason(exc)}") from None
    if crs is None:
        if gcps:
            raise InputError(
                f"{path} is georeferenced by ground control points, which kquant does not "
                "carry; warp it to a grid first (gdalwarp)"
            )
        return None
    try:
        wkt2 = crs.to_wkt(version="WKT2_2019")
    except CRSError as exc:
        raise InputError(
            f"{path}: GDAL cannot parse the CRS of this GeoTIFF: {reason(exc)}"
        ) from None
    if not (crs.is_projected or crs.is_geographic) and '["unnamed"' in wkt2.split(",")[0]:
        named = ", ".join(f"{k} {v}" for k, v in (keys or {}).items())
        raise InputError(
            f"{path}: GDAL cannot parse the CRS of this GeoTIFF"
            + (f" ({named} is not a CRS it knows)" if named else "")
        )
    epsg = crs.to_epsg()
    coefficients = tuple(float(v) for v in tuple(transform)[:6])
    a, b, _, d, e, _ = coefficients
    if not all(math.isfinite(v) for v in coefficients) or a * e - b * d == 0.0:
        raise InputError(f"{path}: its affine transform {coefficients} is degenerate")
    return GeoInfo(
        wkt2=wkt2,
        code=f"EPSG:{epsg}" if epsg is not None else None,
        transform=coefficients,  # type: ignore[arg-type]
    )
