"""The experiments of docs/experiments.md: one module per experiment, run with ``python -m experiments.<name>``
from the repository root (``python -m experiments.run_all`` runs them all); shared helpers in `common`."""
