"""A store's outputs other tools open: indexed PNG, palette TIFF or Cloud-Optimized GeoTIFF
(:func:`export`, :mod:`.cog`), the RGB(A) image or a window of it (:func:`decode`; a GeoTIFF
for a georeferenced store, :mod:`.geotiff`), and the preview picture (:mod:`.preview`)."""

from kquant.export.outputs import FORMATS, SUFFIXES, decode, export
from kquant.export.png import png_bits

__all__ = ["FORMATS", "SUFFIXES", "decode", "export", "png_bits"]
