"""A source's format by its content (magic bytes), not by its file name."""

from __future__ import annotations

from kquant.errors import InputError, reason
from kquant.io import uri as uri_mod
from kquant.io.source import _has, _isdir, _open

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PILLOW_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"BM": "BMP",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"RIFF": "WEBP",
    b"P6": "PPM",
    b"P5": "PGM",
    b"P3": "PPM",
    b"P2": "PGM",
}


def _sniff(path: str) -> str:
    try:
        with uri_mod.storage_errors(path):  # a missing bucket, denied access: said so
            if _isdir(path):
                if _has(path, "zarr.json") or _has(path, ".zarray"):
                    return "ZARR"
                raise InputError(f"{path} is a directory, not a zarr array")
            with _open(path) as fh:
                head = fh.read(16)
    except FileNotFoundError:
        raise InputError(f"no such file: {path}") from None
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or reason(exc)}") from None
    if not head:
        raise InputError(f"{path} is empty (0 bytes)")
    if head[:4] in _TIFF_MAGIC:
        return "TIFF"
    for magic, name in _PILLOW_MAGIC.items():
        if head.startswith(magic):
            if name == "WEBP" and head[8:12] != b"WEBP":
                continue
            return "PILLOW"
    raise InputError(
        f"{path} is not a recognised image (PNG, JPEG, BMP, GIF, WebP, PNM, TIFF or zarr)"
    )
