"""Validated, JSON-round-tripping parameters of a quantization run."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from kquant.colour.spaces import SPACES
from kquant.label.dither import METHODS as DITHER_METHODS
from kquant.errors import ParameterError

DEFAULT_K = 16
#: Pixels drawn for the fit: in sample mode (huge images) the palette is refined on their
#: histogram, and 2**20 of them (from 128 tiles) lose nothing measurable against the full
#: histogram at 1 gigapixel (bench/README.md); dask-ml's fit sees a subsample of at most
#: kquant.fit.tuning.SAMPLE_FIT_MAX of them.
DEFAULT_SAMPLE = 1 << 20
DEFAULT_RESTARTS = 4
#: Fit modes: "exact" refines on the full image's colour histogram (a second pass over
#: the pixels); "sample" fits on a bounded sample read from a subset of tiles; "auto" is
#: exact up to EXACT_MAX_PIXELS and sample above.
MODES = ("auto", "exact", "sample")
EXACT_MAX_PIXELS = 1 << 25


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


@dataclasses.dataclass(frozen=True)
class QuantizeParams:
    """Parameters of a run; validated on construction, stored in the store's attributes.

    Attributes
    ----------
    k : int
        Number of palette colours, 2 to 256.
    seed : int
        Seed of every random choice (sampling, seeding); same seed, same store.
    sample_size : int
        Pixels drawn for the fit (at least ``k``): in sample mode the palette is refined
        on their histogram; dask-ml's fit sees at most 65,536 of them.
    chunk : int or None
        Chunk edge in pixels (rounded up to a multiple of 8); None for the default.
    restarts : int
        Extra k-means++ restarts on the colour histogram (0 for none).
    max_iter : int
        Iteration cap of each Lloyd run.
    background : tuple of 3 int
        Colour transparent pixels are composited over.
    mode : {"auto", "exact", "sample"}
        Fit on the exact colour histogram of every pixel, or on a bounded
        sample only; "auto" picks exact up to :data:`EXACT_MAX_PIXELS` pixels.
    shard : int or None
        Shard edge in pixels (rounded down to whole chunks); each task then
        writes one whole shard of many chunks. None: no sharding.
    space : {"rgb", "oklab", "lab"}
        Space the palette is fitted and pixels assigned in ("lab" and "oklab"
        are perceptual; see :mod:`kquant.colorspace`).
    dither : {"none", "bayer", "blue-noise"}
        Ordered dithering of the assignment (see :mod:`kquant.dither`).
    target_psnr : float or None
        If set, ``k`` is the largest palette allowed and the smallest K whose
        PSNR (dB) reaches this target is used.
    sample_fit : {"auto", "always", "never"}
        Whether dask-ml's KMeans on the pixel sample seeds the fit ("auto":
        images of at least :data:`kquant.fit.tuning.SAMPLE_FIT_MIN_PIXELS` pixels).

    Raises
    ------
    ParameterError
        On any value out of range.
    """

    k: int = DEFAULT_K
    seed: int = 0
    sample_size: int = DEFAULT_SAMPLE
    chunk: int | None = None
    restarts: int = DEFAULT_RESTARTS
    max_iter: int = 300
    background: tuple[int, int, int] = (255, 255, 255)
    mode: str = "auto"
    shard: int | None = None
    space: str = "rgb"
    dither: str = "none"
    target_psnr: float | None = None
    sample_fit: str = "auto"

    def __post_init__(self) -> None:
        set_ = lambda n, v: object.__setattr__(self, n, v)  # noqa: E731 - frozen dataclass
        set_("k", _int("k (number of colours)", self.k, 2, 256))
        set_("seed", _int("seed", self.seed, 0, 2**63 - 1))
        set_("sample_size", _int("sample size", self.sample_size, self.k))
        if self.chunk is not None:
            set_("chunk", _int("chunk", self.chunk, 1, 1 << 20))
        set_("restarts", _int("restarts", self.restarts, 0, 100))
        set_("max_iter", _int("max_iter", self.max_iter, 1, 100_000))
        bg = tuple(self.background)
        if len(bg) != 3:
            raise ParameterError(f"background must have 3 components, got {self.background!r}")
        set_("background", tuple(_int("background component", c, 0, 255) for c in bg))
        if self.shard is not None:
            set_("shard", _int("shard", self.shard, 1, 1 << 22))
        if self.mode not in MODES:
            raise ParameterError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        _choice("space", self.space, SPACES)
        _choice("dither", self.dither, DITHER_METHODS)
        _choice("sample_fit", self.sample_fit, ("auto", "always", "never"))
        if self.target_psnr is not None:
            t = self.target_psnr
            if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) \
                    or not 1.0 <= float(t) <= 100.0:
                raise ParameterError(f"target PSNR must be a number of dB between 1 and 100, got {t!r}")
            set_("target_psnr", float(t))

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
    def from_json(cls, data: dict) -> "QuantizeParams":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ParameterError(f"unknown parameters: {', '.join(sorted(unknown))}")
        d = dict(data)
        if "background" in d:
            d["background"] = tuple(d["background"])
        return cls(**d)
