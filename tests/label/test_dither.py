"""Ordered dithering: Bayer and blue-noise matrices, seamless block by block, grey levels."""

import numpy as np
import pytest
from helpers import photo_like
from oracles import nearest_oracle

from kquant.errors import ParameterError
from kquant.label import dither


def _low_frequency_power(ranks):
    """Power of the half-on pattern of a rank matrix below 0.15 cycles/px, relative to
    its mean power: ~1 for white noise, near 0 for blue noise."""
    on = (ranks < ranks.size // 2).astype(float)
    power = np.abs(np.fft.fft2(on - on.mean())) ** 2
    f = np.fft.fftfreq(len(ranks))
    radius = np.hypot(f[:, None], f[None, :])
    return power[(radius > 0) & (radius < 0.15)].mean() / power[radius > 0].mean()


def test_bayer_matrix():
    assert np.array_equal(dither.bayer_matrix(2), [[0, 2], [3, 1]])
    m = dither.bayer_matrix(8)
    assert sorted(m.ravel()) == list(range(64))
    with pytest.raises(ParameterError):
        dither.bayer_matrix(6)
    t = dither.threshold(0, 0, 8, 8)
    assert -0.5 < t.min() and t.max() < 0.5 and abs(t.mean()) < 1e-12


def test_blue_noise_matrix():
    m = dither.blue_noise_matrix()
    assert m.shape == (64, 64) and sorted(m.ravel()) == list(range(4096))
    assert _low_frequency_power(m) < 0.1  # blue: little low-frequency power
    white = np.random.default_rng(0).permutation(4096).reshape(64, 64)
    assert _low_frequency_power(white) > 0.5
    assert _low_frequency_power(dither.bayer_matrix(64)) < 0.1
    small = dither.void_and_cluster(16, seed=3)
    assert sorted(small.ravel()) == list(range(256)) and _low_frequency_power(small) < 0.3
    with pytest.raises(ParameterError):
        dither.void_and_cluster(2)
    t = dither.threshold(60, 62, 8, 8, method="blue-noise")  # wraps around the 64x64 tile
    assert -0.5 < t.min() and t.max() < 0.5
    assert t[5, 3] == pytest.approx((m[(60 + 5) % 64, (62 + 3) % 64] + 0.5) / 4096 - 0.5)


@pytest.mark.parametrize(
    "space,method",
    [("rgb", "bayer"), ("lab", "bayer"), ("rgb", "blue-noise"), ("lab", "blue-noise")],
)
def test_dither_blockwise_equals_whole_image(space, method):
    img = photo_like(77, 91, seed=14)
    pal = np.array(
        [[0, 0, 0], [255, 255, 255], [200, 40, 40], [40, 200, 40], [40, 40, 200], [128, 128, 128]],
        np.uint8,
    )
    amt = dither.amount(pal)
    whole = dither.label_block(img, pal, space=space, dither=method, dither_amount=amt)
    for rows, cols in ((8, 8), (13, 24), (40, 16), (77, 91), (5, 90)):
        out = np.empty_like(whole)
        for y in range(0, 77, rows):
            for x in range(0, 91, cols):
                out[y : y + rows, x : x + cols] = dither.label_block(
                    img[y : y + rows, x : x + cols],
                    pal,
                    space=space,
                    dither=method,
                    dither_amount=amt,
                    y0=y,
                    x0=x,
                )
        assert np.array_equal(out, whole), (rows, cols)
    # numpy oracle of the whole image: threshold by global coordinates, round, nearest
    if space == "rgb":
        ranks = dither.bayer_matrix(8) if method == "bayer" else dither.blue_noise_matrix()
        n = len(ranks)
        y, x = np.mgrid[0:77, 0:91]
        t = ((ranks[y % n, x % n] + 0.5) / (n * n) - 0.5) * amt
        moved = np.clip(np.rint(img + t[:, :, None]), 0, 255)
        assert np.array_equal(whole, nearest_oracle(moved, pal))
    # a block of more than dither.SUB_PIXELS is labelled sub-block by sub-block (in a
    # perceptual space each distinct colour once, nearest_in_space.Labeller; in RGB also
    # through the lookup table): the labels of small blocks
    big = photo_like(300, 260, seed=16)
    assert big.shape[0] * big.shape[1] > dither.SUB_PIXELS
    options = dict(space=space, dither=method, dither_amount=amt)
    whole = dither.label_block(big, pal, y0=5, x0=70, **options)
    out = np.empty_like(whole)
    for y in range(0, 300, 64):
        for x in range(0, 260, 48):
            out[y : y + 64, x : x + 48] = dither.label_block(
                big[y : y + 64, x : x + 48], pal, y0=5 + y, x0=70 + x, **options
            )
    assert np.array_equal(out, whole)
    if space == "rgb":
        from kquant.label import lookup

        assert np.array_equal(
            dither.label_block(big, pal, y0=5, x0=70, table=lookup.build(pal), **options), whole
        )


@pytest.mark.parametrize("method", ["bayer", "blue-noise"])
def test_dither_reproduces_grey_levels_with_black_and_white(method):
    ramp = np.repeat(np.linspace(0, 255, 256)[None, :], 32, axis=0)
    img = np.repeat(np.rint(ramp)[:, :, None], 3, axis=2).astype(np.uint8)
    pal = np.array([[0, 0, 0], [255, 255, 255]], np.uint8)
    plain = pal[dither.label_block(img, pal)].astype(float)
    dith = pal[dither.label_block(img, pal, dither=method, dither_amount=255.0)].astype(float)

    # local (8x8) means follow the ramp only when dithered
    def block_err(rec):
        a = rec[..., 0].reshape(4, 8, 32, 8).mean((1, 3))
        b = img[..., 0].astype(float).reshape(4, 8, 32, 8).mean((1, 3))
        return np.abs(a - b).mean()

    assert block_err(dith) < 10 < block_err(plain)
    assert np.array_equal(
        dither.label_block(img, pal, dither=method, dither_amount=0.0), dither.label_block(img, pal)
    )
