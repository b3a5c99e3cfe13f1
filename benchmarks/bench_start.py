"""Cold and warm start of the compiled backends: the time from a fresh interpreter to the end of its
first explanation of the shipped MNIST CNN, with an empty Numba cache (cold: every kernel the
explanation uses is compiled and written to the cache) and then with that cache (warm).

    python benchmarks/bench_start.py [--backends numba cpp] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = Path(__file__).resolve().parents[1] / "models" / "mnist_cnn.onnx"


def first_explanation(backend: str) -> None:
    """What a fresh interpreter times: import onnxdtd and explain one digit."""
    import numpy as np

    import onnxdtd

    onnxdtd.Explainer(str(MODEL), rules="dtd", backend=backend).explain(np.zeros((1, 1, 28, 28), np.float32))


def start_s(backend: str, cache: str) -> float:
    """Seconds for a fresh interpreter to import onnxdtd and finish one explanation with `backend` (this
    script run with --first, so that it imports the installed onnxdtd, not a source tree in the
    working directory)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    began = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--first", backend], env=env, check=True)
    return time.perf_counter() - began


def main() -> None:
    """Print the median cold and warm start of each backend."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", default=["numba", "cpp", "numpy"])
    p.add_argument("--runs", type=int, default=3, help="cold/warm pairs; medians are reported")
    args = p.parse_args()
    print(f"{'backend':8} {'cold_s':>7} {'warm_s':>7}")
    for backend in args.backends:
        cold, warm = [], []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as cache:
                cold.append(start_s(backend, cache))
                warm.append(start_s(backend, cache))
        print(f"{backend:8} {statistics.median(cold):7.2f} {statistics.median(warm):7.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--first"]:
        first_explanation(sys.argv[2])
    else:
        main()
