"""The parameters of a quantization run: one validated model for the library, the command
line, ``python -m flows.quantize`` and the Prefect flows.

:class:`QuantizeParams` is a frozen dataclass. Each field carries its help text
(``metadata["description"]``, which Prefect shows in its form, since it builds the form
from this class) and, if the command line offers it, its option names
(``metadata["flags"]``); :func:`add_arguments` and :meth:`QuantizeParams.from_args` turn
those into argparse options and back. Choices are ``Literal`` types, so Prefect offers
them as a list and argparse as ``choices``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal

import numpy as np

from kquant.colour.spaces import SPACES, Space
from kquant.errors import ParameterError
from kquant.label.dither import METHODS as DITHER_METHODS
from kquant.label.dither import Dither

#: Fit modes: "exact" refines on the full image's colour histogram (a second pass over
#: the pixels); "sample" fits on a bounded sample read from a subset of tiles; "auto" is
#: exact up to EXACT_MAX_PIXELS and sample above.
Mode = Literal["auto", "exact", "sample"]
MODES: tuple[str, ...] = typing.get_args(Mode)
SampleFit = Literal["auto", "always", "never"]
EXACT_MAX_PIXELS = 1 << 25
DEFAULT_K = 16
#: Pixels drawn for the fit; 2**20 lose nothing measurable against the full histogram at
#: 1 gigapixel (bench/README.md).
DEFAULT_SAMPLE = 1 << 20
DEFAULT_RESTARTS = 4


def _field(default: Any, description: str, *flags: str, metavar: str | None = None) -> Any:
    meta: dict[str, Any] = {"description": description}
    if flags:
        meta["flags"] = flags
    if metavar:
        meta["metavar"] = metavar
    return dataclasses.field(default=default, metadata=meta)


def _int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ParameterError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        span = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ParameterError(f"{name} must be {span}, got {value}")
    return value


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ParameterError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _nodata(value: Any) -> str:
    """``auto``, ``none`` or ``R,G,B`` (normalised: ``"0,0,0"``); a list of 3 ints is accepted.

    Raises
    ------
    ParameterError
        On anything else.
    """
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise ParameterError(f"nodata must be auto, none or R,G,B, got {value!r}")
    text = value.strip().lower()
    if text in ("auto", "none"):
        return text
    try:
        parts = [int(v) for v in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or not all(0 <= v <= 255 for v in parts):
        raise ParameterError(
            f"nodata must be auto, none or R,G,B (three integers 0-255), got {value!r}"
        )
    return ",".join(str(v) for v in parts)


@dataclasses.dataclass(frozen=True)
class QuantizeParams:
    """Parameters of a run; validated on construction, stored in the store's attributes.

    Every field's meaning is its ``metadata["description"]`` (see ``kquant quantize
    --help``); the fit's mode is chosen by :meth:`fit_mode`.

    Raises
    ------
    ParameterError
        On any value out of range.
    """

    k: int = _field(
        DEFAULT_K, "Palette size, 2-256 (with target_psnr: the largest allowed).", "-k", "--colors"
    )
    seed: int = _field(0, "Seed of every random choice: same seed, same store.", "--seed")
    sample_size: int = _field(DEFAULT_SAMPLE, "Pixels sampled for the fit.", "--sample")
    chunk: int | None = _field(
        None,
        "Chunk edge in pixels (rounded up to a multiple of 8; default 2048, or whole TIFF tiles).",
        "--chunk",
    )
    restarts: int = _field(
        DEFAULT_RESTARTS, "Extra k-means++ restarts on the colour histogram.", "--restarts"
    )
    max_iter: int = _field(300, "Iteration cap of each Lloyd run.")
    background: tuple[int, int, int] = _field(
        (255, 255, 255), "Colour transparent pixels are composited over."
    )
    mode: Mode = _field(
        "auto",
        "Fit on every pixel's colour histogram (exact, a second pass) "
        "or on a bounded sample of tiles (sample); auto: exact up to "
        "2^25 pixels.",
        "--mode",
    )
    shard: int | None = _field(
        None,
        "Shard edge in pixels (whole chunks; one task writes one shard); none: no sharding.",
        "--shard",
    )
    space: Space = _field(
        "rgb", "Colour space of the fit and the assignment (lab, oklab: perceptual).", "--space"
    )
    dither: Dither = _field(
        "none",
        "Ordered dithering: 8x8 Bayer or 64x64 blue noise (chunk-parallel, without seams).",
        "--dither",
    )
    target_psnr: float | None = _field(
        None,
        "Use the smallest K (up to k) whose PSNR reaches this many dB.",
        "--target-psnr",
        metavar="DB",
    )
    pyramid: bool | None = _field(
        None,
        "Also write mode-downsampled label levels (an OME-NGFF multiscale pyramid) down to "
        "one chunk; default: for images of 2^24 pixels or more.",
        "--pyramid",
    )
    nodata: str = _field(
        "auto",
        "Masked pixels, left out of the fit and the metrics and given one reserved palette "
        "index (the last): auto (alpha 0, or the file's nodata value), none (alpha is "
        "composited over the background), or R,G,B (that colour, and alpha 0).",
        "--nodata",
        metavar="auto|none|R,G,B",
    )
    export: str | None = _field(
        None,
        "Also export the store as a Cloud-Optimized GeoTIFF: cog (next to the store, "
        "<store stem>.cog.tif) or the path or URI of the .tif to write.",
        "--export",
        metavar="cog|OUT.tif",
    )
    sample_fit: SampleFit = _field(
        "auto",
        "Whether dask-ml's KMeans on the pixel sample seeds "
        "the fit (auto: images of 2^23 pixels or more).",
    )

    def __post_init__(self) -> None:
        def set_(name: str, value: Any) -> None:  # a frozen dataclass validates in place
            object.__setattr__(self, name, value)

        set_("k", _int("k (number of colours)", self.k, 2, 256))
        set_("seed", _int("seed", self.seed, 0, 2**63 - 1))
        set_("sample_size", _int("sample size", self.sample_size, self.k))
        if self.chunk is not None:
            if isinstance(self.chunk, (int, np.integer)) and self.chunk < 1:
                raise ParameterError(f"chunk must be a positive integer, got {self.chunk}")
            set_("chunk", _int("chunk", self.chunk, 1, 1 << 20))
        set_("restarts", _int("restarts", self.restarts, 0, 100))
        set_("max_iter", _int("max_iter", self.max_iter, 1, 100_000))
        bg = tuple(self.background)
        if len(bg) != 3:
            raise ParameterError(f"background must have 3 components, got {self.background!r}")
        set_("background", tuple(_int("background component", c, 0, 255) for c in bg))
        if self.shard is not None:
            set_("shard", _int("shard", self.shard, 1, 1 << 22))
        _choice("mode", self.mode, MODES)
        _choice("space", self.space, SPACES)
        _choice("dither", self.dither, DITHER_METHODS)
        _choice("sample_fit", self.sample_fit, typing.get_args(SampleFit))
        set_("nodata", _nodata(self.nodata))
        if self.export is not None and not (
            isinstance(self.export, str)
            and (self.export == "cog" or self.export.lower().endswith((".tif", ".tiff")))
        ):
            raise ParameterError(
                f"export must be cog or a path or URI ending in .tif, got {self.export!r}"
            )
        if self.pyramid is not None and not isinstance(self.pyramid, bool):
            raise ParameterError(f"pyramid must be true, false or null, got {self.pyramid!r}")
        if self.target_psnr is not None:
            t = self.target_psnr
            if (
                isinstance(t, bool)
                or not isinstance(t, (int, float, np.integer, np.floating))
                or not 1.0 <= float(t) <= 100.0
            ):
                raise ParameterError(
                    f"target PSNR must be a number of dB between 1 and 100, got {t!r}"
                )
            set_("target_psnr", float(t))

    @property
    def nodata_colour(self) -> tuple[int, int, int] | None:
        """The colour ``nodata`` names (``R,G,B``), else None."""
        if self.nodata in ("auto", "none"):
            return None
        r, g, b = (int(v) for v in self.nodata.split(","))
        return r, g, b

    def fit_mode(self, n_pixels: int) -> str:
        """The mode used for an image of ``n_pixels``: "exact" or "sample"."""
        if self.mode != "auto":
            return self.mode
        return "exact" if n_pixels <= EXACT_MAX_PIXELS else "sample"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["background"] = list(self.background)
        return d

    @classmethod
    def from_json(cls, data: dict) -> QuantizeParams:
        """Inverse of :meth:`to_json`.

        Raises
        ------
        ParameterError
            On an unknown name or a value out of range.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ParameterError(f"unknown parameters: {', '.join(sorted(unknown))}")
        d = dict(data)
        if "background" in d:
            d["background"] = tuple(d["background"])
        return cls(**d)

    @classmethod
    def coerce(cls, value: QuantizeParams | dict | None) -> QuantizeParams:
        """``value`` itself, the parameters of its JSON (a dict), or the defaults (None).

        Raises
        ------
        ParameterError
            On an unknown name or a value out of range.
        """
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls.from_json(value)
        raise ParameterError(f"parameters must be a QuantizeParams or a JSON object, got {value!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> QuantizeParams:
        """The parameters of options added by :func:`add_arguments` (unset ones: defaults).

        Raises
        ------
        ParameterError
            On a value out of range.
        """
        given = {
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(cls)
            if "flags" in f.metadata and getattr(args, f.name, None) is not None
        }
        return cls(**given)


def _option_type(annotation: str) -> tuple[Any, tuple[str, ...] | None]:
    """argparse ``type`` and ``choices`` of a field's annotation (a string: postponed)."""
    hint = typing.get_type_hints(QuantizeParams)[annotation]
    if typing.get_origin(hint) is Literal:
        return str, typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add an option for every :class:`QuantizeParams` field that has ``flags``; read
    them back with :meth:`QuantizeParams.from_args`."""
    for f in dataclasses.fields(QuantizeParams):
        flags = f.metadata.get("flags")
        if not flags:
            continue
        kind, choices = _option_type(f.name)
        default = f.default
        text = f.metadata["description"]
        if kind is bool:  # --name / --no-name; unset: the field's default
            parser.add_argument(
                *flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text
            )
            continue
        if default is not None and choices is None:
            text += f" (default {default})"
        parser.add_argument(
            *flags,
            dest=f.name,
            type=kind,
            choices=choices,
            default=default if choices else None,
            metavar=f.metadata.get("metavar"),
            help=text,
        )
