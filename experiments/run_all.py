"""Regenerate every model, table and figure of docs/experiments.md, one experiment after the other.

Run from the repository root: ``python -m experiments.run_all`` (about five minutes on two cores), or
``python -m experiments.run_all --evaluate-only`` to evaluate the committed models without training.
"""
from __future__ import annotations

import argparse
import time

from experiments import breast_cancer, diffusion, mnist_two_digits, perturbation

EXPERIMENTS = (mnist_two_digits, diffusion, perturbation, breast_cancer)


def main(argv=None) -> None:
    """Run each experiment's main() with the same options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluate-only", action="store_true",
                        help="skip training and export; evaluate the committed models as they are")
    args = parser.parse_args(argv)
    for module in EXPERIMENTS:
        print(f"=== {module.__name__}")
        start = time.perf_counter()
        module.main(["--evaluate-only"] if args.evaluate_only else [])
        print(f"=== {module.__name__}: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
