"""The benchmark script runs end to end (no timing is asserted: speed is measured, not tested)."""
import json
import subprocess
import sys
from pathlib import Path

import onnxdtd

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_explain.py"


def test_bench_explain_writes_a_row_per_backend(tmp_path):
    out = tmp_path / "results.json"
    backends = onnxdtd.available_backends()
    done = subprocess.run([sys.executable, str(SCRIPT), "mnist_cnn", "--batch", "2", "--backends", *backends,
                           "--warmup", "0", "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["results"]
    assert [r["backend"] for r in rows] == ["onnxruntime", *backends]
    for r in rows:
        assert r["batch"] == 2 and r["forward_ms"] > 0 and r["explain_ms"] > 0
        assert abs(r["ratio"] - r["explain_ms"] / r["forward_ms"]) < 1e-9
