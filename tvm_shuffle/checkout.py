"""Which code a benchmark measures: the checkout it runs from, and its git revision for the results file."""

from __future__ import annotations

import pathlib
import subprocess
import sys


def require_checkout(root) -> None:
    """Exit with one line unless the imported tvm_shuffle is the checkout at ``root``.

    A benchmark run from one clone while ``pip install -e`` points at
    another would measure the other clone's code.
    """
    import tvm_shuffle

    root = pathlib.Path(root).resolve()
    imported = pathlib.Path(tvm_shuffle.__file__).resolve().parents[1]
    if imported != root:
        sys.exit(f"error: this script is in {root} but Python imports tvm_shuffle from {imported}; "
                 f"run `python -m pip install -e .` in {root}")


def revision(root) -> str:
    """``git describe --always --dirty`` of the checkout at ``root`` ("unknown" outside git)."""
    try:
        done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


__all__ = ["require_checkout", "revision"]
