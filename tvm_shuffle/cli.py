"""The command-line flags that ``compile``, ``tune`` and ``report`` share, and how they map to the Python API.

Each flag is defined once here, with one default; the commands parse them
and pass plain values to :mod:`tvm_shuffle.api` (no library function sees an
argparse ``Namespace``).
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from typing import Callable

from tvm_shuffle import defaults, precisions, targets
from tvm_shuffle.errors import UserError
from tvm_shuffle.tuning import rpc


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model / --onnx / --torch (exactly one), --input-shape, --weights."""
    source = parser.add_argument_group("model (exactly one)")
    source.add_argument("--model", metavar="NAME", help="a zoo model, e.g. shufflenet_v2_x1_0")
    source.add_argument("--onnx", metavar="FILE", help="an ONNX file (torch.onnx.export, dynamo or classic)")
    source.add_argument("--torch", metavar="FILE.pt2", help="a program saved with torch.export.save")
    parser.add_argument("--input-shape", metavar="N,C,H,W",
                        help="static input shape (default: from the model file; "
                             f"{','.join(map(str, defaults.INPUT_SHAPE))} for zoo models)")
    parser.add_argument("--weights", metavar="FILE", help="state_dict to load into a zoo model (torch.save)")


def add_target_arguments(parser: argparse.ArgumentParser, *, default: str = "x86") -> None:
    """--target / --target-file, --shuffle, --precision, --quantize / --calibration / --calibrator."""
    parser.add_argument("--target", default=default, metavar="TARGET",
                        help=f"one of: {', '.join(targets.names())} (default: {default})")
    parser.add_argument("--target-file", metavar="FILE",
                        help="a board described in JSON with the fields of a target preset; overrides --target")
    parser.add_argument("--shuffle", choices=defaults.SHUFFLE_MODES, default=defaults.SHUFFLE_MODES[0],
                        help="fused: fold channel shuffles into neighbouring kernels (default); stock: leave them")
    parser.add_argument("--precision", choices=list(precisions.PRECISIONS), default=precisions.DEFAULT,
                        help="; ".join(f"{p.name}: {p.description}" for p in precisions.PRECISIONS.values())
                        + f" (default: {precisions.DEFAULT}; inputs and outputs stay fp32)")
    parser.add_argument("--quantize", choices=[p.name for p in precisions.PRECISIONS.values() if p.calibrated],
                        help="post-training static quantization (the same as --precision int8)")
    parser.add_argument("--calibration", metavar="PATH",
                        help="calibration set for --quantize: an N x C x H x W .npy file or a directory of images "
                             "(default: synthetic N(0, 1) images, with a warning)")
    parser.add_argument("--calibrator", choices=precisions.CALIBRATORS, default=precisions.CALIBRATORS[0],
                        help="input ranges from the calibration set: minmax (default) or percentile (99.99%%)")


def precision(args: argparse.Namespace) -> str:
    """The precision --precision and --quantize name together (one UserError when they disagree)."""
    if args.quantize is None:
        if args.calibration:
            raise UserError("--calibration applies to --quantize int8")
        return args.precision
    if args.precision not in (precisions.DEFAULT, args.quantize):
        raise UserError(f"--quantize {args.quantize} and --precision {args.precision} disagree: give one")
    return args.quantize


def quantization(args: argparse.Namespace) -> dict:
    """The API's calibration keywords from --calibration and --calibrator (empty unless quantizing)."""
    if precision(args) not in (p.name for p in precisions.PRECISIONS.values() if p.calibrated):
        return {}
    return {"calibration": args.calibration, "calibrator": args.calibrator}


def add_work_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", default=defaults.WORK_DIR, metavar="DIR",
                        help=f"where tuning records and logs are kept (default: ./{defaults.WORK_DIR})")


def add_rpc_arguments(parser: argparse.ArgumentParser, *, title: str = "remote device (boards, GPUs)") -> None:
    """--rpc-tracker, --rpc-key, --rpc-timeout."""
    remote = parser.add_argument_group(title)
    remote.add_argument("--rpc-tracker", metavar="HOST:PORT", help="TVM RPC tracker the device is registered with")
    remote.add_argument("--rpc-key", metavar="KEY", help="the device's key (rpc_server --key)")
    remote.add_argument("--rpc-timeout", type=float, default=rpc.DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help="give up on an unreachable tracker or busy device after this long "
                             f"(default: {rpc.DEFAULT_TIMEOUT_S:g})")


def check_rpc_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.rpc_key and not args.rpc_tracker:
        parser.error("--rpc-key needs --rpc-tracker HOST:PORT")


def target(args: argparse.Namespace) -> targets.TargetSpec:
    """The spec --target-file describes, else the --target preset."""
    return targets.load_target_file(args.target_file) if args.target_file else targets.get(args.target)


def model_source(args: argparse.Namespace) -> str:
    """The one model the flags name: a zoo name or a file path, as the API takes it."""
    given = [(flag, value) for flag, value in (("--model", args.model), ("--onnx", args.onnx),
                                                ("--torch", args.torch)) if value]
    if len(given) != 1:
        raise UserError("give exactly one of --model NAME, --onnx FILE, --torch FILE.pt2")
    if args.weights and not args.model:
        raise UserError("--weights applies to zoo models (--model); bake weights into ONNX/.pt2 files instead")
    flag, value = given[0]
    if flag == "--torch" and not value.endswith(".pt2"):
        raise UserError(f"--torch {value}: a torch.export program's file name ends in .pt2")
    if flag == "--onnx" and value.endswith(".pt2"):
        raise UserError(f"--onnx {value}: a .pt2 file is a torch.export program; use --torch")
    if flag == "--model" and (value.endswith((".onnx", ".pt2")) or os.sep in value):
        raise UserError(f"--model takes a zoo model name; for a file use --onnx or --torch ({value})")
    return value


def input_shape(args: argparse.Namespace) -> tuple[int, ...] | None:
    from tvm_shuffle.frontends import parse_shape

    return parse_shape(args.input_shape)


def make_callable(module_name: str, function: Callable) -> None:
    """Let the command module ``module_name`` be called as ``function`` (same arguments, same result).

    ``tvm_shuffle.compile`` is both the API function and the module
    ``python -m tvm_shuffle.compile`` runs (``tune`` and ``report`` too).
    Once a submodule is imported, Python binds it to the package attribute
    of the same name, so the module itself forwards calls to the function.
    """
    module = sys.modules[module_name]
    module.__class__ = type("CommandModule", (types.ModuleType,), {"__call__": staticmethod(function)})


__all__ = ["make_callable", "add_model_arguments", "add_target_arguments", "add_work_dir_argument", "add_rpc_arguments",
           "check_rpc_arguments", "target", "model_source", "input_shape"]
