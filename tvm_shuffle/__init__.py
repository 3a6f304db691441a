"""tvm_shuffle: compile, tune and ship ShuffleNet-class networks with Apache TVM.

The pipeline, one module a step: ``frontends`` (import) -> ``passes`` (graph
passes) -> ``tune`` -> ``build`` (build and export) -> ``runtime`` (run) ->
``report``.
"""

__version__ = "0.1.0"


def require_checkout(root) -> None:
    """Exit with one line unless the imported tvm_shuffle (and its schedules) is the checkout at ``root``.

    A benchmark run from one clone while ``pip install -e`` points at another
    measures the other clone's code: it happened, and its numbers were wrong.
    """
    import pathlib
    import sys

    from tvm_shuffle import schedules

    root = pathlib.Path(root).resolve()
    imported = [pathlib.Path(path).resolve().parents[1] for path in (__file__, schedules.__file__)]
    if any(path != root for path in imported):
        sys.exit(f"error: this script is in {root} but Python imports tvm_shuffle from {imported[0]} and its "
                 f"schedules from {imported[1]}; run `python -m pip install -e .` in {root}")


def checkout_revision(root) -> str:
    """``git describe --always --dirty`` of the checkout at ``root``, for a benchmark's results ("unknown" outside git)."""
    import subprocess

    try:
        done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"
