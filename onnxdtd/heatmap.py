"""Heatmaps of relevance: colour maps, normalizations, overlays and labelled grids (Pillow and numpy only)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Rgb = tuple[float, float, float]

# Each colour map is a table of control points (position in [0, 1], RGB in [0, 1]), linear in between:
# matplotlib's maps of the same names, except that "hot" starts at pure black (matplotlib's at 4 % red).
CMAPS: dict[str, tuple[tuple[float, Rgb], ...]] = {
    "bwr": ((0.0, (0.0, 0.0, 1.0)), (0.5, (1.0, 1.0, 1.0)), (1.0, (1.0, 0.0, 0.0))),
    "seismic": ((0.0, (0.0, 0.0, 0.3)), (0.25, (0.0, 0.0, 1.0)), (0.5, (1.0, 1.0, 1.0)),
                (0.75, (1.0, 0.0, 0.0)), (1.0, (0.5, 0.0, 0.0))),
    "hot": ((0.0, (0.0, 0.0, 0.0)), (0.365079, (1.0, 0.0, 0.0)), (0.746032, (1.0, 1.0, 0.0)),
            (1.0, (1.0, 1.0, 1.0))),
    "gray": ((0.0, (0.0, 0.0, 0.0)), (1.0, (1.0, 1.0, 1.0))),
}
NORMS = ("symmetric", "absolute")
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    """Reject an unknown option by naming the allowed values."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def channel_sum(relevance: np.ndarray) -> np.ndarray:
    """A 2-D map from one sample's relevance: (C, H, W) (or (..., H, W)) summed over the leading axes,
    (H, W) as is, (L,) as a 1×L strip."""
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim == 0:
        raise ValueError("relevance must have at least one axis")
    return r[None, :] if r.ndim == 1 else r.reshape(-1, *r.shape[-2:]).sum(axis=0)


def _max_abs(relevance: np.ndarray) -> float:
    """max |R| with NaN read as 0, the default vmax."""
    return float(np.abs(np.nan_to_num(np.asarray(relevance, dtype=np.float64))).max(initial=0.0))


def normalize(relevance_2d: np.ndarray, vmax: float | None = None, norm: str = "symmetric") -> np.ndarray:
    """Colour-map positions in [0, 1]: "symmetric" maps [-vmax, vmax] with 0 at 0.5, "absolute" maps |R| in
    [0, vmax]; values beyond vmax clip (default vmax: max |R|)."""
    _check_choice("norm", norm, NORMS)
    r = np.nan_to_num(np.asarray(relevance_2d, dtype=np.float64))
    if r.ndim != 2:
        raise ValueError(f"relevance_2d must be 2-D, got shape {r.shape} (use channel_sum first)")
    vmax = _max_abs(r) if vmax is None else float(vmax)
    if not vmax >= 0:
        raise ValueError(f"vmax must be >= 0, got {vmax}")
    t = np.clip(r / vmax, -1.0, 1.0) if vmax > 0 else np.zeros_like(r)
    return np.abs(t) if norm == "absolute" else (t + 1.0) / 2.0


def apply_cmap(positions: np.ndarray, cmap: str = "bwr") -> np.ndarray:
    """(..., 3) uint8 RGB of `positions` in [0, 1] on the colour map `cmap` (one of CMAPS)."""
    _check_choice("cmap", cmap, list(CMAPS))
    xp = np.array([x for x, _ in CMAPS[cmap]])
    rgb = np.array([c for _, c in CMAPS[cmap]])
    channels = [np.interp(positions, xp, rgb[:, k]) for k in range(3)]
    return np.round(np.stack(channels, axis=-1) * 255).astype(np.uint8)


def colorize(relevance_2d: np.ndarray, vmax: float | None = None, *,
             cmap: str = "bwr", norm: str = "symmetric") -> np.ndarray:
    """(H, W, 3) uint8 RGB of a 2-D relevance map; the default (bwr, symmetric) is white at 0, red at +vmax,
    blue at -vmax (default vmax: max |R|)."""
    return apply_cmap(normalize(relevance_2d, vmax, norm), cmap)


def heatmap(relevance_2d: np.ndarray, scale: int = 1, vmax: float | None = None, *,
            cmap: str = "bwr", norm: str = "symmetric") -> Image.Image:
    """The RGB heatmap image of a 2-D relevance map, upscaled `scale` times (nearest neighbour)."""
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    img = Image.fromarray(colorize(relevance_2d, vmax, cmap=cmap, norm=norm))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img


def overlay(image: np.ndarray, heat: Image.Image, alpha: float = 0.5) -> Image.Image:
    """`heat` blended with weight `alpha` over a grayscale version of `image` ((H, W) or (H, W, C) in [0, 1])."""
    img = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    gray = img.mean(axis=-1) if img.ndim == 3 else img
    if gray.ndim != 2:
        raise ValueError(f"image must have shape (H, W) or (H, W, C), got {img.shape}")
    base = Image.fromarray(np.round(gray * 255).astype(np.uint8)).convert("RGB")
    base = base.resize(heat.size, Image.Resampling.NEAREST)
    return Image.blend(base, heat.convert("RGB"), alpha)


def _as_rows(images: Sequence, columns: int | None) -> list[list[Image.Image]]:
    """The tiles as rows: a flat list cut `columns` wide (default: about square), a list of rows as given."""
    items = list(images)
    if not items:
        raise ValueError("grid needs at least one image")
    if all(isinstance(item, Image.Image) for item in items):
        columns = math.ceil(math.sqrt(len(items))) if columns is None else columns
        if columns < 1:
            raise ValueError(f"columns must be a positive integer, got {columns}")
        return [items[i:i + columns] for i in range(0, len(items), columns)]
    if columns is not None:
        raise ValueError("columns applies to a flat list of images, not to a list of rows")
    rows = [list(row) for row in items if isinstance(row, Sequence)]
    if len(rows) < len(items) or not all(row and all(isinstance(t, Image.Image) for t in row) for row in rows):
        raise ValueError("images must be a flat list of PIL Images or a list of non-empty rows of PIL Images")
    return rows


def _tile_size(rows: list[list[Image.Image]]) -> tuple[int, int]:
    """The common (width, height) of all tiles; different sizes are an error rather than a silent resize."""
    size = rows[0][0].size
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            if tile.size != size:
                raise ValueError(f"all images must have the size of the first, {size}; the one at row {r}, "
                                 f"column {c} has {tile.size} (make them equal, e.g. with heatmap(..., scale=))")
    return size


def _check_count(name: str, labels: Sequence | None, n: int) -> None:
    """Reject a label list whose length differs from the number of rows or columns it names."""
    if labels is not None and len(labels) != n:
        raise ValueError(f"{name} has {len(labels)} entries, expected {n}")


def _text_size(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> tuple[int, int]:
    """Width and height of `text` drawn at the origin in `font`."""
    _, _, right, bottom = font.getbbox(text)
    return int(right), int(bottom)


def grid(images: Sequence, columns: int | None = None, row_labels: Sequence | None = None,
         column_labels: Sequence | None = None, pad: int = 2) -> Image.Image:
    """One RGB image tiling `images` on white, `pad` pixels apart, with optional row and column labels.

    `images` is a flat list of PIL Images laid out `columns` per row (default: about square; fewer images
    than `columns` give one narrower row), or a list of rows (short rows end in white). All tiles must have
    the size of the first (ValueError otherwise: resizing would blur or distort relevance pixels). A column
    is widened to fit its label, with its tiles centred in it."""
    rows = _as_rows(images, columns)
    (w, h), ncols = _tile_size(rows), max(len(row) for row in rows)
    _check_count("row_labels", row_labels, len(rows))
    _check_count("column_labels", column_labels, ncols)
    font = ImageFont.load_default()
    row_text = [_text_size(str(s), font) for s in row_labels or ()]
    col_text = [_text_size(str(s), font) for s in column_labels or ()]
    left = pad + max(tw for tw, _ in row_text) if row_text else 0
    top = pad + max(th for _, th in col_text) if col_text else 0
    cell_w = max([w] + [tw for tw, _ in col_text])
    canvas = Image.new("RGB", (left + pad + ncols * (cell_w + pad), top + pad + len(rows) * (h + pad)), WHITE)
    draw = ImageDraw.Draw(canvas)
    x0 = [left + pad + c * (cell_w + pad) for c in range(ncols)]
    y0 = [top + pad + r * (h + pad) for r in range(len(rows))]
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            canvas.paste(tile.convert("RGB"), (x0[c] + (cell_w - w) // 2, y0[r]))
    for c, (label, (tw, _)) in enumerate(zip(column_labels or (), col_text)):
        draw.text((x0[c] + (cell_w - tw) // 2, pad), str(label), fill=BLACK, font=font)
    for r, (label, (_, th)) in enumerate(zip(row_labels or (), row_text)):
        draw.text((pad, y0[r] + (h - th) // 2), str(label), fill=BLACK, font=font)
    return canvas


def _cells(maps: np.ndarray | Mapping[str, np.ndarray],
           methods: Sequence | None) -> tuple[list[list[np.ndarray]], list]:
    """The channel-summed 2-D map of each (class, method) cell, and the method labels."""
    if isinstance(maps, Mapping):
        names = list(maps) if methods is None else list(methods)
        missing = [n for n in names if n not in maps]
        if missing:
            raise ValueError(f"methods {missing} are not in maps; available: {list(maps)}")
        per_method = [np.asarray(maps[n]) for n in names]
    else:
        arr = np.asarray(maps)
        if arr.ndim < 3:
            raise ValueError(f"maps must have shape (K classes, M methods, ..., H, W), got {arr.shape}")
        per_method = [arr[:, m] for m in range(arr.shape[1])]
        names = list(range(arr.shape[1])) if methods is None else list(methods)
        _check_count("methods", names, len(per_method))
    counts = {len(p) for p in per_method}
    if len(counts) != 1:
        raise ValueError(f"every method needs the same number of classes, got {sorted(counts)}" if counts
                         else "maps holds no methods")
    return [[channel_sum(p[k]) for p in per_method] for k in range(counts.pop())], names


def class_method_grid(maps: np.ndarray | Mapping[str, np.ndarray], classes: Sequence | None = None,
                      methods: Sequence | None = None, *, scale: int = 1, cmap: str = "bwr",
                      norm: str = "symmetric", shared: bool = False, pad: int = 2) -> Image.Image:
    """Heatmaps with rows = classes and columns = methods, to compare explanations side by side.

    `maps` is an array (K, M, ..., H, W) or a mapping method name -> array (K, ..., H, W) (then `methods`
    picks and orders its keys); leading axes of a cell are summed (channel_sum). Labels: `classes`
    (default 0..K-1) and the method names (default: the keys, or 0..M-1). Each cell is scaled to its own
    max |R|, as zennit and iNNvestigate plots are; `shared=True` uses one vmax, the max |R| of all cells."""
    cells, names = _cells(maps, methods)
    classes = list(range(len(cells))) if classes is None else list(classes)
    _check_count("classes", classes, len(cells))
    vmax = max(_max_abs(cell) for row in cells for cell in row) if shared else None
    tiles = [[heatmap(cell, scale, vmax, cmap=cmap, norm=norm) for cell in row] for row in cells]
    return grid(tiles, row_labels=classes, column_labels=names, pad=pad)
