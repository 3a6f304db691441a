"""Quantized ONNX operators rewritten as the QDQ form: DequantizeLinear -> Conv / MatMul -> QuantizeLinear.

TVM's ONNX importer has no QLinearConv, QLinearMatMul or ConvInteger. Each
is, by ONNX's definition, its float operator between dequantized inputs and
a quantized output; written that way, :mod:`tvm_shuffle.qdq` makes the
convolutions int8 kernels as it does for any QDQ model (and runs the rest in
fp32):

* ``QLinearConv(x, s_x, zp_x, w, s_w, zp_w, s_y, zp_y, B)`` =
  ``Q(Conv(DQ(x, s_x, zp_x), DQ(w, s_w, zp_w, axis 0), DQ(B, s_x * s_w, 0, axis 0)), s_y, zp_y)``:
  the int32 bias is in units of ``s_x * s_w[o]``.
* ``QLinearMatMul(a, s_a, zp_a, b, s_b, zp_b, s_y, zp_y)`` =
  ``Q(MatMul(DQ(a, s_a, zp_a), DQ(b, s_b, zp_b)), s_y, zp_y)``, a per-column
  ``s_b`` on ``b``'s last axis.
* ``Cast<float>(ConvInteger(x, w, zp_x, zp_w))`` = ``Conv(DQ(x, 1, zp_x), DQ(w, 1, zp_w, axis 0))``:
  the sums of integer products are integers, exact in fp32 below 2^24. (A
  ConvInteger whose int32 result is read as integers is refused: the int8
  kernel's epilogue cannot take TVM's float-to-int cast.)

MatMulInteger stays as it is: TVM's importer computes it in integers itself.
Other quantized operators (ONNX Runtime's ``com.microsoft`` QLinearAdd,
QLinearConcat, QGemm, ...) are named by :func:`unsupported` so the import
fails with one sentence.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Operators rewritten here (default domain), and MatMulInteger, which TVM imports itself.
LOWERED = ("QLinearConv", "QLinearMatMul", "ConvInteger")
IMPORTED = ("MatMulInteger",)
DEFAULT_DOMAINS = ("", "ai.onnx")
# Per-axis DequantizeLinear (the weights' per-channel scales) needs opset 13.
PER_AXIS_OPSET = 13


def _is_quantized_op(node) -> bool:
    name = node.op_type
    return (name.startswith(("QLinear", "QGemm", "QAttention", "QOrdered", "DynamicQuantize"))
            or name.endswith(("Integer", "Integer16")) or name in ("QuantizeLinear", "DequantizeLinear"))


def unsupported(model, known: frozenset) -> list[str]:
    """The quantized operators of ``model`` that neither this module nor TVM's importer reads (``QLinearAdd (com.microsoft)``)."""
    found = set()
    for node in model.graph.node:
        default = node.domain in DEFAULT_DOMAINS
        if not _is_quantized_op(node) or (default and (node.op_type in LOWERED or node.op_type in known)):
            continue
        found.add(node.op_type if default else f"{node.op_type} ({node.domain})")
    return sorted(found)


class Unsupported(ValueError):
    """A quantized operator used in a way this module does not rewrite; the message says which and why."""


class _Graph:
    """New nodes and initializers for one rewrite, with names no tensor of the model has."""

    def __init__(self, model):
        self.taken = {name for node in model.graph.node for name in (*node.input, *node.output, node.name)}
        self.taken |= {init.name for init in model.graph.initializer}
        self.taken |= {value.name for value in model.graph.input}
        self.initializers = {init.name: init for init in model.graph.initializer}
        self.nodes: list = []
        self.new_initializers: list = []
        self.per_axis = False
        self._counter = itertools.count()
        self.readers: dict = {}  # tensor -> the nodes that read it (None: the graph's output)
        for node in model.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        for value in model.graph.output:
            self.readers.setdefault(value.name, []).append(None)
        self.skip: set = set()  # ids of nodes a rewrite made redundant

    def name(self, hint: str) -> str:
        while True:
            candidate = f"{hint}__q{next(self._counter)}"
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate

    def constant(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        init = numpy_helper.from_array(np.asarray(value), name)
        self.new_initializers.append(init)
        self.initializers[name] = init
        return name

    def value(self, name: str) -> np.ndarray | None:
        init = self.initializers.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def node(self, op_type: str, inputs: list, hint: str, *, output: str | None = None, **attrs) -> str:
        output = output or self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=self.name(f"{hint}_{op_type}"), **attrs))
        return output

    def dequantize(self, tensor: str, scale: str, zero_point: str, hint: str, *, axis: int | None = None) -> str:
        """DequantizeLinear of ``tensor`` (an empty ``zero_point``: none); ``axis`` for a per-channel scale."""
        per_axis = axis is not None and self._is_vector(scale)
        self.per_axis |= per_axis
        inputs = [tensor, scale] + ([zero_point] if zero_point else [])
        return self.node("DequantizeLinear", inputs, hint, **({"axis": axis} if per_axis else {}))

    def _is_vector(self, name: str) -> bool:
        value = self.value(name)
        return value is None or value.size > 1  # a computed scale: say the axis (it is right for a vector too)


def _attributes(node) -> dict:
    return {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _qlinear_conv(node, g: _Graph) -> None:
    hint = node.output[0]
    x = g.dequantize(node.input[0], node.input[1], node.input[2], f"{hint}_x")
    w = g.dequantize(node.input[3], node.input[4], node.input[5], f"{hint}_w", axis=0)
    inputs = [x, w]
    bias = _input(node, 8)
    if bias:
        x_scale, w_scale = g.value(node.input[1]), g.value(node.input[4])
        if x_scale is not None and w_scale is not None:
            # Both constant: the product in fp32, as a QLinearConv kernel computes it.
            bias_scale = g.constant(f"{hint}_bias_scale", x_scale.astype(np.float32) * w_scale.astype(np.float32))
        else:
            bias_scale = g.node("Mul", [node.input[1], node.input[4]], f"{hint}_bias_scale")
        inputs.append(g.dequantize(bias, bias_scale, "", f"{hint}_bias", axis=0))  # int32, zero point 0
    y = g.node("Conv", inputs, f"{hint}_conv", **_attributes(node))
    g.node("QuantizeLinear", [y, node.input[6], node.input[7]], hint, output=node.output[0])


def _qlinear_matmul(node, g: _Graph) -> None:
    """A per-row ``s_a`` is on ``a``'s second-to-last axis, a per-column ``s_b`` on ``b``'s last."""
    hint = node.output[0]
    a, b = (g.value(node.input[i]) for i in (0, 3))
    a = g.dequantize(node.input[0], node.input[1], node.input[2], f"{hint}_a",
                     axis=-2 if a is None else a.ndim - 2)
    b = g.dequantize(node.input[3], node.input[4], node.input[5], f"{hint}_b",
                     axis=-1 if b is None else b.ndim - 1)
    y = g.node("MatMul", [a, b], f"{hint}_matmul")
    g.node("QuantizeLinear", [y, node.input[6], node.input[7]], hint, output=node.output[0])


def _conv_integer(node, g: _Graph) -> None:
    """The sums are the int32 ones in fp32, which the Cast to float that must be their only reader reads as they are."""
    hint = node.output[0]
    x_zero, w_zero = _input(node, 2), _input(node, 3)
    x = g.dequantize(node.input[0], g.constant(f"{hint}_one", np.float32(1.0)), x_zero, f"{hint}_x")
    w_zero_value = g.value(w_zero) if w_zero else None
    ones = np.ones(w_zero_value.shape if w_zero_value is not None else (), np.float32)  # the scale has the zero point's shape
    w = g.dequantize(node.input[1], g.constant(f"{hint}_ones", ones), w_zero, f"{hint}_w", axis=0)
    readers = g.readers.get(node.output[0], [])
    if not (len(readers) == 1 and getattr(readers[0], "op_type", "") == "Cast"
            and _attributes(readers[0]).get("to") == TensorProto.FLOAT):
        raise Unsupported(f"ConvInteger {node.name or hint}: its int32 sums are read as integers; tvm_shuffle "
                          "imports a ConvInteger whose result is cast to float at once (as ONNX Runtime's "
                          "quantizers write it)")
    g.skip.add(id(readers[0]))
    g.node("Conv", [x, w], f"{hint}_conv", output=readers[0].output[0], **_attributes(node))


_REWRITES = {"QLinearConv": _qlinear_conv, "QLinearMatMul": _qlinear_matmul, "ConvInteger": _conv_integer}


def lower(model):
    """``model`` with every QLinearConv, QLinearMatMul and ConvInteger in the QDQ form (the model itself when it has none)."""
    if not any(node.op_type in _REWRITES and node.domain in DEFAULT_DOMAINS for node in model.graph.node):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = _Graph(model)
    for node in model.graph.node:
        rewrite = _REWRITES.get(node.op_type) if node.domain in DEFAULT_DOMAINS else None
        if rewrite is None:
            g.nodes.append(node)
        else:
            rewrite(node, g)
    del model.graph.node[:]
    model.graph.node.extend(node for node in g.nodes if id(node) not in g.skip)
    model.graph.initializer.extend(g.new_initializers)
    opset = next((o for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)
    if g.per_axis and opset is not None and opset.version < PER_AXIS_OPSET:
        from onnx import version_converter

        model = version_converter.convert_version(model, PER_AXIS_OPSET)
    return model


__all__ = ["LOWERED", "IMPORTED", "Unsupported", "lower", "unsupported"]
