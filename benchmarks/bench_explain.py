"""Time onnxdtd explanations against onnxruntime's own forward pass of the same model, and zennit.

For every model, batch size, backend and preset it prints the median forward time, the median
explain time and their ratio (the yardstick of DESIGN.md), the peak resident memory of a fresh
process that runs one explanation (and of one that runs one forward pass), and — where torch and
zennit are installed and the model is one of the torchvision benchmark models — zennit's time for
the same rules on the same model and input. Each explainer (each backend, and zennit) is timed in a
fresh process of its own, as a user runs one, with onnxruntime's forward pass timed in that same
process on the same input just before and just after it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort

import onnxdtd

try:
    from zoo import NAMES, onnx_path, torch_model
except ImportError:  # imported as benchmarks.bench_explain
    from .zoo import NAMES, onnx_path, torch_model

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "mnist_cnn.onnx"
# (model, batch sizes) measured by default: the matrix.
DEFAULT = [("vgg16", [1, 8]), ("resnet18", [1, 8]), ("resnet50", [1, 8]), ("mnist_cnn", [256])]
COLUMNS = ("model", "batch", "backend", "preset", "forward_ms", "explain_ms", "ratio", "peak_mb")


def median_ms(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Call fn warmup times untimed, then return the median of repeats timed calls in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def peak_child(name: str, backend: str, preset: str, batch: int) -> None:
    """In a fresh process: one forward pass ('onnxruntime') or one explanation, then print VmHWM (kB)."""
    forward, explain = calls(name, batch, backend, preset)
    (explain or forward)()
    print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))


def peak_mb(name: str, backend: str, preset: str, batch: int) -> float:
    """Peak resident memory (MB, VmHWM: unlike ru_maxrss it is not inherited across exec) of a fresh
    process that runs one forward pass ('onnxruntime') or one explanation: every allocation counts
    (numpy, onnxruntime, compiled kernels). NaN without /proc."""
    if not os.path.exists("/proc/self/status"):
        return float("nan")
    return int(child_output("--peak", name, backend, preset, str(batch))) / 1024


def model_path(name: str) -> Path:
    """The shipped CNN, a torchvision benchmark model (exported on first use), or a path."""
    if name == "mnist_cnn":
        return SHIPPED
    return onnx_path(name) if name in NAMES else Path(name)


def random_input(session: ort.InferenceSession, batch: int, seed: int = 0) -> np.ndarray:
    """Uniform [0, 1) float32 input of the model's input shape with batch samples."""
    shape = session.get_inputs()[0].shape
    rest = shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise SystemExit(f"only the batch axis may be dynamic, the model's input shape is {shape}")
    return np.random.default_rng(seed).random((batch, *rest), dtype=np.float32)


def zennit_timer(name: str, x: np.ndarray) -> Callable[[], object] | None:
    """One zennit DTD attribution (z^B on the first layer, z⁺ elsewhere, bias excluded as in onnxdtd's
    preset) of the torchvision model `name` on x, composite registered once; None without zennit."""
    if name not in NAMES:
        return None
    try:
        import torch
        from zennit import composites, rules, types
        from zennit.torchvision import ResNetCanonizer, VGGCanonizer
    except ImportError:
        return None
    model = torch_model(name)
    canonizer = ResNetCanonizer() if name.startswith("resnet") else VGGCanonizer()
    composite = composites.SpecialFirstLayerMapComposite(
        layer_map=composites.layer_map_base() + [(types.Linear, rules.ZPlus(zero_params=["bias"]))],
        first_map=[(types.Linear, rules.ZBox(low=0.0, high=1.0))], canonizers=[canonizer])
    composite.register(model)
    xt = torch.from_numpy(x)

    def attribute():
        inp = xt.clone().requires_grad_(True)
        out = model(inp)
        grad = torch.zeros_like(out)
        rows = torch.arange(len(out))
        grad[rows, out.argmax(1)] = out[rows, out.argmax(1)].detach()
        (relevance,) = torch.autograd.grad(out, inp, grad)
        return relevance

    return attribute


def explainer(name: str, path: Path, backend: str, preset: str, x: np.ndarray) -> Callable[[], object] | None:
    """The timed call: zennit's attribution, or onnxdtd's explanation with `backend`; None for the
    forward pass alone ('onnxruntime') and where zennit is missing."""
    if backend == "onnxruntime":
        return None
    if backend == "zennit":
        return zennit_timer(name, x)
    ex = onnxdtd.Explainer(str(path), rules=preset, low=0.0, high=1.0, maxpool="winner", backend=backend)
    return partial(ex.explain, x)


def paired_ms(forward: Callable[[], object], explain: Callable[[], object], warmup: int,
              repeats: int) -> tuple[float, float]:
    """Median ms of forward and of explain: forward timed before and after explain (so that both
    see the same drift of the machine's load), in blocks, so that the threads onnxruntime leaves
    spinning after a run do not land in the explain timings."""
    before = median_ms(forward, warmup, repeats)
    explained = median_ms(explain, warmup, repeats)
    return (before + median_ms(forward, warmup, repeats)) / 2, explained


def calls(name: str, batch: int, backend: str,
          preset: str) -> tuple[Callable[[], object], Callable[[], object] | None]:
    """onnxruntime's plain forward pass of model `name` on a random batch, and explainer() on it."""
    path = model_path(name)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = random_input(session, batch)
    return partial(session.run, None, {session.get_inputs()[0].name: x}), explainer(name, path, backend, preset, x)


def child(name: str, batch: int, backend: str, preset: str, warmup: int, repeats: int) -> None:
    """In a fresh process: print {forward_ms, explain_ms} as JSON (explain_ms null where explainer()
    gives None)."""
    forward, explain = calls(name, batch, backend, preset)
    if explain is None:
        result = dict(forward_ms=median_ms(forward, warmup, repeats), explain_ms=None)
    else:
        result = dict(zip(("forward_ms", "explain_ms"), paired_ms(forward, explain, warmup, repeats)))
    print(json.dumps(result))


def child_output(*args: str) -> str:
    """The last line that this script prints when run in a fresh process with `args` (run as a script,
    so that the onnxdtd it imports is the installed one, never a source tree in the working directory)."""
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
    return done.stdout.splitlines()[-1]


def timed(name: str, batch: int, backend: str, preset: str, warmup: int, repeats: int) -> dict:
    """child() run in a fresh process."""
    return json.loads(child_output("--child", name, str(batch), backend, preset, str(warmup), str(repeats)))


def bench(name: str, batch: int, backends: list[str], presets: list[str], warmup: int, repeats: int,
          with_zennit: bool, rounds: int = 1) -> list[dict]:
    """One result row per (backend, preset), plus zennit's, for one model and batch size: over
    `rounds` rounds of fresh processes (every explainer once per round, so that a burst of load on
    the machine hits one round, not one backend), the medians of the times and of the ratios."""
    path = model_path(name)
    row = partial(dict, model=path.stem, batch=batch)
    runs = [("onnxruntime", "")] + [(backend, preset) for backend in backends for preset in presets]
    runs += [("zennit", "dtd")] if with_zennit and name in NAMES else []
    found: dict[tuple[str, str], list[dict]] = {run: [] for run in runs}
    for _ in range(rounds):
        for backend, preset in runs:
            found[backend, preset].append(timed(name, batch, backend, preset, warmup, repeats))
    rows = []
    for (backend, preset), times in found.items():
        if backend == "onnxruntime":
            plain = statistics.median(t["forward_ms"] for t in times)
            rows.append(row(backend=backend, preset="forward", forward_ms=plain, explain_ms=plain, ratio=1.0,
                            peak_mb=peak_mb(name, "onnxruntime", "", batch)))
        elif times[0]["explain_ms"] is not None:  # None: zennit is not installed
            rows.append(row(backend=backend, preset=preset,
                            **{key: statistics.median(t[key] for t in times) for key in ("forward_ms", "explain_ms")},
                            ratio=statistics.median(t["explain_ms"] / t["forward_ms"] for t in times),
                            peak_mb=float("nan") if backend == "zennit" else peak_mb(name, backend, preset, batch)))
    return rows


def format_table(rows: list[dict]) -> str:
    """Render the rows as an aligned plain-text table."""
    cells = [[f"{r[c]:.1f}" if c.endswith(("_ms", "_mb")) else f"{r[c]:.2f}x" if c == "ratio" else str(r[c])
              for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                               for i, (v, w) in enumerate(zip(row, widths)))
                     for row in [list(COLUMNS), *cells])


def environment() -> dict:
    """Versions and machine facts that the numbers depend on."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return dict(onnxdtd=getattr(onnxdtd, "__version__", "?"), onnxruntime=ort.__version__,
                numpy=np.__version__, python=platform.python_version(), cpu=cpu, cpus=os.cpu_count())


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*",
                   help=f"models: {', '.join(NAMES)}, mnist_cnn (the shipped CNN) or an ONNX path with a "
                        "dynamic batch axis (default: the VGG16/ResNet18/ResNet50 and mnist_cnn matrix)")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default: 1 8 for the torchvision "
                                                       "models, 256 for mnist_cnn)")
    p.add_argument("--presets", nargs="+", default=["dtd"], help="onnxdtd rule presets")
    p.add_argument("--backends", nargs="+", default=None,
                   help="backends to time (default: onnxdtd.available_backends())")
    p.add_argument("--no-zennit", action="store_true", help="skip zennit even where it is installed")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    p.add_argument("--repeats", type=int, default=7, help="timed calls; the median is reported")
    p.add_argument("--rounds", type=int, default=1,
                   help="fresh-process rounds per model and batch; medians over the rounds are reported")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return p.parse_args()


def main() -> None:
    """Run the benchmark and report it."""
    args = parse_args()
    plan = [(m, args.batch or dict(DEFAULT).get(m, [1])) for m in args.models] if args.models else \
        [(m, args.batch or b) for m, b in DEFAULT]
    backends = args.backends or onnxdtd.available_backends()
    rows = []
    for name, batches in plan:
        for batch in batches:
            found = bench(name, batch, backends, args.presets, args.warmup, args.repeats, not args.no_zennit,
                          args.rounds)
            print(format_table(found), flush=True)
            rows += found
    report(rows, environment(), args.json)


def report(rows: list[dict], env: dict, path: Path | None) -> None:
    """Print the whole table and the environment; write both as JSON to `path` when given."""
    print("\n" + format_table(rows))
    print(", ".join(f"{k} {v}" for k, v in env.items()))
    if path:
        path.write_text(json.dumps(dict(environment=env, results=rows), indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        model, n, backend_name, preset_name, warm, reps = sys.argv[2:8]
        child(model, int(n), backend_name, preset_name, int(warm), int(reps))
    elif sys.argv[1:2] == ["--peak"]:
        peak_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
