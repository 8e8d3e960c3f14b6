"""Conversion of decoded pixels to 24-bit RGB (uint8, 3 channels).

The rule, applied the same way to every reader and block by block:

========================  ===========================================================
input                     result
========================  ===========================================================
RGB, uint8                unchanged
grey (1 channel)          replicated to R = G = B
grey + alpha, RGBA        composited over ``background`` (white by default):
                          ``round((c * a + bg * (max - a)) / max)``, then to 8 bits
bool (bilevel)            False -> 0, True -> 255
uint16                    ``round(v / 257)`` (65535 -> 255), after compositing
float                     values must be finite and within [0, 1]: ``round(v * 255)``
                          (in float64, half to even)
palette                   expanded through the palette by the reader, then as above
CMYK (JPEG)               converted to RGB by the decoder (Pillow)
anything else             rejected with :class:`~kquant.errors.InputError`
========================  ===========================================================

Alpha is composited: a fully transparent pixel takes the background colour. With a mask
rule (:class:`MaskRule`, the ``nodata`` parameter) :func:`to_rgb8_masked` also says which
pixels are masked (fully transparent, the file's nodata value, a given colour): those get
no colour of the palette.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kquant.errors import InputError

WHITE = (255, 255, 255)


class MaskRule(NamedTuple):
    """Which pixels are masked: ``alpha`` (alpha 0), ``value`` (every colour sample equal
    to the file's nodata value, compared before conversion), ``colour`` (this RGB after
    conversion)."""

    alpha: bool = False
    value: float | None = None
    colour: tuple[int, int, int] | None = None


def check_nodata(value: float, dtype, what: str) -> None:
    """Raise :class:`InputError` unless ``value`` is a sample value of ``dtype``.

    ``what`` names the source in the message.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        if not np.isfinite(value):
            raise InputError(f"{what}: a nodata value of {value} is not supported")
        return
    top = 1 if dtype.kind == "b" else np.iinfo(dtype).max
    if not np.isfinite(value) or value != int(value) or not 0 <= value <= top:
        raise InputError(
            f"{what}: its nodata value {value:g} lies outside its {dtype} samples (0..{top})"
        )


def to_rgb8_masked(
    block: np.ndarray, *, background: tuple[int, int, int] = WHITE, rule: MaskRule
) -> np.ndarray:
    """:func:`to_rgb8` plus a validity channel: (H, W, 4) uint8, channel 3 is 255 where the
    pixel is valid and 0 where ``rule`` masks it; masked pixels get the colour
    ``rule.colour`` (else ``background``): the reserved palette entry's, so that they add no
    error and one known colour code to a histogram.

    Raises
    ------
    InputError
        As :func:`to_rgb8`.
    """
    block = np.asarray(block)
    rgb = to_rgb8(block, background=background)
    masked = np.zeros(rgb.shape[:2], bool)
    raw = block if block.ndim == 3 else block[:, :, None]
    channels = raw.shape[2]
    has_alpha = channels in (2, 4)
    if rule.alpha and has_alpha:
        masked |= raw[:, :, -1] == 0
    if rule.value is not None:
        colour = raw[:, :, :-1] if has_alpha else raw
        masked |= np.all(colour == np.asarray(rule.value).astype(raw.dtype), axis=2)
    if rule.colour is not None:
        masked |= np.all(rgb == np.asarray(rule.colour, np.uint8), axis=2)
    out = np.empty(rgb.shape[:2] + (4,), np.uint8)
    out[:, :, :3] = rgb
    out[masked, :3] = np.asarray(rule.colour if rule.colour is not None else background, np.uint8)
    out[:, :, 3] = np.where(masked, 0, 255)
    return out


def channel_layout(shape: tuple[int, ...]) -> int:
    """Number of channels of a decoded image of this shape (1 for a 2-D array).

    Raises
    ------
    InputError
        If the shape is not (H, W) or (H, W, C) with C in 1..4.
    """
    if len(shape) == 2:
        return 1
    if len(shape) == 3 and 1 <= shape[2] <= 4:
        return int(shape[2])
    raise InputError(f"unsupported pixel layout {tuple(shape)}: expected (H, W) or (H, W, 1..4)")


def check_dtype(dtype: np.dtype) -> None:
    """Raise :class:`InputError` unless pixels of ``dtype`` can be converted."""
    dtype = np.dtype(dtype)
    if dtype in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(bool)) or dtype.kind == "f":
        return
    raise InputError(f"unsupported sample type {dtype}: expected 8- or 16-bit unsigned or float")


def to_rgb8(block: np.ndarray, *, background: tuple[int, int, int] = WHITE) -> np.ndarray:
    """Convert one block of decoded pixels to RGB uint8 by the module's rule.

    Parameters
    ----------
    block : ndarray, shape (H, W) or (H, W, C), C in 1..4
        Decoded pixels: uint8, uint16, bool or float in [0, 1].
    background : tuple of 3 int, keyword-only
        Colour (0-255) that transparent pixels are composited over.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)

    Raises
    ------
    InputError
        On an unsupported layout or sample type, or float samples that are not
        finite or lie outside [0, 1].
    """
    block = np.asarray(block)
    channels = channel_layout(block.shape)
    check_dtype(block.dtype)
    if block.dtype == np.uint8 and channels == 3:
        return block
    if block.ndim == 2:
        block = block[:, :, None]

    if block.dtype == bool:
        data, top = block.astype(np.float64) * 255.0, 255.0
    elif block.dtype.kind == "f":
        if not np.isfinite(block).all():
            raise InputError("float image contains NaN or infinite samples")
        if block.size and (block.min() < 0.0 or block.max() > 1.0):
            raise InputError(
                f"float image samples must lie in [0, 1], found {block.min():g}..{block.max():g}"
            )
        data, top = block.astype(np.float64), 1.0
    else:
        data, top = block.astype(np.float64), float(np.iinfo(block.dtype).max)

    has_alpha = channels in (2, 4)
    colour = data[:, :, :-1] if has_alpha else data
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    if has_alpha:  # composite over the background
        alpha = data[:, :, -1:]
        bg = np.asarray(background, np.float64) / 255.0 * top
        colour = (colour * alpha + bg * (top - alpha)) / top
    data = colour
    out = np.rint(data * (255.0 / top))
    return np.clip(out, 0, 255).astype(np.uint8)
