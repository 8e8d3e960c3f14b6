"""A store's outputs other tools open: indexed PNG or palette TIFF (:func:`export`), the RGB
image or a window of it (:func:`decode`), and the preview picture (:mod:`.preview`)."""

from kquant.export.outputs import FORMATS, SUFFIXES, decode, export
from kquant.export.png import png_bits

__all__ = ["FORMATS", "SUFFIXES", "decode", "export", "png_bits"]
