"""int8 against fp32 PyTorch on the zoo models: top-1 agreement and the logits' signal-to-noise ratio.

    python benchmarks/int8_zoo.py [--models shufflenet_v2_x1_0,...] [--inputs 16] [--calibration-images 8]

Each model has randomized BatchNorm statistics (:func:`tvm_shuffle.models.randomize_batchnorm`), so
its logits depend on every layer; it is calibrated (min-max) on seeded N(0, 1) images and compared
with PyTorch fp32 on other seeded images, batch 1 at 1x3x224x224. Prints a Markdown table: top-1
agreement, the mean relative L2 error of the logits and its SNR (-20 log10 of it), under a line with
the revision measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

DEFAULT_MODELS = ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
                  "shufflenet_v1_g3_x1_0", "shufflenet_v1_g8_x1_0")
SHAPE = (1, 3, 224, 224)


def compare(name: str, calibration: np.ndarray, inputs: np.ndarray) -> tuple[int, float]:
    """(images whose top-1 matches PyTorch's, mean relative L2 logit error) of ``name`` built in int8."""
    import torch

    import tvm_shuffle as ts
    from tvm_shuffle import models

    torch.manual_seed(0)
    module = models.randomize_batchnorm(models.build_model(name).eval())
    compiled = ts.compile(module, input_shape=SHAPE, precision="int8", calibration=calibration, quiet=True)
    agree, errors = 0, []
    for x in inputs:
        x = x[None]
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        out = compiled(x)[0]
        agree += int(out.argmax() == ref.argmax())
        errors.append(float(np.linalg.norm(out - ref) / np.linalg.norm(ref)))
    return agree, float(np.mean(errors))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo names")
    parser.add_argument("--inputs", type=int, default=16, help="seeded N(0, 1) images compared per model")
    parser.add_argument("--calibration-images", type=int, default=8, help="seeded N(0, 1) calibration images")
    args = parser.parse_args(argv)
    if args.inputs < 1 or args.calibration_images < 1:
        parser.error("--inputs and --calibration-images must be at least 1")
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((args.calibration_images, *SHAPE[1:])).astype(np.float32)
    inputs = rng.standard_normal((args.inputs, *SHAPE[1:])).astype(np.float32)
    from tvm_shuffle import models
    from tvm_shuffle.checkout import require_checkout, revision

    root = Path(__file__).resolve().parents[1]
    require_checkout(root)
    names = args.models.split(",")
    unknown = [name for name in names if name not in models.MODELS]
    if unknown:
        parser.error(f"unknown models {', '.join(unknown)}; the zoo has {', '.join(models.MODELS)}")
    print(f"tvm_shuffle {revision(root)}, {args.calibration_images} calibration images, {args.inputs} inputs per model\n")
    print("| model | top-1 agreement | relative L2 logit error | SNR dB |\n|---|---|---|---|")
    for name in names:
        agree, error = compare(name, calibration, inputs)
        print(f"| {name} | {agree}/{args.inputs} | {error:.1e} | {-20 * np.log10(error):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
