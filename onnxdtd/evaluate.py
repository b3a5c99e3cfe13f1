"""`onnxdtd evaluate`: quality metrics of a model's explanations on inputs, as metrics.json and PNG plots."""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path

import numpy as np

from . import metrics
from .cli import (UsageError, _channel_axis, _input_options, _inputs_and_model, _load_options, _model_options,
                  _positive_int, _read, _scaling, _target)
from .explainer import Explainer, Explanation
from .methods import METHODS, WRAPPERS
from .rules import PRESETS

HELP = """Explain each INPUT (read as by `onnxdtd explain`) and measure the explanations; write
OUTDIR/metrics.json (per-input values and means) and a PNG plot of each metric's curve.

metrics (--metric, repeatable or comma-separated; default: all):
  consistency          conservation error |sum R - f(x)| / |f(x)| and the negative share of relevance
  region-perturbation  AOPC of most-relevant-first patch removal against a random order (Samek 2017)
  pixel-flipping       the same with 1x1 patches
  diffusion            Frobenius distance and correlation of the heatmaps of the two top classes
  randomization        Spearman correlation with the heatmaps of cascadingly randomized models
  continuity           heatmap change under small input noise, per input and per output change
  sparseness           Gini index of the pixel heatmap"""
EXAMPLES = """examples:
  onnxdtd evaluate models/mnist_cnn.onnx models/samples/digit_7.png -o eval
  onnxdtd evaluate models/mnist_cnn.onnx models/samples/digit_*.npy --metric consistency,diffusion
  onnxdtd evaluate models/mnist_cnn.onnx models/samples/digit_7.npy --metric region-perturbation --baseline 0
"""
PLOTS_MISSING = 'the plots need matplotlib: pip install "onnxdtd[plots]"'
Result = tuple[dict, Callable | None]  # a metric's metrics.json record, and what draws its plot


@dataclass
class Context:
    """What every metric reads: the options, the explainer, the batch of inputs and its explanation."""

    args: argparse.Namespace
    explainer: Explainer
    x: np.ndarray
    result: Explanation
    low: np.ndarray
    high: np.ndarray
    channel_axis: int | None

    @cached_property
    def predict(self) -> metrics.Predict:
        return metrics.predictor(self.explainer.model, providers=self.explainer.providers)

    def pixels(self, relevance: np.ndarray) -> np.ndarray:
        """Relevance summed over the channels of an image-like input."""
        return metrics.pixel_map(relevance, self.channel_axis)


# ---------------------------------------------------------------- arguments

def add_parser(sub: argparse._SubParsersAction, presets: str) -> None:
    """Register `onnxdtd evaluate` on the subcommands of the main parser."""
    ev = sub.add_parser("evaluate", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
                        help="measure explanations: metrics.json and PNG plots", description=HELP)
    ev.add_argument("model", metavar="MODEL", help="an .onnx file")
    ev.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy arrays or image files")
    ev.add_argument("--metric", action="append", type=_metric_names, metavar="M",
                    help=f"metrics to compute: {', '.join(METRICS)} (default: all)")
    ev.add_argument("--rules", default="dtd", choices=list(PRESETS), metavar="P", help=presets)
    ev.add_argument("--target", type=int, metavar="K", help="class to explain (default: the predicted one)")
    ev.add_argument("--method", default="lrp", choices=[*METHODS, *WRAPPERS], metavar="M",
                    help=f"explanation method: {', '.join([*METHODS, *WRAPPERS])} (default: lrp, the rule chain of "
                         "--rules)")
    _input_options(ev)
    ev.add_argument("--patch", type=_positive_int, metavar="P",
                    help="region-perturbation patch side (default: 4 up to 32 px images, else 9)")
    ev.add_argument("--steps", type=_positive_int, metavar="L",
                    help="perturbation steps (default: 100, or every patch when there are fewer)")
    ev.add_argument("--baseline", type=_baseline, default="uniform", metavar="B",
                    help="replacement of removed patches: 'uniform' noise in [low, high] or a number "
                         "(default: uniform)")
    ev.add_argument("--radius", type=_positive_float, default=0.05, metavar="E",
                    help="continuity: std of the input noise, in model input units (default: 0.05)")
    ev.add_argument("--samples", type=_positive_int, default=8, metavar="S",
                    help="continuity: noisy copies per input (default: 8)")
    ev.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    ev.add_argument("-o", "--outdir", default="onnxdtd-eval", help="output folder (default: onnxdtd-eval)")
    _model_options(ev)
    ev.set_defaults(run=run)


def _metric_names(text: str) -> list[str]:
    """argparse type: one or more comma-separated metric names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown metric {', '.join(unknown) or repr(text)} "
                                         f"(choose from {', '.join(METRICS)})")
    return names


def _baseline(text: str) -> str | float:
    """argparse type: 'uniform' or a finite number."""
    return text if text == "uniform" else _number(text, "'uniform' or a finite number", lambda v: True)


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, "a positive number", lambda v: v > 0)


def _number(text: str, expected: str, valid: Callable[[float], bool]) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and valid(value)):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


# ---------------------------------------------------------------- the command

def run(args: argparse.Namespace) -> int:
    """Explain the inputs, compute the chosen metrics, then write metrics.json and the plots."""
    chosen = list(dict.fromkeys(name for group in args.metric or [list(METRICS)] for name in group))
    figure = _figure() if any(name in PLOTTED for name in chosen) else None  # fail before the work
    paths, model = _inputs_and_model(args, "evaluate it from Python (onnxdtd.metrics)")
    shape = model.input_shape or ()
    mean, std, low, high = _scaling(args, shape)
    ex = Explainer(model, rules=args.rules, low=low, high=high, maxpool=args.maxpool, backend=args.backend,
                   method=args.method)
    items = [_read(path, path.stem, shape, mean, std) for path in paths]
    if len({item.x.shape[1:] for item in items}) > 1:
        raise UsageError("the inputs have different shapes; evaluate them in separate runs")
    x = np.concatenate([item.x for item in items])
    ctx = Context(args, ex, x, ex.explain(x, target=args.target), low, high, _channel_axis(x.shape))
    results = {name: METRICS[name](ctx) for name in chosen}
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    report = {"model": str(args.model), "preset": args.rules, "method": args.method, "backend": ex.backend.name,
              "inputs": [f"{item.path}[{i}]" if len(item.x) > 1 else str(item.path)
                         for item in items for i in range(len(item.x))],
              "targets": ctx.result.target, "metrics": {}}
    for name, (record, draw) in results.items():
        if draw is not None:
            record["plot"] = _plot(figure, draw, _target(outdir / f"{name}.png", set(paths)))
        report["metrics"][name] = record
        print(f"{name}: " + ", ".join(f"{key} {_show(value)}" for key, value in record["mean"].items()))
    path = _target(outdir / "metrics.json", set(paths))
    path.write_text(json.dumps(_plain(report), indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}")
    return 0


def _consistency(ctx: Context) -> Result:
    res = ctx.result
    error = metrics.conservation_error(res.relevance, res.output[np.arange(len(res.target)), res.target])
    negative = metrics.negative_fraction(res.relevance)
    return {"conservation_error": error, "negative_fraction": negative,
            "mean": {"conservation_error": _mean(error), "negative_fraction": _mean(negative)}}, None


def _perturbation(ctx: Context, pixels: bool = False) -> Result:
    """Region perturbation, or pixel flipping (1×1 patches), with the curves' plot."""
    a = ctx.args
    p = metrics.region_perturbation(ctx.predict, ctx.x, ctx.result.relevance, ctx.result.target,
                                    1 if pixels else a.patch, a.steps, a.baseline, ctx.low, ctx.high,
                                    ctx.channel_axis, a.seed)
    unit = "pixels" if pixels else f"{'×'.join(map(str, p.patch))} patches"

    def draw(ax) -> None:
        steps = np.arange(p.curve.shape[1])
        ax.plot(steps, p.curve.mean(axis=0), label=f"most relevant first (AOPC {_mean(p.aopc):.4g})")
        ax.plot(steps, p.random_curve.mean(axis=0), "--", label=f"random order (AOPC {_mean(p.random_aopc):.4g})")
        ax.set(xlabel=f"{unit} replaced ({a.baseline} baseline)", ylabel=f"explained output, mean of {len(p.curve)}",
               title=f"{'pixel flipping' if pixels else 'region perturbation'}, {_label(a)}")
        ax.legend()

    return {"patch": list(p.patch), "steps": p.curve.shape[1] - 1, "baseline": a.baseline, "aopc": p.aopc,
            "random_aopc": p.random_aopc, "curve": p.curve, "random_curve": p.random_curve,
            "mean": {"aopc": _mean(p.aopc), "random_aopc": _mean(p.random_aopc)}}, draw


def _diffusion(ctx: Context) -> Result:
    """Diffusion between the pixel heatmaps of the two top classes of each input, whatever --target says."""
    output = ctx.result.output
    if output.shape[1] < 2:
        raise UsageError("diffusion needs a model with at least two outputs")
    top = np.argsort(-output, axis=1, kind="stable")[:, :2]
    both = ctx.explainer.explain(ctx.x, target=top).relevance  # (N, 2, ...): one walk for both classes
    d = metrics.diffusion(ctx.pixels(both[:, 0]), ctx.pixels(both[:, 1]))
    return {"classes": top, "distance": d.distance, "correlation": d.correlation,
            "mean": {"distance": d.mean, "correlation": _mean(d.correlation)}}, None


def _randomization(ctx: Context) -> Result:
    """Cascading randomization with the foreground (inputs above the lower bound) as the mask."""
    a = ctx.args
    r = metrics.model_randomization(a.model, ctx.x, ctx.result.target, rules=a.rules, backend=a.backend,
                                    mask=ctx.x > ctx.low, seed=a.seed, low=ctx.low, high=ctx.high,
                                    maxpool=a.maxpool, method=a.method, **_load_options(a))

    def draw(ax) -> None:
        steps = np.arange(len(r.correlation))
        ax.plot(steps, np.nanmean(r.correlation, axis=1), "o-", label="R")
        ax.plot(steps, np.nanmean(r.abs_correlation, axis=1), "s--", label="|R|")
        ax.axhline(0.0, color="gray", linewidth=0.5)
        ax.set_xticks(steps, ["original", *r.layers], rotation=30, ha="right")
        ax.set(ylabel="Spearman rank correlation", ylim=(-1.05, 1.05),
               title=f"cascading randomization from the output down, {_label(a)}")
        ax.legend()

    return {"layers": ["original", *r.layers], "spearman": r.correlation, "spearman_abs": r.abs_correlation,
            "mean": {"spearman_last": _mean(r.correlation[-1]),
                     "spearman_abs_last": _mean(r.abs_correlation[-1])}}, draw


def _continuity(ctx: Context) -> Result:
    a = ctx.args
    c = metrics.continuity(lambda x, target: ctx.explainer.explain(x, target=target).relevance, ctx.predict, ctx.x,
                           ctx.result.target, a.radius, a.samples, ctx.low, ctx.high, a.seed)
    return {"radius": a.radius, "samples": a.samples, "lipschitz": c.lipschitz, "output_ratio": c.output_ratio,
            "mean": {"lipschitz": _mean(c.lipschitz), "output_ratio": _mean(c.output_ratio)}}, None


def _sparseness(ctx: Context) -> Result:
    value = metrics.gini(ctx.pixels(ctx.result.relevance))
    return {"gini": value, "mean": {"gini": _mean(value)}}, None


METRICS: dict[str, Callable[[Context], Result]] = {
    "consistency": _consistency, "region-perturbation": _perturbation,
    "pixel-flipping": partial(_perturbation, pixels=True), "diffusion": _diffusion,
    "randomization": _randomization, "continuity": _continuity, "sparseness": _sparseness}
PLOTTED = ("region-perturbation", "pixel-flipping", "randomization")


# ---------------------------------------------------------------- output

def _figure() -> type:
    """matplotlib's Figure class, imported only when a plot is due."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(PLOTS_MISSING) from None
    return Figure


def _plot(figure: type, draw: Callable, path: Path) -> str:
    """Draw one plot into a PNG with the Agg canvas (no pyplot, no global state); its file name."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figure(figsize=(6.4, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig.add_subplot())
    fig.savefig(path, dpi=100)
    return path.name


def _mean(values: np.ndarray) -> float | None:
    """The mean of the finite values; None when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _label(args: argparse.Namespace) -> str:
    """The explanation in plot titles: the preset, or the method when it is not the rule chain."""
    return args.rules if args.method == "lrp" else f"{args.method} ({args.rules})"


def _show(value) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _plain(value):
    """`value` with arrays as lists and NaN/Inf as None, for strict JSON."""
    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value.item() if isinstance(value, np.generic) else value
