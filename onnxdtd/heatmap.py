"""Heatmaps of relevance: a symmetric blue-white-red colour map centred at 0 (Pillow and numpy only)."""
from __future__ import annotations

import numpy as np
from PIL import Image


def channel_sum(relevance: np.ndarray) -> np.ndarray:
    """A 2-D map from one sample's relevance: (C, H, W) (or (..., H, W)) summed over the leading axes,
    (H, W) as is, (L,) as a 1×L strip."""
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim == 0:
        raise ValueError("relevance must have at least one axis")
    return r[None, :] if r.ndim == 1 else r.reshape(-1, *r.shape[-2:]).sum(axis=0)


def colorize(relevance_2d: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB: white at 0, saturated red at +vmax, blue at -vmax (default vmax: max |R|)."""
    r = np.nan_to_num(np.asarray(relevance_2d, dtype=np.float64))
    if r.ndim != 2:
        raise ValueError(f"relevance_2d must be 2-D, got shape {r.shape} (use channel_sum first)")
    vmax = float(np.abs(r).max(initial=0.0)) if vmax is None else float(vmax)
    t = np.clip(r / vmax, -1.0, 1.0) if vmax > 0 else np.zeros_like(r)
    fade = 1.0 - np.abs(t)  # the two channels that drop out as |t| grows
    rgb = np.stack([np.where(t >= 0, 1.0, fade), fade, np.where(t <= 0, 1.0, fade)], axis=-1)
    return np.round(rgb * 255).astype(np.uint8)


def heatmap(relevance_2d: np.ndarray, scale: int = 1, vmax: float | None = None) -> Image.Image:
    """The RGB heatmap image of a 2-D relevance map, upscaled `scale` times (nearest neighbour)."""
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    img = Image.fromarray(colorize(relevance_2d, vmax))
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
