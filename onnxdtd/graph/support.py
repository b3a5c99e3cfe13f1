"""The op support table, generated from the handler registry (README.md embeds it; a test keeps it in sync)."""
from __future__ import annotations

from .ops.activation import NO_RULE
from .passes import IDENTITY_OPS
from .registry import HINTS, NOTES

# Ops that canonicalization removes before any handler sees them.
REMOVED = {
    "Constant": "folded into initializers, like every all-constant subgraph",
    "Cast": "float-to-float casts are removed; integer shape arithmetic (Shape, Gather, ...) is ignored",
    **{op: "removed: readers read its input" for op in IDENTITY_OPS},
}


def support_table() -> str:
    """A Markdown table: op type, status, and how relevance goes through it."""
    rows = [(op, "removed", note) for op, note in REMOVED.items()]
    rows += [(op, "lenient only" if op in NO_RULE else "supported", note) for op, note in NOTES.items()]
    rows += [(op, "unsupported", hint) for op, hint in HINTS.items() if op not in NOTES]
    lines = ["| op | status | relevance |", "| --- | --- | --- |"]
    lines += [f"| {op} | {status} | {note} |" for op, status, note in sorted(rows, key=lambda r: r[0].lower())]
    return "\n".join(lines)


START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"


def embed(text: str) -> str:
    """`text` (the README) with the generated table between its START and END markers."""
    head, rest = text.split(START, 1)
    return f"{head}{START}\n{support_table()}\n{END}{rest.split(END, 1)[1]}"


if __name__ == "__main__":  # python -m onnxdtd.graph.support [README.md]: print the table, or update the file
    import sys
    from pathlib import Path

    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
        path.write_text(embed(path.read_text()))
    else:
        print(support_table())
