"""Reading images: local paths or object-store URLs to lazy, chunked RGB dask arrays."""

from kquant.io.readers import (
    DEFAULT_CHUNK,
    DEFAULT_MAX_DECODED_PIXELS,
    DEFAULT_MAX_PIXELS,
    ImageSource,
    decode_whole,
    inspect_image,
    normalise_chunk,
    open_image,
    open_source,
)

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_MAX_DECODED_PIXELS",
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "decode_whole",
    "inspect_image",
    "normalise_chunk",
    "open_image",
    "open_source",
]
