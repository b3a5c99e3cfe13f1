"""Time onnxdtd's GPU explanations against onnxruntime-CUDA's forward pass of the same model (issue 7).

On a machine with a CUDA GPU, the gpu extra and onnxruntime-gpu (docs/kernels.md, "The cuda backend"):

1. checks the `cuda` backend against `numpy` on the shipped MNIST CNN (three presets, both max-pool
   modes, float32 and float64) and stops if they differ by more than DESIGN.md allows (1e-5 of max |R|
   in float32, 1e-10 in float64);
2. times VGG16 and ResNet50 at 224x224 (benchmarks/zoo.py; torch exports them once) at batch 1 and 32:
   the explanation (preset dtd, z^B bounds [0, 1], winner max pooling) with the `cuda` backend and with
   the `ort` backend, both with providers=["CUDAExecutionProvider"], and onnxruntime's plain forward pass
   on the CUDA provider (host input and output, as a user calls it) timed in the same process just
   before and just after each explainer, as bench_explain.py does on the CPU; every explainer runs in
   a fresh process of its own;
3. prints forward_ms, explain_ms, their ratio (the yardstick of DESIGN.md) and peak_mb: the device
   memory that the child process holds at its end over what it held before its first session
   (onnxruntime's arena and CuPy's pool keep their peaks), with the GPU, driver and versions.

On a machine without a GPU it stops at once, saying what is missing. Run from the repository root:
python benchmarks/bench_gpu.py [models] [--batch 1 32] [--backends cuda ort] [--repeats 10]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort

import onnxdtd

try:
    from bench_explain import (SHIPPED, environment, format_table, median_ms, model_path, paired_ms, random_input,
                               report)
except ImportError:  # imported as benchmarks.bench_gpu
    from .bench_explain import (SHIPPED, environment, format_table, median_ms, model_path, paired_ms, random_input,
                                report)

CUDA = ["CUDAExecutionProvider"]
PRESET = "dtd"
CHECKS = [(preset, maxpool, dtype) for preset in ("dtd", "epsilon-gamma-box", "epsilon-alpha2-beta1")
          for maxpool in ("winner", "proportional") for dtype in (np.float32, np.float64)]
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}


def require_gpu() -> None:
    """Stop with a clear message unless onnxruntime's CUDA provider and the cuda backend both work here."""
    missing = []
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        missing.append(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: "
                       f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu in place of "
                       "onnxruntime, see docs/kernels.md")
    try:
        from onnxdtd.backends.cuda import CudaBackend

        CudaBackend()
    except RuntimeError as exc:
        missing.append(f"the cuda backend does not start: {exc}")
    if missing:
        raise SystemExit("bench_gpu.py needs a CUDA GPU:\n- " + "\n- ".join(missing))


def preload_cuda() -> None:
    """Load the CUDA and cuDNN libraries of the pip wheels before onnxruntime's CUDA provider needs them
    (onnxruntime-gpu 1.21 and later; older ones find them on the library path)."""
    getattr(ort, "preload_dlls", lambda: None)()


def cuda_session(path: Path) -> ort.InferenceSession:
    """An onnxruntime session on the CUDA provider; stops if onnxruntime fell back to the CPU."""
    session = ort.InferenceSession(str(path), providers=CUDA)
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise SystemExit(f"onnxruntime runs {path.name} on {session.get_providers()}, not on the CUDA provider "
                         "(are the CUDA 13 and cuDNN 9 libraries installed? see docs/kernels.md)")
    return session


def check_against_numpy() -> None:
    """The cuda backend equals numpy on the shipped CNN within DESIGN.md's tolerance, or stop."""
    x = np.random.default_rng(3).random((4, 1, 28, 28), dtype=np.float32)
    for preset, maxpool, dtype in CHECKS:
        got, ref = (onnxdtd.Explainer(str(SHIPPED), rules=preset, maxpool=maxpool, backend=backend, dtype=dtype,
                                      providers=CUDA if backend == "cuda" else None).explain(x, target=[0, 1, 2, 3])
                    .relevance for backend in ("cuda", "numpy"))
        error = float(np.abs(got - ref).max() / np.abs(ref).max())
        print(f"check mnist_cnn {preset} {maxpool} {np.dtype(dtype).name}: max |cuda - numpy| / max |numpy| "
              f"= {error:.1e}", flush=True)
        if not error <= TOLERANCE[dtype]:
            raise SystemExit(f"the cuda backend differs from numpy by {error:.1e} of max |R| "
                             f"(allowed {TOLERANCE[dtype]:.0e}): no timings")


def device_used_mb() -> float:
    """Device memory in use on GPU 0 (MB), all processes."""
    import cupy

    free, total = cupy.cuda.runtime.memGetInfo()
    return (total - free) / 2**20


def child(name: str, batch: int, backend: str, warmup: int, repeats: int) -> None:
    """In a fresh process: print {forward_ms, explain_ms, peak_mb} as JSON for one explainer."""
    start = device_used_mb()
    path = model_path(name)
    session = cuda_session(path)
    x = random_input(session, batch)
    forward = partial(session.run, None, {session.get_inputs()[0].name: x})
    ex = onnxdtd.Explainer(str(path), rules=PRESET, low=0.0, high=1.0, maxpool="winner", backend=backend,
                           providers=CUDA)
    forward_ms, explain_ms = paired_ms(forward, partial(ex.explain, x), warmup, repeats)
    print(json.dumps(dict(forward_ms=forward_ms, explain_ms=explain_ms, peak_mb=device_used_mb() - start)))


def forward_child(name: str, batch: int, warmup: int, repeats: int) -> None:
    """In a fresh process: print {forward_ms, peak_mb} of onnxruntime-CUDA's forward pass alone."""
    start = device_used_mb()
    session = cuda_session(model_path(name))
    x = random_input(session, batch)
    ms = median_ms(partial(session.run, None, {session.get_inputs()[0].name: x}), warmup, repeats)
    print(json.dumps(dict(forward_ms=ms, explain_ms=ms, peak_mb=device_used_mb() - start)))


def run_child(*args: str) -> dict:
    """The JSON that this script prints last when run in a fresh process with `args`."""
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def bench(name: str, batch: int, backends: list[str], warmup: int, repeats: int) -> list[dict]:
    """One row for onnxruntime-CUDA's forward pass and one per backend, for one model and batch size."""
    stem = model_path(name).stem
    plain = run_child("--forward", name, str(batch), str(warmup), str(repeats))
    rows = [dict(model=stem, batch=batch, backend="onnxruntime-cuda", preset="forward", ratio=1.0, **plain)]
    for backend in backends:
        t = run_child("--child", name, str(batch), backend, str(warmup), str(repeats))
        rows.append(dict(model=stem, batch=batch, backend=backend, preset=PRESET,
                         ratio=t["explain_ms"] / t["forward_ms"], **t))
    return rows


def gpu_environment() -> dict:
    """The GPU, its driver and the GPU stack's versions, beside bench_explain's facts."""
    import cupy
    import numba_cuda

    props = cupy.cuda.runtime.getDeviceProperties(0)
    driver = cupy.cuda.runtime.driverGetVersion()
    return dict(environment(), gpu=props["name"].decode(), cuda_driver=f"{driver // 1000}.{driver % 1000 // 10}",
                cupy=cupy.__version__, numba_cuda=numba_cuda.__version__)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["vgg16", "resnet50"],
                   help="vgg16, resnet18, resnet50, mnist_cnn or an ONNX path (default: vgg16 resnet50)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes (default: 1 32)")
    p.add_argument("--backends", nargs="+", default=["cuda", "ort"], help="backends (default: cuda ort)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (kernels compile in the first)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls; the median is reported")
    p.add_argument("--no-check", action="store_true", help="skip the check against numpy")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return p.parse_args()


def main() -> None:
    """Check, time and report."""
    args = parse_args()
    require_gpu()
    if not args.no_check:
        check_against_numpy()
    rows = []
    for name in args.models:
        for batch in args.batch:
            found = bench(name, batch, args.backends, args.warmup, args.repeats)
            print(format_table(found), flush=True)
            rows += found
    report(rows, gpu_environment(), args.json)


if __name__ == "__main__":
    preload_cuda()
    if sys.argv[1:2] == ["--child"]:
        model, n, backend_name, warm, reps = sys.argv[2:7]
        child(model, int(n), backend_name, int(warm), int(reps))
    elif sys.argv[1:2] == ["--forward"]:
        model, n, warm, reps = sys.argv[2:6]
        forward_child(model, int(n), int(warm), int(reps))
    else:
        main()
