"""Reading images: local paths or object-store URLs to lazy, chunked RGB dask arrays.

* :mod:`~kquant.io.readers` -- :func:`inspect_image`, :func:`open_image`, :func:`open_source`;
* :mod:`~kquant.io.source` -- :class:`ImageSource` and the limits checked on the header;
* :mod:`~kquant.io.sniff` -- the format by magic bytes;
* :mod:`~kquant.io.pillow`, :mod:`~kquant.io.tiff` (+ :mod:`~kquant.io.tiff_tiles`),
  :mod:`~kquant.io.zarr_input` -- one module per family of formats;
* :mod:`~kquant.io.convert` -- samples to RGB uint8, and the mask of ``nodata``;
* :mod:`~kquant.io.geo` -- GeoTIFF georeferencing, read with rasterio (``kquant[geo]``);
* :mod:`~kquant.io.uri` -- local paths, ``file://`` and fsspec URLs, object-store errors;
* :mod:`~kquant.io.atomicfile` -- output files written whole through exclusive temporary files.
"""

from kquant.io.pillow import decode_whole
from kquant.io.readers import inspect_image, open_image, open_source
from kquant.io.source import (
    DEFAULT_CHUNK,
    DEFAULT_MAX_DECODED_PIXELS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_TILE_BYTES,
    ImageSource,
    normalise_chunk,
    tile_budget,
)

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_MAX_DECODED_PIXELS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_TILE_BYTES",
    "ImageSource",
    "decode_whole",
    "inspect_image",
    "normalise_chunk",
    "open_image",
    "open_source",
    "tile_budget",
]
