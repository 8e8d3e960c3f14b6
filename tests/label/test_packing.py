"""Bit packing of labels: widths, round trips, a bitstring oracle, storage bits."""

import numpy as np
import pytest

from kquant.errors import ParameterError
from kquant.label import packing


@pytest.mark.parametrize(
    "n,bits",
    [
        (1, 1),
        (2, 1),
        (3, 2),
        (4, 2),
        (5, 3),
        (8, 3),
        (9, 4),
        (16, 4),
        (17, 5),
        (32, 5),
        (33, 6),
        (64, 6),
        (65, 7),
        (128, 7),
        (129, 8),
        (256, 8),
    ],
)
def test_bits_for(n, bits):
    assert packing.bits_for(n) == bits


@pytest.mark.parametrize("n", [0, 257, -3])
def test_bits_for_rejects(n):
    with pytest.raises(ParameterError):
        packing.bits_for(n)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("width", [1, 2, 3, 7, 8, 9, 13, 64, 101])
def test_round_trip_every_width(bits, width):
    rng = np.random.default_rng(bits * 1000 + width)
    labels = rng.integers(0, 2**bits, size=(5, width), dtype=np.uint8)
    packed = packing.pack_rows(labels, bits)
    assert packed.dtype == np.uint8
    assert packed.shape == (5, packing.packed_width(width, bits)) == (5, -(-width * bits // 8))
    assert np.array_equal(packing.unpack_rows(packed, bits, width), labels)


@pytest.mark.parametrize("bits", range(1, 9))
def test_matches_bitstring_oracle(bits):
    """MSB-first order: the packed row is the concatenated binary digits of the labels."""
    rng = np.random.default_rng(bits)
    labels = rng.integers(0, 2**bits, size=(1, 11), dtype=np.uint8)
    digits = "".join(format(int(v), f"0{bits}b") for v in labels[0])
    digits += "0" * (-len(digits) % 8)
    expected = [int(digits[i : i + 8], 2) for i in range(0, len(digits), 8)]
    assert packing.pack_rows(labels, bits)[0].tolist() == expected


def test_four_bits_is_two_pixels_a_byte():
    assert packing.pack_rows(np.array([[1, 2, 3]], np.uint8), 4).tolist() == [[0x12, 0x30]]


def test_aligned_column_blocks_pack_independently():
    """Packing columns in blocks of 8 pixels gives the bytes of packing the whole row."""
    rng = np.random.default_rng(0)
    for bits in range(1, 9):
        labels = rng.integers(0, 2**bits, size=(3, 45), dtype=np.uint8)
        whole = packing.pack_rows(labels, bits)
        parts = [packing.pack_rows(labels[:, i : i + 16], bits) for i in range(0, 45, 16)]
        assert np.array_equal(np.concatenate(parts, axis=1), whole)


def test_rejects_labels_that_do_not_fit():
    with pytest.raises(ParameterError, match="does not fit"):
        packing.pack_rows(np.array([[4]], np.uint8), 2)
    with pytest.raises(ParameterError):
        packing.pack_rows(np.zeros((2, 2), np.uint8), 9)
    with pytest.raises(ParameterError):
        packing.unpack_rows(np.zeros((2, 1), np.uint8), 4, 5)


@pytest.mark.parametrize(
    "n, bits", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 4), (8, 4), (16, 4), (17, 8), (64, 8), (256, 8)]
)
def test_storage_bits(n, bits):
    from kquant.label import packing

    assert packing.storage_bits(n) == bits
