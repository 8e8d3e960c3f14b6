"""Reading an imposed palette (``kquant quantize --palette FILE|STORE``).

Accepted sources, recognised by content or suffix:

* a kquant store (its palette's colours: without the entry reserved for masked pixels);
* a GIMP palette (``.gpl``);
* a NumPy array file (``.npy``) of shape (n, 3), integers 0-255;
* a text file of one colour a line, ``#RRGGBB``, ``RRGGBB``, ``R,G,B`` or ``R G B``
  (blank lines and lines starting with ``//`` or ``;`` are skipped);
* an image: an indexed image gives its palette (entries up to the highest index used),
  any other image its distinct colours (at most 256).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from kquant.errors import InputError, reason

_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def _check(pal, where: str) -> np.ndarray:
    arr = np.asarray(pal)
    if arr.ndim != 2 or arr.shape[1] != 3 or not 1 <= len(arr) <= 256:
        raise InputError(f"{where}: a palette needs 1 to 256 RGB colours, got shape {arr.shape}")
    if (
        arr.dtype.kind not in "iuf"
        or not np.all(np.isfinite(arr))
        or np.any(arr != np.round(arr))
        or arr.min() < 0
        or arr.max() > 255
    ):
        raise InputError(f"{where}: palette values must be integers 0-255")
    return arr.astype(np.uint8)


def _text(path: Path, gimp: bool) -> np.ndarray:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text palette") from None
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith(("//", ";")):
            continue
        if gimp:
            if s.startswith("#") or s == "GIMP Palette" or ":" in s:
                continue
            parts = s.split()[:3]
        else:
            m = _HEX.match(s)
            if m:
                v = int(m.group(1), 16)
                rows.append((v >> 16, (v >> 8) & 255, v & 255))
                continue
            parts = re.split(r"[,\s]+", s)
        try:
            if len(parts) != 3:
                raise ValueError
            r, g, b = (int(p) for p in parts)
            rows.append((r, g, b))
        except ValueError:
            raise InputError(f"{path}:{n}: not a colour: {s!r}") from None
    return _check(np.array(rows, np.int64).reshape(-1, 3), str(path))


def _image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode == "P":
                used = int(np.asarray(im).max()) + 1
                pal = np.asarray(im.getpalette("RGB"), np.uint8).reshape(-1, 3)[:used]
                return _check(pal, str(path))
            rgb = np.asarray(im.convert("RGB")).reshape(-1, 3)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: not a palette file, store or image ({reason(exc)})") from None
    codes, first = np.unique(
        rgb.astype(np.uint32) @ np.array([65536, 256, 1], np.uint32), return_index=True
    )
    if len(codes) > 256:
        raise InputError(
            f"{path}: an image used as a palette may have at most 256 colours, it has {len(codes)}"
        )
    return _check(rgb[np.sort(first)], str(path))


def read_palette(source: str | os.PathLike) -> np.ndarray:
    """The palette (n, 3) uint8 held by ``source`` (see the module docstring).

    Raises
    ------
    InputError
        If the source is missing, unreadable, or not 1-256 colours of 0-255.
    StoreError, IncompleteStoreError
        If it is a kquant store that cannot be opened.
    """
    path = Path(source)
    if not path.exists():
        raise InputError(f"palette {path} does not exist")
    if path.is_dir():
        from kquant import store

        st = store.open_store(path)
        return st.palette[: st.meta.nodata_index].copy()  # the reserved entry is per source
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: not a NumPy array file ({reason(exc)})") from None
        return _check(arr, str(path))
    if suffix == ".gpl":
        return _text(path, gimp=True)
    if suffix in (".txt", ".hex", ".csv", ".pal"):
        return _text(path, gimp=False)
    return _image(path)
