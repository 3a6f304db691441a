"""``python -m tvm_shuffle.compile``: build a model for a target without tuning, and write its bundle.

Imports the model, folds BatchNorm, fuses channel shuffles, builds with the
default schedules and writes the bundle (``model.so``, ``manifest.json``, the
runtime in ``lib/``, the C++ header and example apps) to ``--out``.

From Python, ``tvm_shuffle.compile(model, target="x86", ...)`` does the same
and returns a :class:`tvm_shuffle.api.Compiled` (this module is callable as
:func:`tvm_shuffle.api.compile`).
"""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from tvm_shuffle import api, cli
from tvm_shuffle.errors import cli_entry

EPILOG = """examples:
  python -m tvm_shuffle.compile --model shufflenet_v2_x1_0 --target x86 --out out/v2
  python -m tvm_shuffle.compile --onnx my_model.onnx --input-shape 1,3,224,224 --target x86 --out out/mine
  python -m tvm_shuffle.compile --torch my_model.pt2 --target arm --out out/mine-arm

Load the result with tvm_shuffle.load("out/v2") (numpy in, numpy out).
List models with `python -m tvm_shuffle.models`."""


def build_parser() -> argparse.ArgumentParser:
    paragraphs = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(prog="python -m tvm_shuffle.compile",
                                     description=paragraphs[0] + "\n\n" + paragraphs[1], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_arguments(parser)
    cli.add_target_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory for the bundle (model.so, manifest.json, lib/, include/, example/)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the graph passes' effect")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = api.resolve_target(cli.target(args))  # before the slow import, so a bad name fails at once
    compiled = api.compile(cli.model_source(args), spec, input_shape=cli.input_shape(args), shuffle=args.shuffle,
                           weights=args.weights, verbose=args.verbose, precision=cli.precision(args),
                           **cli.quantization(args))
    out = compiled.save(args.out)
    library = out / compiled.manifest["library"]
    print(f"built {spec.name} ({json.dumps(spec.target)}) in {compiled.manifest['build_seconds']:.1f} s: "
          f"{library} ({library.stat().st_size / 1e6:.1f} MB)")
    return 0


cli.make_callable(__name__, api.compile)

if __name__ == "__main__":
    raise SystemExit(main())
