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
