"""Reading a store: :func:`open_store` refuses any store whose status is not ``complete``."""

from __future__ import annotations

import os

import numpy as np

from kquant.errors import IncompleteStoreError, ParameterError, StoreError
from kquant.io import uri as uri_mod
from kquant.label import packing
from kquant.store.format import StoreMeta, chunk_digest, combine_digests, level_path


class KquantStore:
    """A complete kquant store opened for reading.

    Attributes
    ----------
    meta : StoreMeta
    palette : ndarray of uint8, shape (n, 3)
    labels : dask array (H, W) uint8, decoded lazily chunk by chunk
    rgb : dask array (H, W, 3) uint8, reconstructed lazily

    :meth:`level` gives a pyramid level's labels, :meth:`window` a window of the image or of
    a level, :meth:`to_xarray` the whole as an :class:`xarray.Dataset`.
    """

    def __init__(self, root: str, meta: StoreMeta, palette: np.ndarray):
        from kquant.label import reconstruct

        self.root, self.meta, self.palette = root, meta, palette
        self.labels = self.level(0)
        self.rgb = reconstruct.reconstruct(self.labels, palette)

    def level(self, level: int = 0):
        """Lazy labels (h, w) uint8 of pyramid level ``level`` (0: the image; see
        :attr:`StoreMeta.levels`), in blocks of whole write blocks (shards when sharded).

        Raises
        ------
        ParameterError
            If the store has no such level.
        """
        import dask.array as da

        meta = self.meta
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < meta.levels:
            raise ParameterError(
                f"{self.root} has pyramid levels 0 to {meta.levels - 1}, not {level!r}"
            )
        store = uri_mod.zarr_store(self.root, read_only=True)
        if meta.packbits:  # format 3: zarr decodes through the packbits codec
            if level == 0:
                return da.from_zarr(store, component="labels", chunks=meta.block)
            return da.from_zarr(store, component=level_path(level), chunks=meta.level_chunks)
        # formats 1 and 2: packed rows, unpacked block by block
        packed = self.packed
        cols = meta.block[1]
        widths = tuple(min(cols, meta.width - x) for x in range(0, meta.width, cols))
        bits = meta.bits

        def unpack(block, block_info=None):
            j = block_info[0]["chunk-location"][1]
            return packing.unpack_rows(block, bits, widths[j])

        return packed.map_blocks(unpack, dtype=np.uint8, chunks=(packed.chunks[0], widths))

    @property
    def packed(self):
        """Lazy labels packed MSB-first row by row (:func:`kquant.label.packing.pack_rows`),
        one block per write block: what the checksum digests."""
        import dask.array as da

        meta = self.meta
        if meta.packbits:
            bits = meta.bits
            return self.labels.map_blocks(
                lambda block: packing.pack_rows(block, bits),
                dtype=np.uint8,
                chunks=(
                    self.labels.chunks[0],
                    tuple(packing.packed_width(c, bits) for c in self.labels.chunks[1]),
                ),
            )
        # blocks of whole shards (from_zarr would pick the inner chunks)
        return da.from_zarr(
            uri_mod.zarr_store(self.root, read_only=True),
            component="labels",
            chunks=meta.packed_block,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.meta.shape

    def window(self, y0: int, y1: int, x0: int, x1: int, *, level: int = 0):
        """Lazy RGB of rows y0:y1 and columns x0:x1 (reads only the chunks it covers).

        With ``level``, the window is in the pixels of that pyramid level
        (:meth:`level`; :meth:`StoreMeta.level_shape` gives its size).

        Raises
        ------
        ParameterError
            If the store has no such level.
        """
        if level == 0:
            return self.rgb[y0:y1, x0:x1]
        from kquant.label import reconstruct

        return reconstruct.reconstruct(self.level(level)[y0:y1, x0:x1], self.palette)

    def to_xarray(self, *, level: int = 0):
        """The store as an :class:`xarray.Dataset` (needs ``xarray``: ``kquant[xarray]``).

        Variables: lazy ``labels(y, x)`` (palette indices), lazy ``rgb(y, x, band)`` and
        ``palette(entry, band)``; coordinates ``band`` = r, g, b and ``y``, ``x`` in pixels
        of the image (a level's pixel centres: ``2**level * i + (2**level - 1) / 2``);
        attributes ``palette`` (a list of [r, g, b]), ``metrics``, ``params``, ``source``,
        ``psnr``, ``k``, ``n_colors``, ``bits``, ``level``. ``xarray.open_dataset(uri,
        engine="kquant")`` gives the same.

        A georeferenced store has ``x``, ``y`` in the units of its CRS (pixel centres; pixel
        coordinates as above when the transform rotates or shears) and a ``spatial_ref``
        coordinate as rioxarray and GDAL write it (``crs_wkt``, ``spatial_ref``,
        ``GeoTransform`` of the level), named by each variable's ``grid_mapping``, so
        ``ds.rio.crs`` and ``ds.rio.transform()`` give the store's. With a nodata index,
        ``labels`` has the attribute ``nodata`` (that index).

        Raises
        ------
        ParameterError
            If the store has no such level.
        """
        import xarray as xr

        from kquant.label import reconstruct

        labels = self.level(level)
        f = 1 << level
        h, w = labels.shape
        meta = self.meta
        label_attrs: dict = {"long_name": "palette index"}
        if meta.nodata_index is not None:
            label_attrs["nodata"] = meta.nodata_index
        coords: dict = {
            "band": ["r", "g", "b"],
            "y": np.arange(h) * f + (f - 1) / 2,
            "x": np.arange(w) * f + (f - 1) / 2,
        }
        rgb_attrs: dict = {}
        geo = meta.georeferencing
        if geo is not None:
            geo = geo.shifted(0, 0, scale=f)
            a, b, c, d, e, g = geo.transform
            if not geo.rotated:  # pixel centres in the CRS's units
                coords["x"] = c + a * (np.arange(w) + 0.5)
                coords["y"] = g + e * (np.arange(h) + 0.5)
            coords["spatial_ref"] = (
                (),
                0,
                {
                    "crs_wkt": geo.wkt2,
                    "spatial_ref": geo.wkt2,
                    "GeoTransform": " ".join(repr(v) for v in geo.gdal_geotransform()),
                },
            )
            label_attrs["grid_mapping"] = rgb_attrs["grid_mapping"] = "spatial_ref"
        return xr.Dataset(
            {
                "labels": (("y", "x"), labels, label_attrs),
                "rgb": (
                    ("y", "x", "band"),
                    reconstruct.reconstruct(labels, self.palette),
                    rgb_attrs,
                ),
                "palette": (("entry", "band"), self.palette),
            },
            coords=coords,
            attrs={
                "palette": self.palette.tolist(),
                "metrics": dict(meta.metrics),
                "params": dict(meta.params),
                "source": dict(meta.source),
                "psnr": meta.metrics.get("psnr"),
                "k": meta.k,
                "n_colors": meta.n_colors,
                "bits": meta.bits,
                "level": level,
                "kquant_format_version": meta.format_version,
            },
        )

    def verify(self) -> None:
        """Recompute every chunk's digest and compare with the stored checksum.

        Raises
        ------
        StoreError
            If the labels do not match the checksum recorded at completion.
        """
        import dask

        blocks = self.packed.to_delayed()
        keys = list(np.ndindex(*blocks.shape))
        digests = dask.compute(*[dask.delayed(chunk_digest)(blocks[k]) for k in keys])
        if combine_digests(dict(zip(keys, digests))) != self.meta.checksum:
            raise StoreError(f"{self.root}: labels do not match the store's checksum")


def read_meta(uri: str | os.PathLike) -> StoreMeta:
    """The attributes of a kquant store, complete or not.

    Raises
    ------
    StoreError
        If the path is not a zarr group with kquant attributes.
    ObjectStoreError
        If the object store cannot be reached or refuses the read.
    """
    import zarr

    from kquant.store import codecs  # noqa: F401  (registers packbits)

    root = uri_mod.normalise(uri)
    if uri_mod.is_remote(root):
        with uri_mod.storage_errors(root):
            fs, path = uri_mod.filesystem(root)
            has_group = fs.exists(f"{path}/zarr.json")
            if not has_group:  # a missing bucket is said so
                try:
                    fs.info(path)
                except FileNotFoundError as exc:
                    err = uri_mod.storage_error(exc, root)
                    if err is not None:
                        raise err from None
    else:
        has_group = os.path.isfile(os.path.join(root, "zarr.json"))
    if not has_group:
        raise StoreError(f"{root} is not a kquant store (no zarr group)")
    try:
        group = zarr.open_group(store=uri_mod.zarr_store(root, read_only=True), mode="r")
        attrs = group.attrs.asdict()
    except Exception as exc:
        raise StoreError(f"{root} is not a readable zarr group: {exc}") from None
    if "kquant" not in attrs:
        raise StoreError(f"{root} is not a kquant store (no kquant attributes)")
    return StoreMeta.from_json(attrs["kquant"])


def open_store(uri: str | os.PathLike) -> KquantStore:
    """Open a complete kquant store: palette, lazy labels and lazy RGB.

    Parameters
    ----------
    uri : str or path-like
        Local path, ``file://`` or fsspec URL (``s3://bucket/prefix``).

    Raises
    ------
    StoreError
        If the path is not a kquant store.
    IncompleteStoreError
        If the store was never completed (a crashed or running write).
    """
    import zarr

    from kquant.store import codecs  # noqa: F401  (registers packbits)

    root = uri_mod.normalise(uri)
    meta = read_meta(root)
    if not meta.complete:
        raise IncompleteStoreError(
            f"{root} is incomplete (status {meta.status!r}): its run crashed or is still writing"
        )
    palette = np.asarray(
        zarr.open_array(store=uri_mod.zarr_store(root, read_only=True), path="palette", mode="r")[
            ...
        ]
    )
    if palette.shape != (meta.n_colors, 3) or palette.dtype != np.uint8:
        raise StoreError(f"{root}: palette of shape {palette.shape} does not match the attributes")
    return KquantStore(root, meta, palette)
