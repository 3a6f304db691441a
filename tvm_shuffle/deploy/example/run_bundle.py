"""Run a tvm_shuffle bundle from Python, with only the TVM runtime.

    python example/run_bundle.py                    # the bundle this file sits in, on a random input
    python example/run_bundle.py BUNDLE tensor.bin  # a raw float32 NCHW tensor, already preprocessed

Needs numpy, apache-tvm-ffi and the tvm_shuffle package; not torch, onnx nor
TVM's compiler (apache-tvm): the TVM runtime library comes from the bundle's
lib/ folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from tvm_shuffle import runtime
from tvm_shuffle.errors import UserError, cli_entry


def read_input(path: str | None, model: runtime.Model) -> np.ndarray:
    if path is None:
        return np.random.default_rng(0).standard_normal(model.input_shape).astype(model.input_dtype)
    data = np.fromfile(path, dtype=model.input_dtype)
    if data.size != np.prod(model.input_shape):
        raise UserError(f"{path} holds {data.size} values; the model takes {model.input_shape}")
    return data.reshape(model.input_shape)


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", nargs="?", default=str(Path(__file__).resolve().parent.parent),
                        help="the bundle directory (default: the one this script is in)")
    parser.add_argument("input", nargs="?", help="raw float32 tensor file (default: a random input)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs (default 20)")
    args = parser.parse_args(argv)

    model = runtime.load(args.bundle)
    x = read_input(args.input, model)
    logits = model(x)[0].ravel()
    times = sorted(model.benchmark(x, warmup=3, repeat=args.repeat))
    print(f"model {model.manifest['model']}, target {model.manifest['target']['name']}, input {model.input_shape}")
    print("top-5 classes:", " ".join(str(i) for i in np.argsort(-logits, kind="stable")[:5]))
    print(f"latency: median {times[len(times) // 2] * 1e3:.3f} ms, min {times[0] * 1e3:.3f} ms over {args.repeat} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
