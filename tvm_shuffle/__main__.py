"""``python -m tvm_shuffle``: the quick start, end to end for one model on this host.

Compiles the default zoo model for this CPU, checks it against PyTorch and
prints both latencies. Each step is also its own command
(``python -m tvm_shuffle.compile``, ``.tune``, ``.report``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from tvm_shuffle.errors import cli_entry

TOLERANCE = 1e-3


def build_parser() -> argparse.ArgumentParser:
    from tvm_shuffle.models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="python -m tvm_shuffle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo model (default {DEFAULT_MODEL})")
    parser.add_argument("--target", default="x86", help="target preset (default x86: this host)")
    parser.add_argument("--out", default=None, help="output directory (default out/<model>-<target>)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every engine")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    out = args.out or os.path.join("out", f"{args.model}-{args.target}")

    from tvm_shuffle import compile as compile_step

    if compile_step.main(["--model", args.model, "--target", args.target, "--out", out]) != 0:
        return 1
    import numpy as np
    import torch

    from tvm_shuffle import models, runtime
    from tvm_shuffle.timing import measure, median_ms

    torch.set_num_threads(args.threads)
    module = models.build_model(args.model)
    model = runtime.load(out)
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype("float32")
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
        torch_times = measure(lambda: module(torch.from_numpy(x)), warmup=3, repeat=20)
    error = float(np.abs(model(x)[0] - expected).max())
    tvm_ms = median_ms(model.benchmark(x, warmup=3, repeat=20))
    torch_ms = median_ms(torch_times)
    print(f"numerics vs PyTorch: max abs error {error:.2e} ({'ok' if error < TOLERANCE else 'MISMATCH'})")
    print(f"latency, {args.threads} threads, median of 20: tvm_shuffle {tvm_ms:.2f} ms, "
          f"PyTorch eager {torch_ms:.2f} ms ({torch_ms / tvm_ms:.2f}x)")
    return 0 if error < TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
