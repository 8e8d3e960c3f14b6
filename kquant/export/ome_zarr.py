"""``kquant export STORE OUT.ome.zarr``: a standard OME-NGFF 0.5 copy of a store, for readers
that cannot load the packbits codec (docs/format.md, "OME-Zarr export").

::

    OUT.ome.zarr/            image: RGB reconstruction, axes (c, y, x), levels 0, 1, ...
      0, 1, ...              (3, h, w) uint8, zstd
      labels/                {"labels": ["quantized"]}
        quantized/           label image: colours = the palette, the same levels
          0, 1, ...          (1, h, w) uint8 palette indices, zstd

Levels are the store's pyramid (mode of 2x2 blocks), made here when the store has none,
down to one chunk; the RGB of a level is its labels' colours. Written chunk-parallel under a
hidden temporary name beside ``OUT`` and renamed into place once complete; ``overwrite``
replaces only an earlier export (a folder whose ``zarr.json`` says ``kquant_export``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np

from kquant.errors import ParameterError, TargetExistsError, UnsafeTargetError

SUFFIXES = (".zarr",)
LABEL_NAME = "quantized"
#: The group attribute that marks an export (what ``overwrite`` may replace).
MARK = "kquant_export"


def _levels(st):
    """The label levels (dask) of the export: the store's, then 2x2 modes down to one chunk."""
    from kquant.label import downsample
    from kquant.store.format import levels_for

    meta = st.meta
    rows, cols = meta.label_chunks
    n = max(meta.levels, levels_for(meta.height, meta.width, rows, cols))
    levels = [st.level(i) for i in range(meta.levels)]
    while len(levels) < n:
        prev = levels[-1].rechunk((2 * rows, 2 * cols))
        levels.append(
            prev.map_blocks(
                downsample.mode2x2,
                dtype=np.uint8,
                chunks=tuple(tuple(-(-c // 2) for c in axis) for axis in prev.chunks),
            )
        )
    return [lv.rechunk((rows, cols)) for lv in levels]


def _check(out: Path, *, overwrite: bool, store_uri) -> None:
    from kquant.store import targets

    if targets._holds(store_uri, out, follow=False):
        raise UnsafeTargetError(f"{out} lies inside the store {store_uri}: not written")
    if os.path.lexists(out):
        if not overwrite:
            raise TargetExistsError(f"{out} exists (use --overwrite to replace it)")
        doc = out / "zarr.json"
        if out.is_symlink() or not out.is_dir() or not _is_export(doc):
            raise UnsafeTargetError(
                f"{out} is not an OME-Zarr export of kquant: not replaced, even with --overwrite"
            )
    if not out.parent.is_dir():
        from kquant.errors import StoreError

        raise StoreError(f"folder {out.parent} does not exist")


def _is_export(doc: Path) -> bool:
    import json

    try:
        return MARK in json.loads(doc.read_bytes()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return False


def _create(group, path: str, shape: tuple, chunks: tuple):
    """A plain uint8 (c, y, x) array: the bytes codec, then zstd."""
    from zarr.codecs import ZstdCodec

    return group.create_array(
        path,
        shape=shape,
        chunks=chunks,
        dtype="uint8",
        fill_value=0,
        compressors=ZstdCodec(level=3),
        dimension_names=("c", "y", "x"),
    )


def write(store_uri, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the OME-Zarr copy of the store at ``store_uri`` to the folder ``out``.

    Raises
    ------
    ParameterError
        If ``out`` is an object-store URL.
    TargetExistsError
        If ``out`` exists and ``overwrite`` is false.
    UnsafeTargetError
        If ``out`` lies inside the store, or exists and is not an earlier export.
    StoreError, IncompleteStoreError
        If the store cannot be opened.
    """
    import dask
    import dask.array as da
    import zarr

    from kquant import store
    from kquant.io import atomicfile
    from kquant.io import uri as uri_mod
    from kquant.label import reconstruct
    from kquant.store import ngff

    if uri_mod.is_remote(os.fspath(out)):
        raise ParameterError(f"{out}: the OME-Zarr export is written to a local folder")
    out = Path(uri_mod.local_path(os.fspath(out)))
    _check(out, overwrite=overwrite, store_uri=store_uri)
    st = store.open_store(store_uri)
    levels = _levels(st)
    rows, cols = st.meta.label_chunks
    tmp = Path(atomicfile.temporary_name(out))
    try:
        with zarr.config.set({"json_indent": None}):
            root = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
            paths = [str(i) for i in range(len(levels))]
            name = str(st.meta.source.get("uri") or out.name).rstrip("/").rpartition("/")[2]
            root.attrs.update(
                {
                    "ome": {
                        "version": ngff.NGFF_VERSION,
                        "multiscales": ngff.multiscales(
                            name, paths, axes=("c", "y", "x"), downsampling=ngff.DOWNSAMPLING
                        ),
                        "omero": {
                            "channels": [
                                {
                                    "label": c,
                                    "color": colour,
                                    "active": True,
                                    "window": {"start": 0, "end": 255, "min": 0, "max": 255},
                                }
                                for c, colour in (("R", "FF0000"), ("G", "00FF00"), ("B", "0000FF"))
                            ],
                            "rdefs": {"model": "color"},
                        },
                    },
                    MARK: {"store": uri_mod.normalise(store_uri), "levels": len(levels)},
                }
            )
            labels_group = root.create_group("labels")
            labels_group.attrs["ome"] = {"version": ngff.NGFF_VERSION, "labels": [LABEL_NAME]}
            label_image = labels_group.create_group(LABEL_NAME)
            attrs = ngff.label_image(name, paths, st.palette, axes=("c", "y", "x"))
            attrs["image-label"]["source"] = {"image": "../../"}
            label_image.attrs["ome"] = attrs
            sources, targets = [], []
            for path, lv in zip(paths, levels):
                h, w = lv.shape
                rgb = _create(root, path, (3, h, w), (3, rows, cols))
                lab = _create(label_image, path, (1, h, w), (1, rows, cols))
                colour = reconstruct.reconstruct(lv, st.palette).transpose(2, 0, 1)
                sources += [colour.rechunk((3, rows, cols)), lv[None].rechunk((1, rows, cols))]
                targets += [rgb, lab]
            stored = da.store(sources, cast(Any, targets), lock=False, compute=False)
            dask.compute(stored)
        if os.path.lexists(out):  # overwrite: an earlier export, checked above
            trash = Path(atomicfile.temporary_name(out))
            os.rename(out, trash)
            os.rename(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
