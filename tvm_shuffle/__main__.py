"""``python -m tvm_shuffle``: the quick start, end to end for one model on this host.

Tunes the default zoo model for this CPU on a small budget, exports the tuned
library + manifest (a bundle), then writes the side-by-side latency report
against PyTorch, ONNX Runtime and the other installed engines, numerics
checked. Each step is also its own command: ``python -m tvm_shuffle.tune``,
``python -m tvm_shuffle.report`` (and ``python -m tvm_shuffle.compile`` to
skip tuning).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from tvm_shuffle.errors import cli_entry

QUICK_TRIALS = 64  # a few minutes on 2 cores; `python -m tvm_shuffle.tune --trials N` for more


def build_parser() -> argparse.ArgumentParser:
    from tvm_shuffle.models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="python -m tvm_shuffle", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo model (default {DEFAULT_MODEL})")
    parser.add_argument("--target", default="x86", help="target preset (default x86: this host)")
    parser.add_argument("--trials", type=int, default=QUICK_TRIALS,
                        help=f"tuning trials in total (default {QUICK_TRIALS})")
    parser.add_argument("--work-dir", default="work", help="tuning records (default ./work; re-runs resume)")
    parser.add_argument("--out", default="out", help="bundle goes to OUT/<model>-<target>, report to OUT/report")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tvm_shuffle import report, tune

    bundle_dir = os.path.join(args.out, f"{args.model}-{args.target}")
    common = ["--model", args.model, "--target", args.target, "--work-dir", args.work_dir]
    status = tune.main([*common, "--trials", str(args.trials), "--out", bundle_dir])
    if status != 0:
        return status
    return report.main([*common, "--out", os.path.join(args.out, "report")])


if __name__ == "__main__":
    sys.exit(main())
