"""`onnxdtd evaluate` end to end on the shipped MNIST model: metrics.json, PNG plots, user errors."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnxdtd.cli import main
from onnxdtd.evaluate import METRICS, PLOTTED

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mnist_cnn.onnx"
SAMPLES = ROOT / "models" / "samples"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["evaluate", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_all_metrics_on_a_digit(capsys, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, MODEL, SAMPLES / "digit_7.png", "-o", out)
    assert code == 0, err
    report = json.loads((out / "metrics.json").read_text())
    assert list(report["metrics"]) == list(METRICS) and report["targets"] == [7]
    assert len(stdout.strip().splitlines()) == len(METRICS) + 1
    found = report["metrics"]
    assert found["consistency"]["conservation_error"][0] < 1e-3
    assert found["region-perturbation"]["patch"] == [4, 4] and found["region-perturbation"]["steps"] == 49
    assert len(found["region-perturbation"]["curve"][0]) == 50
    assert found["pixel-flipping"]["patch"] == [1, 1]
    assert found["diffusion"]["classes"][0][0] == 7 and found["diffusion"]["distance"][0] > 0
    assert found["randomization"]["layers"][0] == "original" and found["randomization"]["spearman"][0] == [1.0]
    assert 0 < found["sparseness"]["gini"][0] < 1
    for name in PLOTTED:
        assert found[name]["plot"] == f"{name}.png"
        with Image.open(out / f"{name}.png") as img:
            assert img.format == "PNG" and img.size == (640, 480)


def test_chosen_metrics_on_a_batch(capsys, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    batch = np.concatenate([np.load(SAMPLES / f"digit_{d}.npy") for d in (0, 9)])
    np.save(inputs / "two.npy", batch)
    shutil.copy(SAMPLES / "digit_3.npy", inputs)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, MODEL, inputs / "two.npy", inputs / "digit_3.npy", "-o", out,
                           "--metric", "sparseness,consistency", "--metric", "region-perturbation",
                           "--patch", "7", "--steps", "3", "--baseline", "0", "--target", "3",
                           "--method", "gradient_x_input")
    assert code == 0, err
    report = json.loads((out / "metrics.json").read_text())
    assert list(report["metrics"]) == ["sparseness", "consistency", "region-perturbation"]
    assert report["inputs"] == [f"{inputs / 'two.npy'}[0]", f"{inputs / 'two.npy'}[1]", str(inputs / "digit_3.npy")]
    assert report["targets"] == [3, 3, 3] and report["method"] == "gradient_x_input"
    perturbation = report["metrics"]["region-perturbation"]
    assert perturbation["patch"] == [7, 7] and perturbation["baseline"] == 0.0
    assert np.array(perturbation["curve"]).shape == (3, 4) and len(perturbation["aopc"]) == 3
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "region-perturbation.png"]


def test_metrics_without_plots_need_no_matplotlib(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code, _, err = run_cli(capsys, MODEL, SAMPLES / "digit_7.npy", "--metric", "consistency,diffusion",
                           "-o", tmp_path / "ok")
    assert code == 0, err
    code, _, err = run_cli(capsys, MODEL, SAMPLES / "digit_7.npy", "-o", tmp_path / "no")
    assert code == 2 and 'pip install "onnxdtd[plots]"' in err and not (tmp_path / "no").exists()


@pytest.mark.parametrize("argv, word", [
    ((SAMPLES / "nope.png",), "nope.png"),
    ((SAMPLES / "digit_7.npy", "--steps", "500"), "steps"),
    ((SAMPLES / "digit_7.npy", "--mean", "0.1,0.2,0.3"), "--mean"),
    ((SAMPLES / "digit_7.npy", "--target", "12"), "out of range"),
])
def test_user_errors_exit_2(capsys, tmp_path, argv, word):
    code, _, err = run_cli(capsys, MODEL, *argv, "-o", tmp_path / "out")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("onnxdtd: error: ") and word in lines[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, word", [(("--metric", "accuracy"), "unknown metric accuracy"),
                                          (("--metric", ","), "unknown metric"),
                                          (("--baseline", "zeros"), "'uniform' or a finite number"),
                                          (("--radius", "-1"), "positive number"),
                                          (("--patch", "0"), "positive integer"),
                                          (("--method", "nonesuch"), "nonesuch")])
def test_bad_arguments_exit_2(capsys, option, word):
    with pytest.raises(SystemExit) as exc:
        run_cli(capsys, MODEL, SAMPLES / "digit_7.npy", *option)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and word in err and "Traceback" not in err
