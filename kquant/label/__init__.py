"""Labelling pixels: nearest palette entries, dithering, packing, error metrics."""
