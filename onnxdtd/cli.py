"""The `onnxdtd` command line: inspect a model's layers and rules, explain inputs into heatmaps."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

from . import __version__
from .errors import LenientWarning, OnnxdtdError
from .explainer import Explainer, Explanation
from .export import export
from .graph import LayerList, find_unsupported, load, supported_ops
from .heatmap import CMAPS, channel_sum, class_method_grid, heatmap, overlay
from .methods import METHODS, WRAPPERS
from .rules import PRESETS, resolve

EXAMPLES = """examples:
  onnxdtd inspect models/mnist_cnn.onnx
  onnxdtd inspect model.onnx --rules epsilon-plus
  onnxdtd explain models/mnist_cnn.onnx models/samples/digit_3.png -o out
  onnxdtd explain models/mnist_cnn.onnx models/samples/digit_*.npy --target 3
  onnxdtd explain models/mnist_cnn.onnx models/samples/digit_3.png --target all --method lrp,clrp,gradient_x_input
  onnxdtd explain resnet.onnx cat.jpg --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
  onnxdtd export models/mnist_cnn.onnx -o mnist_explainer.onnx --rules dtd
"""
EXPORT_HELP = """Write the explanation of MODEL as one ONNX graph that runs anywhere onnxruntime (or any ONNX
runtime with float32 Conv) runs, without onnxdtd: inputs `input` (the model's input) and `target`
(int64, one class per sample; -1 explains the predicted class), outputs `output` (the logits),
`explained` (the class explained per sample) and `relevance` (the input's shape)."""
EXPLAIN_HELP = """Explain each INPUT; write into OUTDIR <stem>_relevance.npy, <stem>_heatmap.png,
<stem>_overlay.png (image-like inputs) and one summary.json. With --target all or several methods,
write per method <stem>_<method>_relevance.npy (N, T, ...) and per sample <stem>_grid.png (rows: the
classes, columns: the methods) instead.

INPUT is a .npy array (one sample, or a batch along a leading axis; or an .npz
holding it as 'x'), given to the model as is, or an image file (png, jpg, ...): converted to grayscale or RGB by
the model's channel count, resized to the model's input size (bilinear), scaled
to [0, 1], then normalized by --mean/--std."""
HEATMAP_SIDE = 224  # default PNG size: upscale small inputs to about this many pixels on the long side
NORMS = {"hot": "absolute", "gray": "absolute"}  # sequential colour maps show |R|; the others are centred at 0


class UsageError(Exception):
    """A user mistake, reported in one line with exit code 2."""


@dataclass
class Item:
    """One input file, read and explained."""

    path: Path
    stem: str
    x: np.ndarray  # the model input (N, ...)
    file_shape: tuple[int, ...]  # the shape relevance is saved in: the .npy's own, or (1, ...) for images
    pixels: np.ndarray | None  # images: the [0, 1] pixels (H, W, C) before normalization
    result: Explanation | None = None
    results: dict[str, Explanation] | None = None  # by method, for --target all or several methods


# ---------------------------------------------------------------- arguments

def _floats(text: str) -> np.ndarray:
    """argparse type: a number or a comma-separated list of numbers."""
    try:
        values = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}") from None
    if not np.all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def _class(text: str) -> int | str:
    """argparse type of --target: a class index or 'all'."""
    if text == "all" or text.isdigit():
        return text if text == "all" else int(text)
    raise argparse.ArgumentTypeError(f"expected a class index or 'all', got {text!r}")


def _methods(text: str) -> list[str]:
    """argparse type of --method: comma-separated method names."""
    names = [m.strip() for m in text.split(",")]
    unknown = [m for m in names if m not in METHODS and m not in WRAPPERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method {unknown[0] if unknown else text!r}; "
                                         f"one of: {', '.join([*METHODS, *WRAPPERS])}")
    return list(dict.fromkeys(names))


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `onnxdtd` and its subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="onnxdtd", formatter_class=fmt, epilog=EXAMPLES,
                                     description="Explain ONNX models with Deep Taylor Decomposition and LRP.")
    parser.add_argument("--version", action="version", version=f"onnxdtd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    presets = f"rule preset, one of: {', '.join(PRESETS)} (default: dtd)"

    ins = sub.add_parser("inspect", formatter_class=fmt, epilog=EXAMPLES,
                         help="print the layer table with the rule each layer gets",
                         description="Print the model's layer table with the rule each layer gets under a preset; "
                                     "list every unsupported operator (exit code 1) if there are any.")
    ins.add_argument("model", metavar="MODEL", help="an .onnx file")
    ins.add_argument("--rules", default="dtd", choices=list(PRESETS), metavar="P", help=presets)
    _model_options(ins)
    ins.set_defaults(run=_inspect)

    exp = sub.add_parser("explain", formatter_class=fmt, epilog=EXAMPLES,
                         help="explain inputs: relevance .npy, heatmap PNGs and summary.json",
                         description=EXPLAIN_HELP)
    exp.add_argument("model", metavar="MODEL", help="an .onnx file")
    exp.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy arrays or image files")
    exp.add_argument("--rules", default="dtd", choices=list(PRESETS), metavar="P", help=presets)
    exp.add_argument("--target", type=_class, metavar="K",
                     help="class to explain, or 'all' for every class (default: the predicted one)")
    exp.add_argument("--method", type=_methods, default=["lrp"], metavar="M",
                     help=f"method(s), comma-separated: {', '.join([*METHODS, *WRAPPERS])} (default: lrp, the "
                          "rule chain of --rules)")
    _input_options(exp)
    exp.add_argument("--scale", type=_positive_int, metavar="N",
                     help=f"upscale heatmaps N times (default: to about {HEATMAP_SIDE} px)")
    exp.add_argument("--cmap", default="bwr", choices=list(CMAPS),
                     help="heatmap colour map: bwr (blue-white-red, 0 at white; default), seismic, hot or gray "
                          "(hot and gray show |R|)")
    exp.add_argument("-o", "--outdir", default="onnxdtd-out", help="output folder (default: onnxdtd-out)")
    _model_options(exp)
    exp.set_defaults(run=_explain)

    out = sub.add_parser("export", formatter_class=fmt, epilog=EXAMPLES,
                         help="write the explanation as an ONNX graph that runs without onnxdtd",
                         description=EXPORT_HELP)
    out.add_argument("model", metavar="MODEL", help="an .onnx file")
    out.add_argument("-o", "--out", required=True, metavar="EXPLAINER", help="the .onnx file to write")
    out.add_argument("--rules", default="dtd", choices=list(PRESETS), metavar="P", help=presets)
    _bound_options(out, "(default: 0)", "(default: 1)")
    out.add_argument("--argmax", dest="target", action="store_const", const="argmax", default="input",
                     help="no `target` input: always explain the predicted class")
    _model_options(out)
    out.set_defaults(run=_export)
    from .evaluate import add_parser  # here, not at the top: evaluate imports this module's helpers
    add_parser(sub, presets)
    return parser


def _bound_options(parser: argparse.ArgumentParser, low_default: str, high_default: str) -> None:
    """--low/--high and --maxpool, shared by explain and export."""
    parser.add_argument("--low", type=_floats, metavar="L",
                        help=f"z^B lower bound of the model input: scalar or per channel {low_default}")
    parser.add_argument("--high", type=_floats, metavar="H", help=f"z^B upper bound {high_default}")
    parser.add_argument("--maxpool", default="winner", choices=("winner", "proportional"),
                        help="max pooling: route relevance to the winner, or split it proportionally "
                             "(default: winner)")


def _input_options(parser: argparse.ArgumentParser) -> None:
    """--low/--high/--maxpool, --mean/--std and --backend, shared by explain and evaluate."""
    _bound_options(parser, "(default: 0, or (0 - mean) / std with --mean/--std)",
                   "(default: 1, or (1 - mean) / std with --mean/--std)")
    parser.add_argument("--mean", type=_floats, metavar="M", help="image normalization mean, scalar or per channel")
    parser.add_argument("--std", type=_floats, metavar="S", help="image normalization std, scalar or per channel")
    parser.add_argument("--backend", default="auto", metavar="B", help="compute backend (default: auto, the fastest)")


def _model_options(parser: argparse.ArgumentParser) -> None:
    """--output and --strict/--lenient, shared by both subcommands."""
    parser.add_argument("--output", metavar="NAME",
                        help="the output to explain: a graph output's name or index (default: the first float one)")
    parser.add_argument("--lenient", dest="strict", action="store_false",
                        help="pass relevance unchanged through nonlinear elementwise ops that have no rule "
                             "(Tanh, GELU, ...), with a warning; default --strict rejects them")
    parser.add_argument("--strict", dest="strict", action="store_true", help=argparse.SUPPRESS)


def _load_options(args: argparse.Namespace) -> dict:
    """load()/find_unsupported() keyword arguments from --output and --strict/--lenient."""
    output = args.output
    return {"strict": args.strict, "output": int(output) if output is not None and output.lstrip("-").isdigit()
            else output}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `onnxdtd` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LenientWarning)
        try:
            return args.run(args)
        except (UsageError, OnnxdtdError, OSError) as exc:
            print(f"onnxdtd: error: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2
        finally:
            for warning in caught:
                print(f"onnxdtd: warning: {warning.message}", file=sys.stderr)


# ---------------------------------------------------------------- inspect

def _inspect(args: argparse.Namespace) -> int:
    """Print the layer table with rules, or every unsupported operator (exit code 1)."""
    problems = find_unsupported(args.model, **_load_options(args))
    if problems:
        print(f"model {args.model}: inputs {_declared_inputs(args.model)}")
        print(f"{len(problems)} unsupported operator(s):")
        for e in problems:
            print(f"  {e.op_type:<16} node {e.node!r}: {e.reason}")
        print(f"supported op types: {', '.join(sorted(supported_ops()))}")
        return 1
    model = load(args.model, **_load_options(args))
    rules = resolve(args.rules).assign(model)
    print(model.table(rules=["" if r is None else repr(r) for r in rules]))
    print(f"rules: {args.rules}")
    return 0


def _declared_inputs(path: str) -> str:
    """The graph inputs (not initializers) and their declared shapes, e.g. "'x' (N, 1, 28, 28)"."""
    graph = onnx.load(path, load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    shapes = []
    for vi in graph.input:
        if vi.name not in weights:
            dims = [d.dim_param or str(d.dim_value) if d.dim_param or d.dim_value else "?"
                    for d in vi.type.tensor_type.shape.dim]
            shapes.append(f"{vi.name!r} ({', '.join(dims)})")
    return ", ".join(shapes) or "none"


# ---------------------------------------------------------------- export

def _export(args: argparse.Namespace) -> int:
    """Write the explainer graph of the model."""
    model = load(args.model, **_load_options(args))
    shape = model.input_shape or ()
    low = 0.0 if args.low is None else _per_channel(args.low, shape, "--low", 0.0)
    high = 1.0 if args.high is None else _per_channel(args.high, shape, "--high", 1.0)
    proto = export(model, args.out, rules=args.rules, low=low, high=high, maxpool=args.maxpool, target=args.target)
    print(f"wrote {args.out}: inputs {', '.join(repr(i.name) for i in proto.graph.input)}")
    return 0


# ---------------------------------------------------------------- explain

def _inputs_and_model(args: argparse.Namespace, instead: str) -> tuple[list[Path], LayerList]:
    """The INPUT paths (each must exist) and the loaded MODEL, which must have one input (`instead`
    says what to do with several)."""
    paths = [Path(p) for p in args.inputs]
    for path in paths:
        if not path.is_file():
            raise UsageError(f"no such input file: {path}")
    model = load(args.model, **_load_options(args))
    if len(model.inputs) > 1:
        raise UsageError(f"the model has {len(model.inputs)} inputs {list(model.inputs)}; {instead}")
    return paths, model


def _explain(args: argparse.Namespace) -> int:
    """Explain every input, then write the relevance, heatmaps and summary.json."""
    paths, model = _inputs_and_model(args, "explain it from Python with a dict of arrays by input name")
    shape = model.input_shape or ()
    mean, std, low, high = _scaling(args, shape)
    explainers = {m: Explainer(model, rules=args.rules, low=low, high=high, maxpool=args.maxpool,
                               backend=args.backend, method=m) for m in args.method}
    items = [_read(path, stem, shape, mean, std) for path, stem in zip(paths, _stems(paths))]
    for item in items:
        try:
            item.results = {m: ex.explain(item.x, target=args.target) for m, ex in explainers.items()}
        except OnnxdtdError as exc:
            raise UsageError(f"{item.path}: {exc}") from exc
        item.result = next(iter(item.results.values()))
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    grids = args.target == "all" or len(args.method) > 1
    write = _write_grids if grids else _write
    records = [record for item in items for record in write(item, outdir, args.scale, args.cmap, set(paths))]
    summary = {"model": str(args.model), "preset": args.rules, "maxpool": args.maxpool, "methods": args.method,
               "backend": next(iter(explainers.values())).backend.name, "inputs": records}
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def _scaling(args: argparse.Namespace, shape: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """--mean/--std, and the z^B bounds --low/--high (default: the pixel range [0, 1] normalized alike)."""
    mean, std = _per_channel(args.mean, shape, "--mean", 0.0), _per_channel(args.std, shape, "--std", 1.0)
    if np.any(std <= 0):
        raise UsageError("--std must be positive")
    low = (0.0 - mean) / std if args.low is None else _per_channel(args.low, shape, "--low", 0.0)
    high = (1.0 - mean) / std if args.high is None else _per_channel(args.high, shape, "--high", 1.0)
    return mean, std, low, high


def _per_channel(values: np.ndarray | None, shape: tuple, option: str, default: float) -> np.ndarray:
    """A scalar, or per-channel values shaped to broadcast over the model input (e.g. (1, C, 1, 1))."""
    if values is None or len(values) == 1:
        return np.asarray(default if values is None else values[0], dtype=np.float64)
    axis = _channel_axis(shape) or 1
    channels = shape[axis] if len(shape) > axis else None
    if channels != len(values):
        raise UsageError(f"{option} has {len(values)} values, but the model input {_fmt(shape)} "
                         f"has {channels if isinstance(channels, int) else 'an unknown number of'} channel(s)")
    return values.reshape([len(values) if i == axis else 1 for i in range(len(shape))])


def _channel_axis(shape: tuple) -> int | None:
    """The channel axis of an image-like (N, C, H, W) or (N, H, W, C) shape with C in {1, 3}, else None."""
    if len(shape) != 4:
        return None
    return 1 if shape[1] in (1, 3) else 3 if shape[3] in (1, 3) else None


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "N" if i == 0 else "?"
                           for i, d in enumerate(shape)) + ")"


def _stems(paths: list[Path]) -> list[str]:
    """Output name prefixes: the file stem, the name with its suffix if stems clash, then numbered."""
    stems = [p.stem for p in paths]
    stems = [s if stems.count(s) == 1 else p.name.replace(".", "_") for s, p in zip(stems, paths)]
    return [s if stems.count(s) == 1 else f"{s}_{i}" for i, s in enumerate(stems)]


def _read(path: Path, stem: str, shape: tuple, mean: np.ndarray, std: np.ndarray) -> Item:
    """Read one input: a .npy array as is, or an image converted to the model's input."""
    if path.suffix.lower() in (".npy", ".npz"):
        x = _read_npy(path, shape)
        return Item(path, stem, x if x.ndim == len(shape) or not shape else x[None], x.shape, None)
    pixels = _read_image(path, shape)
    x = np.moveaxis(pixels, -1, 0) if _channel_axis(shape) == 1 else pixels
    x = ((x[None] - mean) / std).astype(np.float32)
    return Item(path, stem, x, x.shape, pixels)


def _read_npy(path: Path, shape: tuple) -> np.ndarray:
    """The array in `path` (.npy; .npz: its array 'x', or its only array): one sample (rank of the
    model input minus one) or a batch."""
    try:
        x = np.load(path, allow_pickle=False)
        if isinstance(x, np.lib.npyio.NpzFile):
            with x:
                if "x" not in x.files and len(x.files) != 1:
                    raise UsageError(f"{path} holds arrays {x.files}: name the input array 'x'")
                x = x["x" if "x" in x.files else x.files[0]]
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"cannot read {path} as a .npy/.npz array: {exc}") from exc
    if shape and x.ndim not in (len(shape) - 1, len(shape)):
        raise UsageError(f"{path}: array of shape {x.shape} does not fit the model input {_fmt(shape)}: "
                         f"give one sample of rank {len(shape) - 1} or a batch of rank {len(shape)}")
    return x


def _read_image(path: Path, shape: tuple) -> np.ndarray:
    """The image as (H, W, C) floats in [0, 1], with the model's channel count and input size."""
    axis = _channel_axis(shape)
    if axis is None:
        raise UsageError(f"the model input {_fmt(shape)} is not an image with 1 or 3 channels; give a .npy array")
    height, width = shape[2:] if axis == 1 else shape[1:3]
    try:
        with Image.open(path) as img:
            img = img.convert("L" if shape[axis] == 1 else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UsageError(f"cannot read {path} as an image: {exc}") from exc
    size = (width if isinstance(width, int) and width > 0 else img.width,
            height if isinstance(height, int) and height > 0 else img.height)
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return (np.asarray(img, dtype=np.float32) / 255.0).reshape(size[1], size[0], shape[axis])


def _write(item: Item, outdir: Path, scale: int | None, cmap: str, inputs: set[Path]) -> list[dict]:
    """Write one input's relevance and PNGs, print one line per sample; the summary records."""
    relevance_file = _target(outdir / f"{item.stem}_relevance.npy", inputs)
    np.save(relevance_file, item.result.relevance.reshape(item.file_shape))
    records = []
    for i in range(len(item.x)):
        files = _write_pngs(item, i, outdir, scale, cmap, inputs)
        rec = _record(item, i, {"relevance": relevance_file.name, **files})
        ratio = "n/a" if rec["conservation"] is None else f"{rec['conservation']:.6f}"
        print(f"{item.path}{f'[{i}]' if len(item.x) > 1 else ''}: prediction {rec['prediction']}, "
              f"target {rec['target']} (logit {rec['logit']:.6g}), relevance sum {rec['relevance_sum']:.6g}, "
              f"ratio {ratio} -> {outdir / files['heatmap']}")
        records.append(rec)
    return records


def _write_grids(item: Item, outdir: Path, scale: int | None, cmap: str, inputs: set[Path]) -> list[dict]:
    """Write one input's relevance per method (N, T, ...) and one class-by-method grid per sample."""
    files = {}
    for method, res in item.results.items():
        relevance = res.relevance if res.relevance.ndim == item.x.ndim + 1 else res.relevance[:, None]
        files[method] = _target(outdir / f"{item.stem}_{method}_relevance.npy", inputs)
        np.save(files[method], relevance)
    records = []
    for i in range(len(item.x)):
        stem = item.stem if len(item.x) == 1 else f"{item.stem}_{i}"
        classes = np.atleast_1d(item.result.target[i])
        axis = _channel_axis(item.x.shape)
        maps = {}
        for method, res in item.results.items():
            r = res.relevance[i].reshape(len(classes), *item.x.shape[1:])
            maps[method] = np.stack([channel_sum(np.moveaxis(c, -1, 0) if axis == 3 else c) for c in r])
        side = max(next(iter(maps.values())).shape[1:])
        image = class_method_grid(maps, [str(c) for c in classes], scale=scale or max(1, HEATMAP_SIDE // 2 // side),
                                  cmap=cmap, norm=NORMS.get(cmap, "symmetric"))
        image.save(_target(outdir / f"{stem}_grid.png", inputs))
        records.append({"file": str(item.path), "index": i, "prediction": int(item.result.output[i].argmax()),
                        "targets": classes.tolist(), "grid": f"{stem}_grid.png",
                        "relevance": {m: f.name for m, f in files.items()}})
        print(f"{item.path}{f'[{i}]' if len(item.x) > 1 else ''}: prediction {records[-1]['prediction']}, "
              f"{len(classes)} class(es) x {len(maps)} method(s) -> {outdir / records[-1]['grid']}")
    return records


def _write_pngs(item: Item, i: int, outdir: Path, scale: int | None, cmap: str, inputs: set[Path]) -> dict:
    """The heatmap of sample `i`, and its overlay when the input is image-like; their file names."""
    stem = item.stem if len(item.x) == 1 else f"{item.stem}_{i}"
    r, axis = item.result.relevance[i], _channel_axis(item.x.shape)
    rmap = channel_sum(np.moveaxis(r, -1, 0) if axis == 3 else r)
    heat = heatmap(rmap, scale or max(1, HEATMAP_SIDE // max(rmap.shape)), cmap=cmap, norm=NORMS.get(cmap, "symmetric"))
    heat.save(_target(outdir / f"{stem}_heatmap.png", inputs))
    if axis is None:
        return {"heatmap": f"{stem}_heatmap.png", "overlay": None}
    pixels = item.pixels if item.pixels is not None else _displayable(item.x[i], axis)
    overlay(pixels, heat).save(_target(outdir / f"{stem}_overlay.png", inputs))
    return {"heatmap": f"{stem}_heatmap.png", "overlay": f"{stem}_overlay.png"}


def _record(item: Item, i: int, files: dict) -> dict:
    """The summary.json entry of sample `i` of `item`."""
    res = item.result
    target = int(res.target[i])
    logit, total = float(res.output[i, target]), float(res.relevance[i].sum(dtype=np.float64))
    return {"file": str(item.path), "index": i, "prediction": int(res.output[i].argmax()), "target": target,
            "logit": logit, "relevance_sum": total, "conservation": total / logit if logit else None,
            **files}


def _target(path: Path, inputs: set[Path]) -> Path:
    """`path`, unless writing it would overwrite one of the inputs."""
    if any(path.resolve() == p.resolve() for p in inputs):
        raise UsageError(f"refusing to overwrite the input file {path}; choose another --outdir")
    return path


def _displayable(sample: np.ndarray, axis: int) -> np.ndarray:
    """An image-like sample as (H, W, C) in [0, 1], min-max rescaled when it is outside that range."""
    img = np.moveaxis(sample, 0, -1) if axis == 1 else sample
    lo, hi = float(img.min()), float(img.max())
    return img if lo >= 0 and hi <= 1 else (img - lo) / (hi - lo or 1.0)
