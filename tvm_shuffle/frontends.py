"""Import: zoo names, PyTorch modules, ``torch.export`` programs and ONNX models -> Relax.

Every importer returns an :class:`Imported`: the Relax module with weights as
constants (so they end up inside the exported library) and the static input
signature the runtime checks against. :func:`import_model` takes any of the
sources the Python API accepts and dispatches on its type.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

from tvm_shuffle.defaults import INPUT_SHAPE
from tvm_shuffle.errors import UserError


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
    return dataclasses.replace(from_torch_module(module, input_shape or INPUT_SHAPE, name=name),
                               source="zoo")


def from_torch_module(module, input_shape: Sequence[int] | None = None, *, example_inputs=None,
                      name: str = "model") -> Imported:
    """Export an ``nn.Module`` with ``torch.export`` for one input (``example_inputs`` or a random one of ``input_shape``)."""
    import torch

    if example_inputs is not None:
        examples = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        if len(examples) != 1:
            raise UserError(f"example_inputs holds {len(examples)} inputs; tvm_shuffle compiles single-input "
                            "image models")
        example = torch.as_tensor(examples[0])
        if input_shape is not None and tuple(input_shape) != tuple(example.shape):
            raise UserError(f"input_shape {tuple(input_shape)} does not match example_inputs' shape "
                            f"{tuple(example.shape)}; give one of them")
    elif input_shape is not None:
        example = torch.randn(*input_shape)
    else:
        raise UserError("a torch.nn.Module needs example_inputs=(x,) or input_shape=(N, C, H, W) to be exported")
    with torch.no_grad():
        program = _export(module.eval(), example)
    return _from_program(program, name=name, source="torch")


def from_exported_program(program, *, name: str = "model", input_shape: Sequence[int] | None = None) -> Imported:
    """A ``torch.export.ExportedProgram`` (its input shape is fixed at export)."""
    saved_shape = _placeholder_shapes(program)[0]
    if input_shape is not None and tuple(input_shape) != saved_shape:
        # The traced graph bakes shapes into its views, so it cannot be re-traced.
        raise UserError(f"{name} was exported for input shape {saved_shape}, not {tuple(input_shape)}; "
                        "export it again with torch.export for the shape you need")
    return _from_program(program, name=name, source="pt2")


def from_pt2(path: str | os.PathLike, *, input_shape: Sequence[int] | None = None) -> Imported:
    """A program saved with ``torch.export.save`` (its input shape is fixed at export)."""
    import torch

    path = _existing_file(path, "PyTorch program")
    try:
        program = torch.export.load(str(path))
    except Exception as err:  # torch raises many types for a bad archive
        raise UserError(f"{path} is not a torch.export program (.pt2): {_first_line(err)}") from None
    return from_exported_program(program, name=path.stem, input_shape=input_shape)


def from_onnx_file(path: str | os.PathLike, *, input_shape: Sequence[int] | None = None) -> Imported:
    """An ONNX model: what ``torch.onnx.export`` writes (dynamo or classic opsets)."""
    import onnx

    path = _existing_file(path, "ONNX model")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf DecodeError, ...
        raise UserError(f"{path} is not a valid ONNX model: {_first_line(err)}") from None
    return from_onnx_model(model, name=path.stem, input_shape=input_shape, where=str(path))


def from_onnx_model(model, *, name: str = "model", input_shape: Sequence[int] | None = None,
                    where: str | None = None) -> Imported:
    """An ``onnx.ModelProto``; ``where`` names it in errors (its file, by default its name)."""
    import onnx

    from tvm_shuffle import tvm_compat

    path = where or name
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # onnx ValidationError
        raise UserError(f"{path} is not a valid ONNX model: {_first_line(err)}") from None
    inputs = _graph_inputs(model)
    if len(inputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs ({', '.join(inputs)}); tvm_shuffle compiles single-input image models")
    input_name, file_shape = next(iter(inputs.items()))
    shape = tuple(input_shape) if input_shape is not None else file_shape
    if shape is None or any(d is None for d in shape):
        raise UserError(f"{path}: input {input_name!r} has a dynamic shape {file_shape}; pass --input-shape N,C,H,W")
    _check_supported_ops(model, path)
    model = _lower_quantized_ops(model, path)
    model = fold_shape_computations(model, {input_name: shape})
    try:
        mod = tvm_compat.from_onnx(model, shape_dict={input_name: list(shape)}, keep_params_in_input=False)
    except Exception as err:
        raise UserError(f"TVM could not import {path}: {_first_line(err)}") from None
    return Imported(mod=mod, name=name, source="onnx", input_name=input_name, input_shape=shape,
                    input_dtype=_onnx_dtype(model))


def fold_shape_computations(model, input_shapes: dict[str, Sequence[int]]):
    """Evaluate every ONNX node whose inputs are known at compile time.

    Classic exporters compute slice bounds at run time (``Shape -> Gather ->
    Div -> Slice`` for ``chunk``); with a static input shape those are
    constants, and TVM's importer otherwise emits ``dynamic_strided_slice``
    with unknown output shapes that nothing downstream can lower.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper, reference, shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        if value.name in input_shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, input_shapes[value.name]):
                dim.Clear()
                dim.dim_value = int(size)
    model = shape_inference.infer_shapes(model, data_prop=True)
    static = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.input, *model.graph.value_info] if v.type.HasField("tensor_type")}
    known = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    # In a quantized model the int8 weights are the model: the int8 build reads them (tvm_shuffle.qdq).
    quantized = any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    kept = []
    for node in model.graph.node:
        if quantized and node.op_type == "DequantizeLinear":
            kept.append(node)
            continue
        value = _constant_value(node, known, static, np, numpy_helper, reference, onnx)
        if value is None:
            kept.append(node)
        else:
            known.update(zip(node.output, value))
    if len(kept) == len(model.graph.node):
        return model
    used = {name for node in kept for name in node.input} | {o.name for o in model.graph.output}
    del model.graph.node[:]
    model.graph.node.extend(kept)
    del model.graph.initializer[:]
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in known.items() if k in used)
    return model


_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}


def _constant_value(node, known, static, np, numpy_helper, reference, onnx):
    """The outputs of ``node`` when they follow from constants and static shapes, else None."""
    if node.op_type == "Shape" and node.input[0] not in known:
        dims = static.get(node.input[0])
        if not dims or None in dims or node.attribute:  # start/end attributes: leave to TVM
            return None
        return [np.array(dims, dtype=np.int64)]
    if node.op_type in _NONDETERMINISTIC or node.domain not in ("", "ai.onnx"):
        return None
    if any(name and name not in known for name in node.input):
        return None
    inputs = [name for name in node.input if name]
    graph = onnx.helper.make_graph(
        [node], "fold", [],
        [onnx.helper.make_empty_tensor_value_info(o) for o in node.output],
        [numpy_helper.from_array(np.asarray(known[name]), name) for name in inputs])
    try:
        return reference.ReferenceEvaluator(onnx.helper.make_model(graph)).run(None, {})
    except Exception:  # an op the reference evaluator lacks: TVM gets it as it is
        return None


def import_model(model, *, input_shape: Sequence[int] | None = None, example_inputs=None,
                 weights: str | os.PathLike | None = None) -> Imported:
    """Any model source the Python API takes, imported.

    ``model`` is an :class:`Imported` (returned as it is), a zoo name, a path
    to a ``.onnx`` or ``.pt2`` file, a ``torch.nn.Module`` (with
    ``example_inputs`` or ``input_shape``), a ``torch.export.ExportedProgram``
    or an ``onnx.ModelProto``. ``weights`` (a ``state_dict`` file) applies to
    zoo models only.
    """
    input_shape = parse_shape(input_shape)
    if isinstance(model, Imported):
        return model
    if weights is not None and not (isinstance(model, str) and _is_zoo_name(model)):
        raise UserError("weights apply to zoo models; bake the weights into your module, ONNX or .pt2 file instead")
    if isinstance(model, (str, os.PathLike)):
        return _import_named(model, input_shape=input_shape, weights=weights)
    torch = sys.modules.get("torch")  # a module or a program means torch is imported already
    if torch is not None and isinstance(model, torch.nn.Module):
        return from_torch_module(model, input_shape, example_inputs=example_inputs, name=type(model).__name__.lower())
    if torch is not None and isinstance(model, torch.export.ExportedProgram):
        return from_exported_program(model, input_shape=input_shape)
    onnx = sys.modules.get("onnx")
    if onnx is not None and isinstance(model, onnx.ModelProto):
        return from_onnx_model(model, name=model.graph.name or "model", input_shape=input_shape)
    raise UserError(f"cannot compile {type(model).__name__} {model!r:.60}: give a zoo model name, a .onnx or .pt2 path, a "
                    "torch.nn.Module, a torch.export.ExportedProgram or an onnx.ModelProto")


def _is_zoo_name(name: str) -> bool:
    from tvm_shuffle.models import MODELS

    return name in MODELS


def _import_named(model: str | os.PathLike, *, input_shape, weights) -> Imported:
    """A zoo name, a ``.pt2`` program, or an ONNX file (``.onnx``, or any other existing file)."""
    path = Path(model)
    if path.suffix == ".pt2":  # file names first: telling a zoo name imports torch
        return from_pt2(path, input_shape=input_shape)
    if path.suffix == ".onnx":
        return from_onnx_file(path, input_shape=input_shape)
    if isinstance(model, str) and _is_zoo_name(model):
        return from_zoo(model, weights=weights, input_shape=input_shape)
    if path.is_file():
        return from_onnx_file(path, input_shape=input_shape)
    if path.suffix or os.sep in str(model):
        raise UserError(f"{model}: no such file, and not a zoo model name")
    from tvm_shuffle.errors import unknown_name
    from tvm_shuffle.models import MODELS

    raise unknown_name("model", str(model), MODELS)


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

    from tvm_shuffle import onnx_quant

    known = tvm_compat.onnx_supported_ops()
    quantized = onnx_quant.unsupported(model, known)
    if quantized:
        raise UserError(f"{path}: quantized ONNX operator(s) tvm_shuffle cannot import: {', '.join(quantized)}; it "
                        f"reads QDQ models (QuantizeLinear/DequantizeLinear) and {', '.join(onnx_quant.LOWERED)}, "
                        f"{', '.join(onnx_quant.IMPORTED)}")
    missing = sorted({node.op_type for node in model.graph.node
                      if node.op_type not in known and node.op_type not in onnx_quant.LOWERED})
    if missing:
        raise UserError(f"{path}: ONNX operator(s) not supported by TVM's importer: {', '.join(missing)}")


def _lower_quantized_ops(model, path: str):
    """QLinearConv, QLinearMatMul and ConvInteger as the QDQ form TVM's importer reads (:mod:`tvm_shuffle.onnx_quant`)."""
    from tvm_shuffle import onnx_quant

    try:
        return onnx_quant.lower(model)
    except onnx_quant.Unsupported as err:
        raise UserError(f"{path}: {err}") from None
    except Exception as err:  # onnx's version converter, a malformed node
        raise UserError(f"{path}: could not rewrite its quantized operators: {_first_line(err)}") from None


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    return path


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
