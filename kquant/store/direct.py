"""The store's zarr v3 files, made without zarr-python: metadata documents and chunk bytes.

Used by :class:`kquant.store.DirectStoreWriter` (the in-memory path for images of one
chunk, which must not pay zarr's import). Every function returns exactly the bytes
zarr-python 3 writes for the store's arrays (compact JSON, ``json_indent=None``; the
``bytes`` codec, or for format-3 labels the ``packbits`` codec (:mod:`kquant.store.codecs`),
then ``zstd``; chunks equal to the fill value 0 are not written, zarr's
``write_empty_chunks=False``); ``tests/pipeline/test_in_memory.py`` and
``tests/store/test_store.py`` compare the files of both writers.
"""

from __future__ import annotations

import json

import numpy as np

ZARR_JSON = "zarr.json"


def _dumps(doc: dict) -> bytes:
    return json.dumps(doc, allow_nan=True, indent=None).encode()


def group_document(attributes: dict) -> bytes:
    """``zarr.json`` of a group with these attributes."""
    return _dumps({"attributes": attributes, "zarr_format": 3, "node_type": "group"})


def array_document(
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    *,
    zstd_level: int | None = None,
    dimension_names: tuple[str, ...] | None = None,
    packbits: int | None = None,
) -> bytes:
    """``zarr.json`` of a uint8 array (fill value 0), uncompressed or zstd-compressed; with
    ``packbits`` (1, 2, 4 or 8) encoded by the packbits codec at that many bits."""
    codecs: list[dict] = [{"name": "bytes"}]
    if packbits is not None:
        codecs = [packbits_codec(packbits)]
    if zstd_level is not None:
        codecs.append(
            {"name": "zstd", "configuration": {"level": int(zstd_level), "checksum": False}}
        )
    doc = {
        "shape": [int(s) for s in shape],
        "data_type": "uint8",
        "chunk_grid": {
            "name": "regular",
            "configuration": {"chunk_shape": [int(c) for c in chunks]},
        },
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": codecs,
        "attributes": {},
    }
    if dimension_names is not None:
        doc["dimension_names"] = list(dimension_names)
    doc.update(zarr_format=3, node_type="array", storage_transformers=[])
    return _dumps(doc)


def packbits_codec(bits: int) -> dict:
    """The labels' packbits codec entry (as :class:`kquant.store.codecs.PackBitsCodec`
    writes it)."""
    return {
        "name": "packbits",
        "configuration": {"padding_encoding": "none", "first_bit": 0, "last_bit": int(bits) - 1},
    }


def chunk_key(*index: int) -> str:
    """Path of a chunk inside its array (the default ``/``-separated key encoding)."""
    return "/".join(("c",) + tuple(str(int(i)) for i in index))


def chunk_bytes(
    chunk: np.ndarray, *, zstd_level: int | None = None, packbits: int | None = None
) -> bytes | None:
    """Encoded bytes of one whole uint8 chunk; None when zarr would not write it (all 0).

    With ``packbits``, ``chunk`` is the whole chunk's labels packed MSB-first row by row
    (:func:`kquant.label.packing.pack_rows`, each row a whole number of bytes): reordered
    byte by byte, that is the packbits encoding of the chunk.
    """
    chunk = np.ascontiguousarray(chunk, np.uint8)
    if not chunk.any():
        return None
    if packbits is not None:
        from kquant.label import packing

        chunk = packing.reorder_packed(chunk, packbits)
    if zstd_level is None:
        return chunk.tobytes()
    from numcodecs.zstd import Zstd

    return bytes(Zstd(level=int(zstd_level), checksum=False).encode(chunk.reshape(-1)))


def write_chunk(
    array_dir,
    index: tuple[int, ...],
    chunk: np.ndarray,
    *,
    zstd_level: int | None = None,
    packbits: int | None = None,
) -> None:
    """Write one whole chunk of the array in ``array_dir`` at ``index`` as zarr does
    (:func:`chunk_bytes`; nothing for a chunk of zeros)."""
    from pathlib import Path

    data = chunk_bytes(chunk, zstd_level=zstd_level, packbits=packbits)
    if data is not None:
        path = Path(array_dir) / chunk_key(*index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def write_encoded_chunk(
    array_dir,
    index: tuple[int, ...],
    chunk: np.ndarray,
    encoded: np.ndarray,
    *,
    zstd_level: int,
) -> None:
    """Write one whole chunk whose array-to-bytes codec gave ``encoded`` (e.g. packbits),
    then zstd, as zarr does; nothing when ``chunk`` is all 0 (the fill value)."""
    from pathlib import Path

    from numcodecs.zstd import Zstd

    if not np.asarray(chunk).any():
        return
    data = bytes(Zstd(level=int(zstd_level), checksum=False).encode(np.ascontiguousarray(encoded)))
    path = Path(array_dir) / chunk_key(*index)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
