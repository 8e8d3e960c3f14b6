"""Exports of a store other tools open: indexed PNG, palette TIFF; the preview picture."""

from kquant.export.images import SUFFIXES, export, png_bits
