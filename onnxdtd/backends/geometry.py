"""Sliding-window geometry shared by conv and pooling kernels: pads (auto_pad, ceil_mode) and output sizes."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ..graph.layer import Layer


@dataclass(frozen=True)
class Window:
    """A resolved window over the spatial axes: every pad is explicit, `extra` is the ceil_mode overhang."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    begin: tuple[int, ...]
    end: tuple[int, ...]
    extra: tuple[int, ...]
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]

    def offsets(self) -> list[tuple[int, ...]]:
        """Every kernel offset, in row-major order (the order that decides max-pool ties)."""
        return list(itertools.product(*(range(k) for k in self.kernel)))

    def slices(self, offset: tuple[int, ...]) -> tuple[slice, ...]:
        """Spatial slices of the padded input read by kernel position `offset` for all outputs."""
        return tuple(slice(o * d, o * d + s * (n - 1) + 1, s)
                     for o, d, s, n in zip(offset, self.dilations, self.strides, self.out_size))

    @property
    def padded_size(self) -> tuple[int, ...]:
        return tuple(i + b + e + x for i, b, e, x in zip(self.in_size, self.begin, self.end, self.extra))


def window(layer: Layer, in_size: tuple[int, ...]) -> Window:
    """Resolve the window of a conv or pooling layer for spatial input size `in_size`."""
    a = layer.attrs
    nd = len(in_size)
    kernel = tuple(a["kernel"]) if a.get("kernel") is not None else tuple(in_size)
    strides = tuple(a.get("strides") or (1,) * nd)
    dilations = tuple(a.get("dilations") or (1,) * nd)
    span = tuple(d * (k - 1) + 1 for d, k in zip(dilations, kernel))
    auto_pad = a.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = tuple(math.ceil(i / s) for i, s in zip(in_size, strides))
        total = [max(0, (o - 1) * s + k - i) for o, s, k, i in zip(out, strides, span, in_size)]
        small = [t // 2 for t in total]
        large = [t - t // 2 for t in total]
        begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        return Window(kernel, strides, dilations, tuple(begin), tuple(end), (0,) * nd, tuple(in_size), out)
    pads = a.get("pads") or (0,) * (2 * nd)
    begin, end = (tuple(pads[:nd]), tuple(pads[nd:])) if auto_pad != "VALID" else ((0,) * nd, (0,) * nd)
    out, extra = [], []
    for i, b, e, k, s in zip(in_size, begin, end, span, strides):
        room = i + b + e - k
        if a.get("ceil_mode"):
            o = -(-room // s) + 1
            if (o - 1) * s >= i + b:  # the last window must start inside the input or the left pad
                o -= 1
        else:
            o = room // s + 1
        out.append(o)
        extra.append(max(0, (o - 1) * s + k - (i + b + e)))
    return Window(kernel, strides, dilations, begin, end, tuple(extra), tuple(in_size), tuple(out))
