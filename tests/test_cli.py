"""The `onnxdtd` command line, end to end on the shipped MNIST model."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from builders import model, node
from onnxdtd import Explainer
from onnxdtd.cli import main

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mnist_cnn.onnx"
SAMPLES = ROOT / "models" / "samples"


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """Private copies of one .npy and one .png sample (same stem on purpose)."""
    folder = tmp_path / "in"
    folder.mkdir()
    return {ext: Path(shutil.copy(SAMPLES / f"digit_3.{ext}", folder)) for ext in ("npy", "png")}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *words: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxdtd: error: "), err
    assert all(w in lines[0] for w in words), lines[0]


def test_explain_npy_and_png(capsys, tmp_path, inputs):
    out = tmp_path / "out"
    before = {p: p.read_bytes() for p in inputs.values()}
    code, stdout, _ = run_cli(capsys, "explain", MODEL, inputs["npy"], inputs["png"], "-o", out)
    assert code == 0 and len(stdout.strip().splitlines()) == 2
    assert all(p.read_bytes() == b for p, b in before.items())  # inputs untouched
    for stem in ("digit_3_npy", "digit_3_png"):
        assert np.load(out / f"{stem}_relevance.npy").shape == (1, 1, 28, 28)
        for kind in ("heatmap", "overlay"):
            with Image.open(out / f"{stem}_{kind}.png") as img:
                assert img.size == (224, 224) and img.mode == "RGB"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"] == "dtd" and summary["model"] == str(MODEL)
    assert [Path(r["file"]).name for r in summary["inputs"]] == ["digit_3.npy", "digit_3.png"]
    for rec in summary["inputs"]:
        assert rec["target"] == rec["prediction"] == 3
        assert abs(rec["conservation"] - 1) < 1e-3
        assert rec["relevance_sum"] == pytest.approx(rec["logit"], rel=1e-3)
        relevance = np.load(out / rec["relevance"])
        assert relevance.sum() == pytest.approx(rec["relevance_sum"], rel=1e-5)


def test_explain_target_and_batch(capsys, tmp_path):
    batch = np.concatenate([np.load(SAMPLES / f"digit_{d}.npy") for d in (0, 7)])
    np.save(tmp_path / "two.npy", batch)
    code, stdout, _ = run_cli(capsys, "explain", MODEL, tmp_path / "two.npy", "--target", 3, "-o", tmp_path)
    assert code == 0 and len(stdout.strip().splitlines()) == 2
    records = json.loads((tmp_path / "summary.json").read_text())["inputs"]
    assert [r["target"] for r in records] == [3, 3] and [r["prediction"] for r in records] == [0, 7]
    assert np.load(tmp_path / "two_relevance.npy").shape == batch.shape
    assert (tmp_path / "two_0_heatmap.png").is_file() and (tmp_path / "two_1_overlay.png").is_file()


def test_explain_every_class_with_several_methods(capsys, tmp_path):
    batch = np.concatenate([np.load(SAMPLES / f"digit_{d}.npy") for d in (0, 7)])
    np.save(tmp_path / "two.npy", batch)
    code, stdout, _ = run_cli(capsys, "explain", MODEL, tmp_path / "two.npy", "--target", "all",
                              "--method", "lrp,clrp", "-o", tmp_path / "o")
    assert code == 0 and len(stdout.strip().splitlines()) == 2
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["methods"] == ["lrp", "clrp"]
    expected = Explainer(MODEL, backend="numpy").explain(batch, target="all").relevance
    for method in ("lrp", "clrp"):
        relevance = np.load(tmp_path / "o" / f"two_{method}_relevance.npy")
        assert relevance.shape == (2, 10, 1, 28, 28)
    np.testing.assert_allclose(np.load(tmp_path / "o" / "two_lrp_relevance.npy"), expected, rtol=1e-4, atol=1e-6)
    for i, rec in enumerate(summary["inputs"]):
        assert rec["targets"] == list(range(10)) and rec["prediction"] == [0, 7][i]
        with Image.open(tmp_path / "o" / rec["grid"]) as img:  # 10 rows, 2 columns of 112-px cells + labels
            assert img.height > 10 * 112 and 2 * 112 < img.width < 4 * 112


def test_explain_one_target_with_two_methods_is_one_row(capsys, tmp_path, inputs):
    code, _, _ = run_cli(capsys, "explain", MODEL, inputs["png"], "--method", "lrp,sglrp", "-o", tmp_path / "o")
    assert code == 0
    rec = json.loads((tmp_path / "o" / "summary.json").read_text())["inputs"][0]
    assert rec["targets"] == [3] and np.load(tmp_path / "o" / "digit_3_sglrp_relevance.npy").shape == (1, 1, 1, 28, 28)
    with Image.open(tmp_path / "o" / rec["grid"]) as img:
        assert img.width > 2 * 112 and 112 < img.height < 2 * 112


def test_explain_one_sample_without_batch_axis(capsys, tmp_path):
    np.save(tmp_path / "x.npy", np.load(SAMPLES / "digit_7.npy")[0])
    code, _, _ = run_cli(capsys, "explain", MODEL, tmp_path / "x.npy", "--scale", 2, "-o", tmp_path / "o")
    assert code == 0
    assert np.load(tmp_path / "o" / "x_relevance.npy").shape == (1, 28, 28)
    with Image.open(tmp_path / "o" / "x_heatmap.png") as img:
        assert img.size == (56, 56)


@pytest.mark.parametrize("cmap, zero", [("bwr", (255, 255, 255)), ("hot", (0, 0, 0)), ("gray", (0, 0, 0))])
def test_colour_maps(capsys, tmp_path, inputs, cmap, zero):
    """A corner pixel (about zero relevance) is the colour map's zero: white for bwr, black for |R| maps."""
    code, _, _ = run_cli(capsys, "explain", MODEL, inputs["npy"], "--cmap", cmap, "--rules", "zplus", "-o", tmp_path)
    assert code == 0
    with Image.open(tmp_path / "digit_3_heatmap.png") as img:
        assert np.abs(np.subtract(img.getpixel((0, 0)), zero)).max() <= 3


def test_mean_std_normalize_image_and_set_bounds(capsys, tmp_path, inputs):
    m, s = 0.25, 0.5
    code, _, _ = run_cli(capsys, "explain", MODEL, inputs["png"], "--mean", m, "--std", s, "-o", tmp_path)
    assert code == 0
    with Image.open(inputs["png"]) as img:
        x = (np.asarray(img, np.float32)[None, None] / 255 - m) / s
    expected = Explainer(MODEL, low=(0 - m) / s, high=(1 - m) / s).explain(x).relevance
    np.testing.assert_allclose(np.load(tmp_path / "digit_3_relevance.npy"), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_rgb_image_is_resized_and_normalized_per_channel(capsys, tmp_path, layout):
    rng = np.random.default_rng(0)
    nhwc = layout == "NHWC"
    nodes = [node("Transpose", ["x"], "t", perm=[0, 3, 1, 2])] if nhwc else []
    nodes += [node("Conv", ["t" if nhwc else "x", "w"], "c", pads=[1, 1, 1, 1]), node("Relu", ["c"], "r"),
              node("GlobalAveragePool", ["r"], "g"), node("Flatten", ["g"], "f"), node("Gemm", ["f", "W"], "y")]
    shape = (8, 8, 3) if nhwc else (3, 8, 8)
    onnx.save(model(nodes, {"w": rng.normal(size=(4, 3, 3, 3)), "W": rng.normal(size=(4, 5))}, shape),
              str(tmp_path / "rgb.onnx"))
    Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8)).save(tmp_path / "pic.jpg")
    code, _, err = run_cli(capsys, "explain", tmp_path / "rgb.onnx", tmp_path / "pic.jpg", "--mean",
                           "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "-o", tmp_path / "o")
    assert code == 0, err
    assert np.load(tmp_path / "o" / "pic_relevance.npy").shape == (1, *shape)
    with Image.open(tmp_path / "o" / "pic_overlay.png") as img:
        assert img.size == (224, 224)
    rec = json.loads((tmp_path / "o" / "summary.json").read_text())["inputs"][0]
    assert abs(rec["conservation"] - 1) < 1e-3


def test_inspect_prints_rules(capsys):
    code, out, _ = run_cli(capsys, "inspect", MODEL)
    assert code == 0
    assert out.splitlines()[0].split()[-1] == "rule"
    assert "ZBox()" in out and "ZPlus(bias=False)" in out
    code, out, _ = run_cli(capsys, "inspect", MODEL, "--rules", "epsilon-gamma-box")
    assert code == 0 and "Gamma(gamma=0.25)" in out and "Epsilon(" in out


def test_inspect_lists_every_unsupported_op(capsys, tmp_path):
    proto = model([node("Conv", ["x", "w"], "c"), node("Erf", ["c"], "e"), node("Sin", ["e"], "y")],
                  {"w": np.ones((2, 1, 3, 3))}, (1, 4, 4))
    path = tmp_path / "erf.onnx"
    onnx.save(proto, str(path))
    code, out, _ = run_cli(capsys, "inspect", path)
    assert code == 1
    assert "'x' (N, 1, 4, 4)" in out
    assert "Erf" in out and "Erf_e" in out and "Sin" in out and "Sin_y" in out
    code, _, err = run_cli(capsys, "explain", path, SAMPLES / "digit_3.npy", "-o", tmp_path / "o")
    assert_user_error(code, err, "Erf")


def test_lenient_and_output_options(capsys, tmp_path):
    """--lenient passes relevance through ops without a rule (one warning line); --output picks the output."""
    proto = model([node("Conv", ["x", "w"], "c"), node("Tanh", ["c"], "t"), node("Flatten", ["t"], "f"),
                   node("Gemm", ["f", "w2"], "y"), node("Gemm", ["f", "w3"], "z")],
                  {"w": np.ones((2, 1, 3, 3)), "w2": np.ones((8, 3)), "w3": np.ones((8, 5))}, (1, 4, 4))
    proto.graph.output.append(onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 5]))
    path = tmp_path / "tanh.onnx"
    onnx.save(proto, str(path))
    sample = tmp_path / "x.npy"
    np.save(sample, np.random.default_rng(0).uniform(size=(1, 1, 4, 4)).astype(np.float32))
    code, _, err = run_cli(capsys, "explain", path, sample, "-o", tmp_path / "strict")
    assert_user_error(code, err, "Tanh", "--lenient")
    for output, classes in (("0", 3), ("z", 5)):
        code, out, err = run_cli(capsys, "explain", path, sample, "--lenient", "--output", output,
                                 "--rules", "zplus", "-o", tmp_path / output)
        assert code == 0, err
        assert err.strip().splitlines() == [err.strip()] and err.startswith("onnxdtd: warning: ") and "Tanh" in err
        summary = json.loads((tmp_path / output / "summary.json").read_text())
        assert summary["inputs"][0]["prediction"] < classes and abs(summary["inputs"][0]["conservation"] - 1) < 1e-4
    code, out, _ = run_cli(capsys, "inspect", path, "--lenient", "--output", "z")
    assert code == 0 and "Tanh" in out and "'z' (N, 5)" in out


def test_user_errors_exit_2_in_one_line(capsys, tmp_path, inputs):
    out = tmp_path / "o"
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(MODEL.read_bytes()[:500])
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((1, 1, 27, 28), np.float32))
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    before = {p: p.read_bytes() for p in inputs.values()}
    cases = [
        (("inspect", tmp_path / "missing.onnx"), "missing.onnx"),
        (("explain", tmp_path / "missing.onnx", inputs["npy"]), "missing.onnx"),
        (("inspect", corrupt), "corrupt"),
        (("explain", MODEL, inputs["npy"], "--target", 99), "target"),
        (("explain", MODEL, wrong), "wrong.npy"),
        (("explain", MODEL, tmp_path / "nope.npy"), "nope.npy"),
        (("explain", MODEL, not_image), "notes.txt"),
        (("explain", MODEL, inputs["png"], "--mean", "0.1,0.2,0.3"), "--mean"),
        (("explain", MODEL, inputs["png"], "--low", 1, "--high", 0), "low"),
        (("explain", MODEL, inputs["png"], "--backend", "nonesuch"), "nonesuch"),
    ]
    for argv, word in cases:
        code, _, err = run_cli(capsys, *argv, *(("-o", out) if argv[0] == "explain" else ()))
        assert_user_error(code, err, word)
    assert not out.exists()  # nothing is written when an input or option is wrong
    assert all(p.read_bytes() == b for p, b in before.items())


@pytest.mark.parametrize("argv", [["explain", str(MODEL), "x.npy", "--rules", "nonesuch"],
                                  ["explain", str(MODEL), "x.npy", "--mean", "a,b"],
                                  ["explain", str(MODEL), "x.npy", "--target", "some"],
                                  ["explain", str(MODEL), "x.npy", "--method", "lrp,occlusion"],
                                  ["inspect"]])
def test_argparse_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_python_dash_m(tmp_path):
    env_run = [sys.executable, "-m", "onnxdtd"]
    done = subprocess.run([*env_run, "explain", str(tmp_path / "none.onnx"), "x.npy"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 2 and done.stderr.startswith("onnxdtd: error: ") and "Traceback" not in done.stderr
    help_text = subprocess.run([*env_run, "explain", "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    assert "examples:" in help_text and "--mean" in help_text
