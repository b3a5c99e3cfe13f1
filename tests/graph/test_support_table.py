"""The README's op support table is the one generated from the handler registry."""
from pathlib import Path

from onnxdtd.graph.support import embed, support_table
from onnxdtd.graph.registry import supported_ops

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_support_table_is_current():
    text = README.read_text()
    assert embed(text) == text, "README.md is out of date: run python -m onnxdtd.graph.support README.md"


def test_table_lists_every_supported_op():
    table = support_table()
    for op in supported_ops():
        assert f"| {op} |" in table
    assert "| LayerNormalization | unsupported |" in table and "| Tanh | lenient only |" in table
