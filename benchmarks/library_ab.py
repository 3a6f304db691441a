"""Exported model libraries against each other in one process: per-kernel and whole-model times.

    python benchmarks/library_ab.py BASE.so NEW.so [MORE.so ...] [--rounds 8] [--runs 10]
                                    [--kernels conv2d] [--no-kernels] [--no-model]

Build each variant first (e.g. ``Compiled.library()`` copied per commit),
then load all of them here and time them in alternating rounds, so drift on
a shared machine hits every variant alike; read the ratios.

* kernels (1 thread): every call the VM makes, timed by the VM's
  instrument hook; per kernel the minimum over all its calls times its calls
  per inference (a kernel name may differ between builds when the graph
  passes change which kernels exist).
* model (1 and 2 threads): min, p10 and median of single inferences.

Start it with ``TVM_NUM_THREADS=2`` (the pool size is fixed when it starts;
the 1-thread rounds shrink it with ``runtime.config_threadpool``). The first
library's output is the reference for the others' maximum difference.
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TVM_BIND_THREADS", "0")


def main(argv=None) -> int:
    import tvm_ffi

    from tvm_shuffle.tvm_compat import relax, tvm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("libraries", nargs="+", type=Path)
    ap.add_argument("--shape", default="1,3,224,224")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=10, help="inferences per variant per round")
    ap.add_argument("--kernels", default="conv2d", help="comma-separated parts of the kernel names to list")
    ap.add_argument("--no-kernels", action="store_true")
    ap.add_argument("--no-model", action="store_true")
    args = ap.parse_args(argv)
    threads = tvm_ffi.get_global_func("runtime.config_threadpool")
    shape = tuple(int(d) for d in args.shape.split(","))
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype("float32"))
    names = [str(p) for p in args.libraries]

    def load():
        return {n: relax.VirtualMachine(tvm.runtime.load_module(n), tvm.cpu()) for n in names}

    def first(out):
        return (out if hasattr(out, "numpy") else out[0]).numpy()

    vms = load()
    reference = first(vms[names[0]]["main"](x))
    for n in names[1:]:
        print(f"max |{n} - {names[0]}| = {np.abs(first(vms[n]['main'](x)) - reference).max():.3g}")

    def set_threads(count: int) -> None:
        os.environ["TVM_NUM_THREADS"] = str(count)
        threads(1, count)

    if not args.no_kernels:
        set_threads(1)
        times = {n: collections.defaultdict(list) for n in names}
        for n in names:
            started: list[float] = []

            def hook(func, symbol, before, ret, *rest, n=n, started=started):
                if before:
                    started.append(time.perf_counter())
                else:
                    times[n][str(symbol)].append(time.perf_counter() - started.pop())
                return 0

            vms[n].set_instrument(hook)
        for _ in range(args.rounds):
            for n in names:
                for _ in range(args.runs):
                    vms[n]["main"](x)
        parts = args.kernels.split(",")
        symbols = sorted({s for n in names for s in times[n] if any(p in s for p in parts)})
        print("kernel | " + " | ".join(names) + "  (us per inference: min per call x calls)")
        for s in symbols:
            cells = []
            for n in names:
                seconds = times[n].get(s)
                calls = max(1, len(seconds) // (args.rounds * args.runs)) if seconds else 0
                cells.append(f"{min(seconds) * 1e6 * calls:.1f} (x{calls})" if seconds else "-")
            print(f"{s.replace('__tvm_ffi_', '')} | " + " | ".join(cells))
        vms = load()
    if not args.no_model:
        for count in (1, 2):
            set_threads(count)
            samples = {n: [] for n in names}
            for n in names:
                for _ in range(5):
                    vms[n]["main"](x)
            for _ in range(2 * args.rounds):
                for n in names:
                    for _ in range(args.runs):
                        start = time.perf_counter()
                        vms[n]["main"](x)
                        samples[n].append(time.perf_counter() - start)
            base = sorted(samples[names[0]])
            for n in names:
                s = sorted(samples[n])
                print(f"model {count}t {n}: min {s[0] * 1e6:.1f} p10 {s[len(s) // 10] * 1e6:.1f} "
                      f"median {s[len(s) // 2] * 1e6:.1f} us; min ratio {s[0] / base[0]:.3f}, "
                      f"p10 ratio {s[len(s) // 10] / base[len(base) // 10]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
