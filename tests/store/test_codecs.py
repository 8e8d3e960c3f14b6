"""The packbits codec: bytes against an oracle written from the spec text, zarr-python in a
fresh process (no kquant import), and zarrs (Rust) reading them on its own."""

import json
import subprocess
import sys

import numpy as np
import pytest

from kquant.label import packing
from kquant.store.codecs import PackBitsCodec


def spec_oracle(values: np.ndarray, first_bit: int, last_bit: int, padding: str = "none"):
    """zarr-extensions codecs/packbits/README.md, word for word: element i is bits
    [i*k, (i+1)*k) of one sequence (k = last_bit - first_bit + 1, the element's bits from
    first_bit, counted from the least significant); the sequence is padded with 0 bits to a
    multiple of 8; byte i is bits [i*8, (i+1)*8), bit 0 its least significant (the bit
    numbering of first_bit); a padding byte holds the number of padding bits."""
    k = last_bit - first_bit + 1
    seq = []
    for v in np.asarray(values).reshape(-1).tolist():  # lexicographic (C) order
        v = int(v) & ((1 << (8 * values.dtype.itemsize)) - 1)  # two's complement bits
        seq.extend((v >> (first_bit + t)) & 1 for t in range(k))
    pad = -len(seq) % 8
    seq.extend([0] * pad)
    out = [sum(seq[i + u] << u for u in range(8)) for i in range(0, len(seq), 8)]
    if padding == "first_byte":
        out = [pad] + out
    elif padding == "last_byte":
        out = out + [pad]
    return bytes(out)


SHAPES = [(1,), (7,), (3, 5), (13, 11), (2, 3, 7), (1, 1)]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", SHAPES)
def test_labels_widths_equal_the_spec_oracle(bits, shape):
    rng = np.random.default_rng(bits * 100 + len(shape))
    values = rng.integers(0, 1 << bits, size=shape).astype(np.uint8)
    codec = PackBitsCodec(first_bit=0, last_bit=bits - 1)
    data = codec.encode_array(values)
    assert data == spec_oracle(values, 0, bits - 1)
    assert np.array_equal(codec.decode_array(data, shape, np.uint8), values)


@pytest.mark.parametrize(
    "dtype,first,last",
    [
        ("uint8", 0, 2),
        ("uint8", 2, 6),
        ("int8", 0, 3),
        ("int16", 0, 11),
        ("uint16", 3, 15),
        ("int32", 5, 30),
        ("uint64", 0, 63),
        ("bool", 0, 0),
        ("uint8", 0, 7),
    ],
)
@pytest.mark.parametrize("padding", ["none", "first_byte", "last_byte"])
def test_other_types_bit_ranges_and_padding_bytes(dtype, first, last, padding):
    rng = np.random.default_rng(first * 7 + last)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        values = rng.integers(0, 2, size=(5, 7)).astype(bool)
    else:
        info = np.iinfo(dt)
        values = rng.integers(info.min, info.max, size=(5, 7), dtype=dt, endpoint=True)
    codec = PackBitsCodec(padding_encoding=padding, first_bit=first, last_bit=last)
    data = codec.encode_array(values)
    assert data == spec_oracle(values, first, last, padding)
    back = codec.decode_array(data, values.shape, dt)
    # decoding shifts the kept bits back to first_bit, then sign- or zero-extends
    kept = values.astype(np.int64) if dt.kind != "u" else values.astype(np.uint64)
    if dt.kind == "b":
        expected = values
    else:
        mask = (1 << (last - first + 1)) - 1
        field = (
            (kept >> first) & mask
            if dt.kind != "u"
            else (kept >> np.uint64(first)) & np.uint64(mask)
        )
        if dt.kind == "i" and last - first + 1 < dt.itemsize * 8:
            field = np.where(field >> (last - first), field - (mask + 1), field)
        if dt.kind == "u":
            expected = (field << np.uint64(first)).astype(dt)
        else:
            expected = (field << first).astype(dt)
    assert np.array_equal(back, expected)


def test_bad_configurations_and_chunks_are_refused():
    with pytest.raises(ValueError, match="padding_encoding"):
        PackBitsCodec(padding_encoding="middle")
    with pytest.raises(ValueError, match="below"):
        PackBitsCodec(first_bit=4, last_bit=2)
    with pytest.raises(ValueError, match="outside"):
        PackBitsCodec(last_bit=8).encode_array(np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="expected"):
        PackBitsCodec(first_bit=0, last_bit=3).decode_array(b"\x00" * 3, (7,), np.uint8)
    with pytest.raises(ValueError, match="padding byte"):
        PackBitsCodec(padding_encoding="first_byte", last_bit=3).decode_array(
            b"\x05" + b"\x00" * 4, (7,), np.uint8
        )
    assert PackBitsCodec.from_dict(PackBitsCodec(last_bit=3).to_dict()) == PackBitsCodec(last_bit=3)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_row_packing_reordered_is_the_packbits_encoding(bits):
    """kquant's MSB-first rows, reordered byte by byte, are the codec's bytes of a chunk
    whose width fills whole bytes (the direct writes rely on it)."""
    rng = np.random.default_rng(bits)
    labels = rng.integers(0, 1 << bits, size=(9, 24)).astype(np.uint8)
    rows = packing.pack_rows(labels, bits)
    assert packing.reorder_packed(rows, bits).tobytes() == spec_oracle(labels, 0, bits - 1)
    assert np.array_equal(packing.reorder_packed(packing.reorder_packed(rows, bits), bits), rows)


# Fresh processes: the program imports zarr (and numpy) only; zarr finds the codec through
# kquant's `zarr.codecs` entry point.
_WRITE = """
import json, sys
import numpy as np, zarr
from zarr.codecs import ZstdCodec
from kquant.store.codecs import PackBitsCodec
root = sys.argv[1]
for bits in (1, 2, 4, 8):
    for chunks in ((16, 24), (5, 8), (40, 64)):
        x = np.random.default_rng(bits).integers(0, 1 << bits, (37, 53)).astype(np.uint8)
        name = f"{root}/b{bits}-{chunks[0]}x{chunks[1]}"
        a = zarr.create_array(name, shape=x.shape, chunks=chunks, dtype="uint8", fill_value=0,
                              serializer=PackBitsCodec(first_bit=0, last_bit=bits - 1),
                              compressors=ZstdCodec(level=3), dimension_names=("y", "x"))
        a[...] = x
"""

_READ_PLAIN = """
import sys
import numpy as np, zarr
root = sys.argv[1]
for bits in (1, 2, 4, 8):
    x = np.random.default_rng(bits).integers(0, 1 << bits, (37, 53)).astype(np.uint8)
    for chunks in ("16x24", "5x8", "40x64"):
        a = zarr.open_array(f"{root}/b{bits}-{chunks}", mode="r")
        assert np.array_equal(a[...], x), (bits, chunks)
        assert np.array_equal(a[3:36, 7:52], x[3:36, 7:52]), (bits, chunks)  # edge chunks
print("ok", sorted(m for m in sys.modules if m.startswith("kquant")))
"""

_READ_ZARRS = """
import sys
import numpy as np, zarr
from zarr.abc.codec import ArrayBytesCodec
from zarr.registry import register_codec

class Refuse(ArrayBytesCodec):  # keeps the configuration; any use as a codec fails loudly
    is_fixed_size = True
    @classmethod
    def from_dict(cls, data):
        codec = cls()
        object.__setattr__(codec, "configuration", data.get("configuration", {}))
        return codec
    def to_dict(self):
        return {"name": "packbits", "configuration": self.configuration}
    async def _decode_single(self, *a):
        raise RuntimeError("python packbits codec used")
    async def _encode_single(self, *a):
        raise RuntimeError("python packbits codec used")
    def compute_encoded_size(self, n, spec):
        raise RuntimeError("python packbits codec used")

register_codec("packbits", Refuse)
zarr.config.set({"codecs.packbits": "__main__.Refuse"})
root = sys.argv[1]
x = np.random.default_rng(4).integers(0, 16, (37, 53)).astype(np.uint8)
try:  # the refusing codec is the one zarr-python would use
    zarr.open_array(f"{root}/b4-16x24", mode="r")[...]
    raise SystemExit("the Python codec was not replaced")
except RuntimeError:
    pass
zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline",
                 "codec_pipeline.strict": True})  # strict: no fallback to Python codecs
for bits in (1, 2, 4, 8):
    x = np.random.default_rng(bits).integers(0, 1 << bits, (37, 53)).astype(np.uint8)
    for chunks in ("16x24", "5x8", "40x64"):
        a = zarr.open_array(f"{root}/b{bits}-{chunks}", mode="r")
        assert type(a._async_array.codec_pipeline).__name__ == "ZarrsCodecPipeline"
        assert np.array_equal(a[...], x), (bits, chunks)
        assert np.array_equal(a[3:36, 7:52], x[3:36, 7:52]), (bits, chunks)
print("ok")
"""


@pytest.fixture(scope="module")
def codec_arrays(tmp_path_factory):
    root = tmp_path_factory.mktemp("packbits")
    subprocess.run([sys.executable, "-c", _WRITE, str(root)], check=True, timeout=120)
    return root


def test_zarr_alone_reads_every_width_and_chunking(codec_arrays):
    """A program importing only zarr: the entry point brings the codec, nothing else."""
    res = subprocess.run(
        [sys.executable, "-c", _READ_PLAIN, str(codec_arrays)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    loaded = json.loads(res.stdout.split(" ", 1)[1].replace("'", '"'))
    assert "kquant.store.codecs" in loaded and "kquant.pipeline" not in loaded


def test_zarrs_reads_them_with_its_own_codec(codec_arrays):
    """zarrs' Rust packbits, strict (no fallback), with the Python codec made to fail."""
    pytest.importorskip("zarrs")
    res = subprocess.run(
        [sys.executable, "-c", _READ_ZARRS, str(codec_arrays)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_chunk_bytes_are_zstd_of_the_oracle(codec_arrays):
    """What zarr-python wrote: each chunk file is zstd over the spec's bytes of the whole
    (edge-padded) chunk."""
    from numcodecs.zstd import Zstd

    x = np.random.default_rng(2).integers(0, 4, (37, 53)).astype(np.uint8)
    padded = np.zeros((48, 72), np.uint8)
    padded[:37, :53] = x
    for i in range(3):
        for j in range(3):
            raw = (codec_arrays / "b2-16x24" / "c" / str(i) / str(j)).read_bytes()
            block = padded[i * 16 : (i + 1) * 16, j * 24 : (j + 1) * 24]
            assert bytes(Zstd().decode(raw)) == spec_oracle(block, 0, 1)


_READ_STORES = """
import sys
import numpy as np, zarr
root = sys.argv[1]
for name in sys.argv[2:]:
    a = zarr.open_array(f"{root}/{name}.kquant/labels", mode="r")
    expected = np.load(f"{root}/{name}.npy")
    assert a.shape == expected.shape and a.metadata.dimension_names == ("y", "x"), name
    assert np.array_equal(a[...], expected), name
    assert np.array_equal(a[5:-3, 9:-7], expected[5:-3, 9:-7]), name
print("ok")
"""


def test_kquant_stores_of_every_width_read_by_zarr_alone(tmp_path):
    """Real stores: 1, 2, 4 and 8 bits; one chunk of an odd width (the in-memory path), and
    chunks of 48 with edge chunks (the dask path); zarr-python alone reads the labels kquant
    assigned."""
    import imageio.v3 as iio
    import tifffile
    from helpers import photo_like
    from oracles import nearest_oracle

    import kquant
    from kquant.params import QuantizeParams

    img = photo_like(101, 157, seed=13)
    iio.imwrite(tmp_path / "in.png", img)
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="rgb", tile=(16, 16))
    names = []
    for k, bits in ((2, 1), (3, 2), (16, 4), (200, 8)):
        for src, chunk in (("in.png", None), ("in.tif", 48)):
            name = f"k{k}-{chunk}"
            res = kquant.quantize(
                tmp_path / src, tmp_path / f"{name}.kquant", QuantizeParams(k=k, chunk=chunk)
            )
            assert res.meta.bits == bits and res.meta.format_version == 3
            np.save(tmp_path / f"{name}.npy", nearest_oracle(img, res.palette))  # what was written
            names.append(name)
    out = subprocess.run(
        [sys.executable, "-c", _READ_STORES, str(tmp_path), *names],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


_WITHOUT_ENTRY_POINT = r"""
import sys
import zarr.registry
# as in a checkout on PYTHONPATH: zarr knows no packbits entry point
packbits = zarr.registry.__dict__["__codec_registries"]["packbits"]
packbits.lazy_load_list.clear()
assert not packbits
import numpy as np
import kquant
from kquant import QuantizeParams
img = np.random.default_rng(1).integers(0, 256, (40, 52, 3), dtype=np.uint8)
import imageio.v3 as iio
iio.imwrite(sys.argv[1] + "/a.png", img)
kquant.quantize(sys.argv[1] + "/a.png", sys.argv[1] + "/a.kq", QuantizeParams(k=4))
if sys.argv[2] == "read":  # a process that only reads an existing store
    st = kquant.open_store(sys.argv[1] + "/a.kq")
    st.verify()
    assert st.level(0)[...].shape == (40, 52) and st.window(0, 40, 0, 52).shape == (40, 52, 3)
    print(st.to_xarray()["labels"].shape)
print("ok")
"""


def test_kquant_registers_the_codec_without_its_entry_point(tmp_path):
    """kquant's own writes and reads do not need the installed entry point."""
    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_ENTRY_POINT, str(tmp_path), "write"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    code = _WITHOUT_ENTRY_POINT.replace("kquant.quantize(", "0 and kquant.quantize(")
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), "read"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.split() == ["(40,", "52)", "ok"], out.stderr[-2000:]
