"""Colour maps, normalizations, channel sums, upscaling, overlay, and labelled grids."""
import numpy as np
import pytest
from PIL import Image, ImageFont

from onnxdtd.heatmap import CMAPS, channel_sum, class_method_grid, colorize, grid, heatmap, overlay

WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)
BLACK, YELLOW, GRAY = (0, 0, 0), (255, 255, 0), (128, 128, 128)


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


def colours(rgb: np.ndarray) -> list:
    return [tuple(int(v) for v in c) for c in rgb.reshape(-1, 3)]


@pytest.mark.parametrize("cmap, low, mid, high", [
    ("bwr", BLUE, WHITE, RED),
    ("seismic", (0, 0, 76), WHITE, (128, 0, 0)),  # dark blue, white, dark red
    ("hot", BLACK, (255, 90, 0), WHITE),  # 0 at the middle of hot: orange
    ("gray", BLACK, GRAY, WHITE),
])
def test_symmetric_colours_at_minus_vmax_zero_plus_vmax(cmap, low, mid, high):
    assert colours(colorize(np.array([[-2.0, 0.0, 2.0]]), cmap=cmap)) == [low, mid, high]


@pytest.mark.parametrize("cmap, zero, top", [
    ("bwr", BLUE, RED), ("seismic", (0, 0, 76), (128, 0, 0)), ("hot", BLACK, WHITE), ("gray", BLACK, WHITE),
])
def test_absolute_maps_magnitude_onto_the_whole_map(cmap, zero, top):
    rgb = colorize(np.array([[-3.0, 0.0, 3.0, 9.0]]), vmax=3.0, cmap=cmap, norm="absolute")
    assert colours(rgb) == [top, zero, top, top]  # sign ignored, beyond vmax clips


def test_hot_passes_red_and_yellow_at_its_control_points():
    rgb = colorize(np.array([[0.365079, 0.746032]]), vmax=1.0, cmap="hot", norm="absolute")
    assert colours(rgb) == [RED, YELLOW]


@pytest.mark.parametrize("cmap", ["hot", "gray"])
def test_absolute_brightness_grows_with_magnitude(cmap):
    rgb = colorize(-np.linspace(0.0, 1.0, 101)[None], cmap=cmap, norm="absolute").astype(int)
    assert np.all(np.diff(rgb.sum(axis=-1)[0]) >= 0) and rgb.sum(axis=-1)[0, -1] == 3 * 255


@pytest.mark.parametrize("norm", ["symmetric", "absolute"])
def test_all_zero_is_the_map_centre_or_bottom(norm):
    rgb = colorize(np.zeros((2, 2)), cmap="gray", norm=norm)
    assert set(colours(rgb)) == {GRAY if norm == "symmetric" else BLACK}


def test_heatmap_takes_cmap_and_norm():
    r = np.random.default_rng(1).normal(size=(3, 5))
    img = np.asarray(heatmap(r, scale=2, vmax=1.0, cmap="seismic", norm="absolute"))
    assert np.array_equal(img[::2, ::2], colorize(r, 1.0, cmap="seismic", norm="absolute"))


@pytest.mark.parametrize("kwargs, allowed", [
    ({"cmap": "viridis"}, ", ".join(CMAPS)),
    ({"norm": "minmax"}, "symmetric, absolute"),
])
@pytest.mark.parametrize("draw", [colorize, heatmap])
def test_unknown_cmap_or_norm_names_the_allowed_values(draw, kwargs, allowed):
    with pytest.raises(ValueError, match=allowed):
        draw(np.ones((2, 2)), **kwargs)


@pytest.mark.parametrize("vmax", [-1.0, float("nan")])
def test_vmax_must_be_non_negative(vmax):
    with pytest.raises(ValueError, match="vmax"):
        colorize(np.ones((2, 2)), vmax=vmax)


def solid(i: int, size: tuple = (6, 4)) -> Image.Image:
    """A tile of one colour that tells tile i apart (never white or black)."""
    return Image.new("RGB", size, (10 * i + 20, 200 - 10 * i, 7))


def tile_at(img: Image.Image, x: int, y: int, size: tuple = (6, 4)) -> set:
    return set(colours(np.asarray(img.crop((x, y, x + size[0], y + size[1])))))


@pytest.mark.parametrize("n, columns, shape", [
    (5, 2, (3, 2)), (5, None, (2, 3)), (4, None, (2, 2)), (3, 5, (1, 3)),  # few images: one narrower row
])
def test_grid_lays_a_flat_list_out_in_columns(n, columns, shape):
    rows, cols = shape
    img = grid([solid(i) for i in range(n)], columns=columns, pad=3)
    assert img.mode == "RGB" and img.size == (3 + cols * (6 + 3), 3 + rows * (4 + 3))
    for i in range(rows * cols):
        expected = {tuple(solid(i).getpixel((0, 0)))} if i < n else {WHITE}
        assert tile_at(img, 3 + (i % cols) * 9, 3 + (i // cols) * 7) == expected


def test_grid_of_rows_keeps_rows_and_fills_short_ones_with_white():
    img = grid([[solid(0), solid(1)], [solid(2)]], pad=1)
    assert img.size == (1 + 2 * 7, 1 + 2 * 5)
    assert tile_at(img, 1, 6) == {tuple(solid(2).getpixel((0, 0)))} and tile_at(img, 8, 6) == {WHITE}


def test_grid_labels_add_a_band_and_shift_the_tiles():
    tiles, size = [[solid(0, (40, 30)), solid(1, (40, 30))]] * 2, (40, 30)
    plain = grid(tiles)
    labelled = grid(tiles, row_labels=["cat", "dog"], column_labels=["a", "b"])
    dx, dy = labelled.width - plain.width, labelled.height - plain.height
    assert dx > 0 and dy > 0  # narrow labels: the tiles only move right and down
    assert np.array_equal(np.asarray(labelled)[dy:, dx:], np.asarray(plain))
    ink = np.asarray(labelled).sum(axis=-1) < 3 * 128  # dark text pixels
    for c in range(2):  # each column label above its column, each row label left of its row
        assert ink[:dy, dx + 2 + c * 42: dx + 2 + c * 42 + size[0]].any()
    for r in range(2):
        assert ink[dy + 2 + r * 32: dy + 2 + r * 32 + size[1], :dx].any()


def test_grid_widens_a_column_to_fit_its_label_and_centres_the_tile():
    label = "a rather long method name"
    label_w = ImageFont.load_default().getbbox(label)[2]
    img = grid([solid(0), solid(1)], columns=2, column_labels=[label, "b"], pad=2)
    assert label_w > 6 and img.width == 2 + 2 * (label_w + 2)
    for c in range(2):
        x = 2 + c * (label_w + 2) + (label_w - 6) // 2
        assert tile_at(img, x, img.height - 2 - 4) == {tuple(solid(c).getpixel((0, 0)))}


@pytest.mark.parametrize("images, kwargs, match", [
    ([], {}, "at least one"),
    ([solid(0), solid(1, (6, 5))], {}, r"row 0, column 1 has \(6, 5\)"),
    ([[solid(0)], [solid(1)]], {"columns": 2}, "flat list"),
    ([solid(0)], {"columns": 0}, "positive"),
    ([np.zeros((2, 2, 3))], {}, "PIL Images"),
    ([[solid(0)], []], {}, "non-empty rows"),
    ([solid(0), solid(1)], {"columns": 2, "column_labels": ["a"]}, "column_labels has 1 entries, expected 2"),
    ([solid(0), solid(1)], {"columns": 1, "row_labels": ["a"]}, "row_labels has 1 entries, expected 2"),
])
def test_grid_errors(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        grid(images, **kwargs)


def cell_maps(k: int = 2, m: int = 3) -> np.ndarray:
    """(K, M, 1, 4) maps: cell (k, m) is (k * M + m + 1) × (-1, 0, 0.5, 1)."""
    pattern = np.array([[-1.0, 0.0, 0.5, 1.0]])
    return np.arange(1, k * m + 1, dtype=float).reshape(k, m, 1, 1) * pattern


def count(img: Image.Image, colour: tuple) -> int:
    return int(np.all(np.asarray(img) == colour, axis=-1).sum())


def test_class_method_grid_is_the_labelled_grid_of_cell_heatmaps():
    maps = cell_maps()
    img = class_method_grid(maps, ["cat", "dog"], ["lrp0", "zplus", "dtd"], scale=4, cmap="seismic")
    tiles = [[heatmap(maps[k, m], 4, cmap="seismic") for m in range(3)] for k in range(2)]
    expected = grid(tiles, row_labels=["cat", "dog"], column_labels=["lrp0", "zplus", "dtd"])
    assert np.array_equal(np.asarray(img), np.asarray(expected))


@pytest.mark.parametrize("shared, reds", [(False, 6 * 16), (True, 16)])
def test_class_method_grid_scales_each_cell_or_all_together(shared, reds):
    img = class_method_grid(cell_maps(), scale=4, shared=shared)
    assert count(img, RED) == reds and count(img, BLUE) == reds  # saturated only at each (or the one) max


def test_class_method_grid_from_a_dict_picks_and_orders_methods():
    maps = cell_maps()
    by_name = {"a": maps[:, 0], "b": maps[:, 1], "c": maps[:, 2]}
    img = class_method_grid(by_name, methods=["c", "a"], norm="absolute", cmap="hot")
    expected = class_method_grid(maps[:, [2, 0]], methods=["c", "a"], norm="absolute", cmap="hot")
    assert np.array_equal(np.asarray(img), np.asarray(expected))
    assert np.array_equal(np.asarray(class_method_grid(by_name)), np.asarray(class_method_grid(maps, None, "abc")))


def test_class_method_grid_sums_channels_of_each_cell():
    maps = np.random.default_rng(2).normal(size=(2, 2, 3, 5, 5))
    assert np.array_equal(np.asarray(class_method_grid(maps)), np.asarray(class_method_grid(maps.sum(axis=2))))


@pytest.mark.parametrize("maps, kwargs, match", [
    (np.ones((2, 3)), {}, r"\(K classes, M methods"),
    (np.ones((2, 3, 4, 4)), {"classes": ["a"]}, "classes has 1 entries, expected 2"),
    (np.ones((2, 3, 4, 4)), {"methods": ["a"]}, "methods has 1 entries, expected 3"),
    ({"a": np.ones((2, 4, 4))}, {"methods": ["a", "b"]}, r"\['b'\] are not in maps; available: \['a'\]"),
    ({"a": np.ones((2, 4, 4)), "b": np.ones((3, 4, 4))}, {}, "same number of classes"),
    ({}, {}, "no methods"),
])
def test_class_method_grid_errors(maps, kwargs, match):
    with pytest.raises(ValueError, match=match):
        class_method_grid(maps, **kwargs)
