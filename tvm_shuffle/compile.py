"""``python -m tvm_shuffle.compile``: build a model for a target without tuning.

Imports the model, folds BatchNorm, fuses channel shuffles, builds with the
default schedules and writes ``DIR/model.so`` + ``DIR/manifest.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

from tvm_shuffle import targets
from tvm_shuffle.errors import cli_entry

EPILOG = """examples:
  python -m tvm_shuffle.compile --model shufflenet_v2_x1_0 --target x86 --out out/v2
  python -m tvm_shuffle.compile --onnx my_model.onnx --input-shape 1,3,224,224 --target x86 --out out/mine
  python -m tvm_shuffle.compile --torch my_model.pt2 --target arm --out out/mine-arm

Load the result with tvm_shuffle.runtime.load("out/v2") (numpy in, numpy out).
List models with `python -m tvm_shuffle.models`."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model-source flags shared by compile, tune and report."""
    source = parser.add_argument_group("model (exactly one)")
    source.add_argument("--model", metavar="NAME", help="a zoo model, e.g. shufflenet_v2_x1_0")
    source.add_argument("--onnx", metavar="FILE", help="an ONNX file (torch.onnx.export, dynamo or classic)")
    source.add_argument("--torch", metavar="FILE.pt2", help="a program saved with torch.export.save")
    parser.add_argument("--input-shape", metavar="N,C,H,W",
                        help="static input shape (default: from the model file; 1,3,224,224 for zoo models)")
    parser.add_argument("--weights", metavar="FILE", help="state_dict to load into a zoo model (torch.save)")


def add_target_arguments(parser: argparse.ArgumentParser, *, default: str | None = "x86") -> None:
    parser.add_argument("--target", default=default, metavar="TARGET",
                        help=f"one of: {', '.join(targets.names())} (default: {default})")
    parser.add_argument("--target-file", metavar="FILE",
                        help="a board described in JSON with the fields of a target preset; overrides --target")
    parser.add_argument("--shuffle", choices=("fused", "stock"), default="fused",
                        help="fused: fold channel shuffles into neighbouring kernels (default); stock: leave them")


def resolve_target(args: argparse.Namespace) -> targets.TargetSpec:
    return targets.load_target_file(args.target_file) if args.target_file else targets.get(args.target)


def import_model(args: argparse.Namespace):
    from tvm_shuffle import frontends

    return frontends.load(model=args.model, onnx=args.onnx, torch=args.torch, weights=args.weights,
                          input_shape=frontends.parse_shape(args.input_shape))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tvm_shuffle.compile", description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    add_target_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory for model.so and manifest.json")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the graph passes' effect")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = resolve_target(args)  # before the slow import, so a bad name fails at once
    targets.require_cross_compiler(spec)
    start = time.perf_counter()
    imported = import_model(args)
    print(f"imported {imported.name} ({imported.source}) input {imported.input_name} "
          f"{'x'.join(map(str, imported.input_shape))} in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    from tvm_shuffle import build

    out = build.compile_imported(imported, spec, args.out, shuffle=args.shuffle, verbose=args.verbose)
    info = json.loads((out / build.MANIFEST).read_text())
    size_mb = (out / build.LIBRARY).stat().st_size / 1e6
    print(f"built {spec.name} ({json.dumps(spec.target)}) in {info['build_seconds']:.1f} s: "
          f"{out / build.LIBRARY} ({size_mb:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
