"""Time onnxdtd explanations against onnxruntime's own forward pass of the same model.

For every batch size, backend and preset it prints the median forward time, the median explain
time and their ratio (the yardstick of DESIGN.md), all measured in one process on one input.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort

import onnxdtd

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "mnist_cnn.onnx"
COLUMNS = ("model", "batch", "backend", "preset", "forward_ms", "explain_ms", "ratio")


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


def random_input(session: ort.InferenceSession, batch: int, seed: int = 0) -> np.ndarray:
    """Uniform [0, 1) float32 input of the model's input shape with batch samples."""
    shape = session.get_inputs()[0].shape
    rest = shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise SystemExit(f"only the batch axis may be dynamic, the model's input shape is {shape}")
    return np.random.default_rng(seed).random((batch, *rest), dtype=np.float32)


def bench_batch(model: Path, batch: int, backends: list[str], presets: list[str],
                warmup: int, repeats: int) -> list[dict]:
    """Return one result row per (backend, preset) for one batch size."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = random_input(session, batch)
    feed = {session.get_inputs()[0].name: x}
    forward = median_ms(lambda: session.run(None, feed), warmup, repeats)
    rows = []
    for backend in backends:
        for preset in presets:
            ex = onnxdtd.Explainer(str(model), rules=preset, low=0.0, high=1.0,
                                   maxpool="winner", backend=backend)
            explain = median_ms(partial(ex.explain, x), warmup, repeats)
            rows.append(dict(model=model.name, batch=batch, backend=backend, preset=preset,
                             forward_ms=forward, explain_ms=explain, ratio=explain / forward))
    return rows


def format_table(rows: list[dict]) -> str:
    """Render the rows as an aligned plain-text table."""
    cells = [[f"{r[c]:.3f}" if c.endswith("_ms") else f"{r[c]:.1f}x" if c == "ratio" else str(r[c])
              for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                               for i, (v, w) in enumerate(zip(row, widths)))
                     for row in [list(COLUMNS), *cells])


def environment() -> dict:
    """Versions and machine facts that the numbers depend on."""
    return dict(onnxdtd=getattr(onnxdtd, "__version__", "?"), onnxruntime=ort.__version__,
                numpy=np.__version__, python=platform.python_version(),
                machine=platform.machine(), cpus=os.cpu_count())


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL,
                   help="ONNX model with a dynamic batch axis (default: the shipped MNIST CNN)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 256], help="batch sizes")
    p.add_argument("--presets", nargs="+", default=["dtd"], help="onnxdtd rule presets")
    p.add_argument("--backends", nargs="+", default=None,
                   help="backends to time (default: onnxdtd.available_backends())")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    p.add_argument("--repeats", type=int, default=20, help="timed calls; the median is reported")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return p.parse_args()


def main() -> None:
    """Run the benchmark and report it."""
    args = parse_args()
    backends = args.backends or onnxdtd.available_backends()
    rows = [row for batch in args.batch for row in
            bench_batch(args.model, batch, backends, args.presets, args.warmup, args.repeats)]
    env = environment()
    print(format_table(rows))
    print(", ".join(f"{k} {v}" for k, v in env.items()))
    if args.json:
        args.json.write_text(json.dumps(dict(environment=env, results=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
