"""Compile time, library size and untuned latency per ShuffleNetV2 width, beside PyTorch eager.

    python benchmarks/compile_v2.py [--threads 2] [--repeat 30]

Both engines are measured in the same run with the same thread count; the
machine is shared, so read the ratio, not the absolute times.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--shuffle", choices=("fused", "stock"), default="fused")
    args = parser.parse_args(argv)
    from tvm_shuffle.checkout import require_checkout

    require_checkout(Path(__file__).resolve().parents[1])
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    import numpy as np
    import torch

    from tvm_shuffle import build, frontends, models, runtime, targets
    from tvm_shuffle.timing import measure, median_ms

    torch.set_num_threads(args.threads)
    spec = targets.get("x86")
    print(f"target {spec.target}, {args.threads} threads, median of {args.repeat}, shuffle={args.shuffle}")
    print(f"{'model':<22}{'compile s':>10}{'.so MB':>8}{'tvm ms':>9}{'torch ms':>10}{'torch/tvm':>10}")
    for name in [n for n, s in models.MODELS.items() if s.family == "v2"]:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            imported = frontends.from_zoo(name)
            build.compile_imported(imported, spec, out, shuffle=args.shuffle)
            compile_s = time.perf_counter() - start
            size = os.path.getsize(os.path.join(out, build.LIBRARY)) / 1e6
            model = runtime.load(out)
            x = np.random.default_rng(0).standard_normal(model.input_shape).astype("float32")
            tvm_ms = median_ms(model.benchmark(x, warmup=3, repeat=args.repeat))
            module = models.build_model(name)
            with torch.no_grad():
                torch_ms = median_ms(measure(lambda: module(torch.from_numpy(x)), warmup=3, repeat=args.repeat))
        print(f"{name:<22}{compile_s:>10.1f}{size:>8.1f}{tvm_ms:>9.2f}{torch_ms:>10.2f}{torch_ms / tvm_ms:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
