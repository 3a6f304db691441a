"""Compile time, library size and untuned latency per ShuffleNetV2 width, beside PyTorch eager.

    python benchmarks/compile_v2.py [--threads 2] [--repeat 30]

Both engines are measured in the same run with the same thread count; the
machine is shared, so read the ratio, not the absolute times.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tvm_shuffle.defaults import SHUFFLE_MODES
from tvm_shuffle.host import physical_cores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--shuffle", choices=SHUFFLE_MODES, default=SHUFFLE_MODES[0])
    args = parser.parse_args(argv)
    from tvm_shuffle.checkout import require_checkout

    require_checkout(Path(__file__).resolve().parents[1])

    import numpy as np
    import torch

    import tvm_shuffle as ts
    from tvm_shuffle import models, targets
    from tvm_shuffle.timing import measure, median_ms

    torch.set_num_threads(args.threads)
    spec = targets.get("x86")
    print(f"target {spec.target}, {args.threads} threads, median of {args.repeat}, shuffle={args.shuffle}")
    print(f"{'model':<22}{'compile s':>10}{'.so MB':>8}{'tvm ms':>9}{'torch ms':>10}{'torch/tvm':>10}")
    for name in [n for n, s in models.MODELS.items() if s.family == "v2"]:
        start = time.perf_counter()
        compiled = ts.compile(name, spec, shuffle=args.shuffle, quiet=True)
        compile_s = time.perf_counter() - start
        size = compiled.library().stat().st_size / 1e6
        model = compiled.model(threads=args.threads)
        x = np.random.default_rng(0).standard_normal(model.input_shape).astype("float32")
        tvm_ms = median_ms(model.benchmark(x, warmup=3, repeat=args.repeat))
        module = models.build_model(name)
        with torch.no_grad():
            torch_ms = median_ms(measure(lambda: module(torch.from_numpy(x)), warmup=3, repeat=args.repeat))
        print(f"{name:<22}{compile_s:>10.1f}{size:>8.1f}{tvm_ms:>9.2f}{torch_ms:>10.2f}{torch_ms / tvm_ms:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
