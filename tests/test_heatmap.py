"""The heatmap colour map, channel sums, upscaling and overlay."""
import numpy as np
import pytest
from PIL import Image

from onnxdtd.heatmap import channel_sum, colorize, heatmap, overlay

WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)


def pixel(img: Image.Image, x: int, y: int = 0) -> tuple:
    return tuple(int(v) for v in img.getpixel((x, y)))


def test_zero_white_positive_red_negative_blue():
    img = heatmap(np.array([[-2.0, 0.0, 2.0, 1.0]]))
    assert img.mode == "RGB" and img.size == (4, 1)
    assert pixel(img, 0) == BLUE and pixel(img, 1) == WHITE and pixel(img, 2) == RED
    r, g, b = pixel(img, 3)  # half of max: pale red
    assert r == 255 and g == b and 100 < g < 155


def test_normalization_is_symmetric():
    rgb = colorize(np.array([[-1.0, 4.0, -4.0, 1.0]]))[0]
    assert tuple(rgb[1]) == RED and tuple(rgb[2]) == BLUE  # both signs saturate at max |R|
    assert tuple(rgb[0]) == tuple(rgb[3][::-1])  # ±1 are mirror colours
    assert rgb[0][0] == rgb[0][1] > 180  # -1 of max 4 is a light blue, not saturated


def test_all_zero_is_white_and_vmax_clips():
    assert np.all(colorize(np.zeros((3, 3))) == 255)
    rgb = colorize(np.array([[0.5, 10.0]]), vmax=1.0)[0]
    assert tuple(rgb[1]) == RED and rgb[0][1] == 128


@pytest.mark.parametrize("scale", [1, 8])
def test_scale_gives_size_by_nearest(scale):
    r = np.random.default_rng(0).normal(size=(28, 20))
    img = np.asarray(heatmap(r, scale=scale))
    assert img.shape == (28 * scale, 20 * scale, 3)
    assert np.array_equal(img[::scale, ::scale], colorize(r))
    assert np.array_equal(img[scale - 1::scale, scale - 1::scale], colorize(r))


def test_scale_must_be_positive():
    with pytest.raises(ValueError):
        heatmap(np.ones((2, 2)), scale=0)


def test_channel_sum_shapes():
    r = np.arange(24, dtype=float).reshape(2, 3, 4)
    assert np.array_equal(channel_sum(r), r.sum(axis=0))
    assert np.array_equal(channel_sum(r[0]), r[0])
    strip = channel_sum(np.arange(5.0))
    assert strip.shape == (1, 5) and heatmap(strip, scale=3).size == (15, 3)


def test_overlay_blends_over_gray():
    heat = heatmap(np.array([[0.0, 1.0], [-1.0, 0.0]]), scale=4)
    black = overlay(np.zeros((2, 2)), heat, alpha=1.0)
    assert black.size == (8, 8) and np.array_equal(np.asarray(black), np.asarray(heat))
    rgb = np.ones((2, 2, 3))
    out = np.asarray(overlay(rgb, heat, alpha=0.5)).astype(int)
    assert tuple(out[0, 0]) == WHITE and np.abs(out[0, 4] - (255, 128, 128)).max() <= 1
    assert np.array_equal(np.asarray(overlay(np.zeros((2, 2)), heat, alpha=0.0)), np.zeros((8, 8, 3)))
