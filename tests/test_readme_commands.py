"""The README's per-framework commands run as written (into a temporary output folder) and conserve."""
import json
import re
import shlex
from pathlib import Path

import pytest

from onnxdtd.cli import main

ROOT = Path(__file__).resolve().parents[1]
SECTION = (ROOT / "README.md").read_text().split("## Models from every framework")[1].split("\n## ")[0]
COMMANDS = re.findall(r"^onnxdtd explain .*$", SECTION, flags=re.M)


def test_one_command_per_framework():
    assert len(COMMANDS) == 4


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    argv = shlex.split(command)[1:]
    argv[argv.index("-o") + 1] = str(tmp_path)
    assert main(argv) == 0, capsys.readouterr().err
    for record in json.loads((tmp_path / "summary.json").read_text())["inputs"]:
        assert abs(record["conservation"] - 1) < 1e-3


def test_python_api_examples_run(tmp_path, monkeypatch):
    """The Python blocks of "Python API" (up to the export section) and "Evaluating explanations" run
    in order as written."""
    readme = (ROOT / "README.md").read_text()
    api = readme.split("## Python API")[1].split("### The explainer as an ONNX file")[0]
    evaluating = readme.split("## Evaluating explanations")[1].split("\n## ")[0]
    blocks = re.findall(r"```python\n(.*?)```", api + evaluating, flags=re.S)
    assert len(blocks) >= 5
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own examples
    assert (tmp_path / "classes_by_methods.png").is_file() and (tmp_path / "batch.png").is_file()


SHIPPED = re.findall(r"(onnxdtd (?:explain|evaluate) models/mnist_cnn\.onnx [^`#\n]*)", (ROOT / "README.md").read_text())


def test_shipped_model_commands_are_found():
    assert any("--target all" in c for c in SHIPPED) and any(c.startswith("onnxdtd evaluate") for c in SHIPPED)


@pytest.mark.parametrize("command", SHIPPED)
def test_shipped_model_command(command, tmp_path, monkeypatch, capsys):
    """Every README command on the shipped MNIST model runs as written (into a temporary folder)."""
    monkeypatch.chdir(ROOT)
    argv = shlex.split(command)[1:]
    if "-o" in argv:
        argv[argv.index("-o") + 1] = str(tmp_path)
    else:
        argv += ["-o", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / ("metrics.json" if argv[0] == "evaluate" else "summary.json")).is_file()
