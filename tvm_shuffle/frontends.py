"""Step 1, import: zoo names, PyTorch modules, ``.pt2`` programs and ONNX files -> Relax.

Every importer returns an :class:`Imported`: the Relax module with weights as
constants (so they end up inside the exported library) and the static input
signature the runtime checks against.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Sequence

from tvm_shuffle.errors import UserError

DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)


@dataclasses.dataclass
class Imported:
    mod: object  # tvm.IRModule; typed loosely so this module imports without TVM
    name: str
    source: str  # "zoo" | "torch" | "pt2" | "onnx"
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: str = "float32"


def parse_shape(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``; clear error on anything else."""
    if text is None:
        return None
    if not isinstance(text, str):
        return tuple(int(d) for d in text)
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise UserError(f"--input-shape {text!r} is not a comma-separated list of integers, e.g. 1,3,224,224") from None
    if len(dims) != 4 or min(dims) <= 0:
        raise UserError(f"--input-shape {text!r} must be four positive integers N,C,H,W")
    return dims


def from_zoo(name: str, *, weights: str | os.PathLike | None = None,
             input_shape: Sequence[int] | None = None) -> Imported:
    from tvm_shuffle import models

    module = models.build_model(name, weights=weights)
    return dataclasses.replace(from_torch_module(module, input_shape or DEFAULT_INPUT_SHAPE, name=name),
                               source="zoo")


def from_torch_module(module, input_shape: Sequence[int], *, name: str = "model") -> Imported:
    """Export an ``nn.Module`` with ``torch.export`` and import the program."""
    import torch

    example = torch.randn(*input_shape)
    with torch.no_grad():
        program = _export(module.eval(), example)
    return _from_program(program, name=name, source="torch")


def from_pt2(path: str | os.PathLike, *, input_shape: Sequence[int] | None = None) -> Imported:
    """A program saved with ``torch.export.save``; re-exported when the shape changes."""
    import torch

    path = _existing_file(path, "PyTorch program")
    try:
        program = torch.export.load(str(path))
    except Exception as err:  # torch raises many types for a bad archive
        raise UserError(f"{path} is not a torch.export program (.pt2): {_first_line(err)}") from None
    saved_shape = _placeholder_shapes(program)[0]
    if input_shape is not None and tuple(input_shape) != saved_shape:
        with torch.no_grad():
            program = _export(program.module(), torch.randn(*input_shape))
    return _from_program(program, name=path.stem, source="pt2")


def from_onnx_file(path: str | os.PathLike, *, input_shape: Sequence[int] | None = None) -> Imported:
    """An ONNX model: what ``torch.onnx.export`` writes (dynamo or classic opsets)."""
    import onnx

    from tvm_shuffle import tvm_compat

    path = _existing_file(path, "ONNX model")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # protobuf DecodeError, onnx ValidationError, ...
        raise UserError(f"{path} is not a valid ONNX model: {_first_line(err)}") from None
    inputs = _graph_inputs(model)
    if len(inputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs ({', '.join(inputs)}); tvm_shuffle compiles single-input image models")
    input_name, file_shape = next(iter(inputs.items()))
    shape = tuple(input_shape) if input_shape is not None else file_shape
    if shape is None or any(d is None for d in shape):
        raise UserError(f"{path}: input {input_name!r} has a dynamic shape {file_shape}; pass --input-shape N,C,H,W")
    _check_supported_ops(model, path)
    try:
        mod = tvm_compat.from_onnx(model, shape_dict={input_name: list(shape)}, keep_params_in_input=False)
    except Exception as err:
        raise UserError(f"TVM could not import {path}: {_first_line(err)}") from None
    return Imported(mod=mod, name=path.stem, source="onnx", input_name=input_name, input_shape=shape,
                    input_dtype=_onnx_dtype(model))


def load(*, model: str | None = None, onnx: str | None = None, torch: str | None = None,
         weights: str | None = None, input_shape: Sequence[int] | None = None) -> Imported:
    """Dispatch on exactly one of the CLI's model sources."""
    given = [k for k, v in (("--model", model), ("--onnx", onnx), ("--torch", torch)) if v]
    if len(given) != 1:
        raise UserError("give exactly one of --model NAME, --onnx FILE, --torch FILE.pt2")
    if weights and not model:
        raise UserError("--weights applies to zoo models (--model); bake weights into ONNX/.pt2 files instead")
    if model:
        return from_zoo(model, weights=weights, input_shape=input_shape)
    if onnx:
        return from_onnx_file(onnx, input_shape=input_shape)
    return from_pt2(torch, input_shape=input_shape)


def _export(module, example):
    import torch

    try:
        return torch.export.export(module, (example,))
    except Exception as err:
        raise UserError(f"torch.export failed for input shape {tuple(example.shape)}: {_first_line(err)}") from None


def _from_program(program, *, name: str, source: str) -> Imported:
    from tvm_shuffle import tvm_compat

    shapes = _placeholder_shapes(program)
    if len(shapes) != 1:
        raise UserError(f"{name} takes {len(shapes)} inputs; tvm_shuffle compiles single-input image models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mod = tvm_compat.from_exported_program(program, keep_params_as_input=False)
        except Exception as err:
            raise UserError(f"TVM could not import {name}: {_first_line(err)}") from None
    input_name = mod["main"].params[0].name
    return Imported(mod=mod, name=name, source=source, input_name=input_name, input_shape=shapes[0])


def _placeholder_shapes(program) -> list[tuple[int, ...]]:
    user_inputs = set(program.graph_signature.user_inputs)
    return [tuple(int(d) for d in node.meta["val"].shape)
            for node in program.graph.nodes if node.op == "placeholder" and node.name in user_inputs]


def _graph_inputs(model) -> dict[str, tuple[int | None, ...] | None]:
    initializers = {init.name for init in model.graph.initializer}
    inputs = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        inputs[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims) if dims else None
    return inputs


def _onnx_dtype(model) -> str:
    import onnx

    elem = model.graph.input[0].type.tensor_type.elem_type
    return str(onnx.helper.tensor_dtype_to_np_dtype(elem))


def _check_supported_ops(model, path: Path) -> None:
    """Name every operator TVM's ONNX importer lacks, before it fails on the first."""
    from tvm_shuffle import tvm_compat

    known = tvm_compat.onnx_supported_ops()
    missing = sorted({node.op_type for node in model.graph.node if node.op_type not in known})
    if missing:
        raise UserError(f"{path}: ONNX operator(s) not supported by TVM's importer: {', '.join(missing)}")


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    return path


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
