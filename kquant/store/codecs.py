"""The zarr-extensions ``packbits`` codec for zarr-python (docs/format.md, "labels").

An array-to-bytes codec: each element keeps its bits ``first_bit..last_bit`` (0 is the least
significant), elements follow one another in C order in one bit sequence whose bit ``j`` is
bit ``j % 8`` of byte ``j // 8`` (least significant first, as the spec and zarrs number
them), padded with 0 bits to a whole byte, optionally preceded (``first_byte``) or followed
(``last_byte``) by one byte holding the number of padding bits.

zarr-python finds it through the ``zarr.codecs`` entry point of the kquant package (name
``packbits``), so a program that imports only zarr reads kquant's labels wherever kquant is
installed; importing this module (as kquant's store does) registers it as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration

from kquant.label import packing

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

NAME = "packbits"
PADDING_ENCODINGS = ("none", "first_byte", "last_byte")


def _component_bits(dtype: np.dtype) -> int:
    """``N``, the bits of one component of the data type (1 for bool)."""
    if dtype.kind == "b":
        return 1
    if dtype.kind in "iu":
        return dtype.itemsize * 8
    raise ValueError(f"the packbits codec packs bool and integer data types, not {dtype}")


def _optional_bit(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"packbits {name} must be a non-negative integer or null, got {value!r}")
    return value


@dataclass(frozen=True)
class PackBitsCodec(ArrayBytesCodec):
    """``packbits``: integers stored in ``last_bit - first_bit + 1`` bits each.

    Parameters
    ----------
    padding_encoding : {"none", "first_byte", "last_byte"}, keyword-only
        Where the number of padding bits is recorded, if anywhere.
    first_bit, last_bit : int or None, keyword-only
        The bits of each element kept (default: all of them).

    Raises
    ------
    ValueError
        On a configuration the spec does not allow, and (:meth:`validate`) a data type
        that is not bool or an integer, or a bit range outside it.
    """

    is_fixed_size = True

    padding_encoding: str
    first_bit: int | None
    last_bit: int | None

    def __init__(
        self,
        *,
        padding_encoding: str | None = "none",
        first_bit: int | None = None,
        last_bit: int | None = None,
    ) -> None:
        padding_encoding = "none" if padding_encoding is None else padding_encoding
        if padding_encoding not in PADDING_ENCODINGS:
            raise ValueError(
                f"packbits padding_encoding must be one of {', '.join(PADDING_ENCODINGS)}, "
                f"got {padding_encoding!r}"
            )
        first_bit = _optional_bit("first_bit", first_bit)
        last_bit = _optional_bit("last_bit", last_bit)
        if first_bit is not None and last_bit is not None and last_bit < first_bit:
            raise ValueError(f"packbits last_bit {last_bit} is below first_bit {first_bit}")
        object.__setattr__(self, "padding_encoding", padding_encoding)
        object.__setattr__(self, "first_bit", first_bit)
        object.__setattr__(self, "last_bit", last_bit)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        _, configuration = parse_named_configuration(data, NAME, require_configuration=False)
        config: dict[str, Any] = dict(configuration or {})
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": NAME,
            "configuration": {
                "padding_encoding": self.padding_encoding,
                "first_bit": self.first_bit,
                "last_bit": self.last_bit,
            },
        }

    def _bits(self, dtype: np.dtype) -> tuple[int, int]:
        n = _component_bits(dtype)
        first = 0 if self.first_bit is None else self.first_bit
        last = n - 1 if self.last_bit is None else self.last_bit
        if last >= n or first > last:
            raise ValueError(f"packbits bits {first}..{last} lie outside {dtype} ({n} bits)")
        return first, last

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        self._bits(np.dtype(dtype.to_native_dtype()))

    def _padding(self, n_elements: int, b: int) -> int:
        return -(n_elements * b) % 8

    def encode_array(self, values: np.ndarray) -> bytes:
        """The encoded bytes of one chunk (a numpy array of the array's data type)."""
        values = np.asarray(values)
        first, last = self._bits(values.dtype)
        body = packing.packbits_encode(values, first, last)
        if self.padding_encoding == "none":
            return body.tobytes()
        pad = bytes([self._padding(values.size, last - first + 1)])
        if self.padding_encoding == "first_byte":
            return pad + body.tobytes()
        return body.tobytes() + pad

    def decode_array(self, data, shape: tuple[int, ...], dtype) -> np.ndarray:
        """One chunk of ``shape`` and ``dtype`` from its encoded bytes.

        Raises
        ------
        ValueError
            If the bytes are not as long as the chunk needs, or a recorded padding
            disagrees with the chunk's shape.
        """
        dtype = np.dtype(dtype)
        first, last = self._bits(dtype)
        raw = np.frombuffer(memoryview(data), np.uint8)
        n = int(np.prod(shape, dtype=np.int64))
        b = last - first + 1
        expected = (n * b + 7) // 8 + (self.padding_encoding != "none")
        if raw.size != expected:
            raise ValueError(f"packbits chunk of {raw.size} bytes, expected {expected}")
        if self.padding_encoding == "first_byte":
            pad, raw = int(raw[0]), raw[1:]
        elif self.padding_encoding == "last_byte":
            pad, raw = int(raw[-1]), raw[:-1]
        else:
            pad = self._padding(n, b)
        if pad != self._padding(n, b):
            raise ValueError(f"packbits padding byte says {pad} bits, the chunk needs another")
        return packing.packbits_decode(raw, tuple(shape), dtype, first, last)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        dtype = np.dtype(chunk_spec.dtype.to_native_dtype())
        arr = self.decode_array(chunk_bytes.as_numpy_array(), chunk_spec.shape, dtype)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(arr)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        data = self.encode_array(chunk_array.as_numpy_array())
        return chunk_spec.prototype.buffer.from_bytes(data)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        dtype = np.dtype(chunk_spec.dtype.to_native_dtype())
        first, last = self._bits(dtype)
        n = input_byte_length // dtype.itemsize
        return (n * (last - first + 1) + 7) // 8 + (self.padding_encoding != "none")


def register() -> None:
    """Register :class:`PackBitsCodec` with zarr-python under ``packbits`` (what the
    ``zarr.codecs`` entry point does when zarr first meets the name)."""
    from zarr.registry import register_codec

    register_codec(NAME, PackBitsCodec)


# kquant's own reads and writes do not depend on the entry point (a checkout on
# PYTHONPATH, a zipapp): the same class, so zarr sees one implementation either way
register()
