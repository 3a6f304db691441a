"""Quantized (QDQ) models: their own scales and zero points make the int8 build; no calibration runs.

A QDQ model (what ``onnxruntime.quantization.quantize_static`` writes, and
what :mod:`tvm_shuffle.onnx_quant` makes of QLinearConv, QLinearMatMul and
ConvInteger) says how each tensor is quantized with QuantizeLinear /
DequantizeLinear pairs, which TVM's ONNX importer turns into
``relax.quantize`` / ``relax.dequantize`` calls and its legalization into
float math: every tensor rounded to 8 bits and back, the convolutions fp32.
:func:`rewrite_qdq` runs on the imported module before anything folds
constants (``FoldConstant`` would turn ``dequantize(s8 weights)`` into fp32
weights and lose them):

1. **int8 convolutions**: ``conv2d(dequantize(quantize(x, s_x, zp_x), s, zp_x),
   dequantize(W_q, s_w[o]))`` for every conv2d that
   :func:`tvm_shuffle.schedules.int8.pointwise_conv2d` computes (dense 1x1,
   stride 1, NCHW) becomes the form :func:`tvm_shuffle.quantize.quantize_convs`
   writes (:func:`tvm_shuffle.quantize.s8_conv`): the model's s8 weights
   (weights with a zero point are shifted by it when they still fit s8), and
   the input's u8 quantization ``InputQuant(s_x, zp_x)`` in the table the
   kernels read. An s8 activation is the same arithmetic shifted by 128 into
   u8: ``clamp(round(x / s) + zp, -128, 127) + 128 = clamp(round(x / s) + zp + 128, 0, 255)``.
   A fully connected layer ``matmul(dequantize(quantize(x)), W)`` on a 2-D
   input with dequantized constant weights (the classifier: a Gemm's
   transposed ``W``, or QLinearMatMul's per-column one) becomes the
   :mod:`tvm_shuffle.schedules.int8_dense` kernel the same way
   (:func:`tvm_shuffle.quantize.s8_dense`).
2. **Every other Q/DQ pair** (fake quantization around operators without an
   int8 kernel: depthwise convolutions, the stem, the classifier, pooling,
   concats, reshapes) is dropped, so those operators run in fp32 on unrounded
   values, but not its clamp: ``quantize_static`` removes a ReLU after a
   convolution when the quantized range starts at 0, so the clamp to the
   8-bit range ``[(q_min - zp) s, (q_max - zp) s]`` is that ReLU (and the
   saturation at the top). On a value that reshapes, transposes, slices,
   concats or max pooling copy from clamped values, the clamp goes too when
   its lower bound cuts nothing (those clamps' lower bounds are within half
   a step of it): its upper bound then only cuts values above the largest
   the model's calibration saw there, which the clamps upstream already
   bound by their own calibrated maxima. So the channel-shuffle fusion sees
   the plain concat -> reshape -> transpose -> reshape -> split it removes.
   Within the calibrated ranges, outputs then differ from ONNX Runtime's by
   the rounding to each dropped pair's grid (at most half a step per pair).
3. **Constants**: ``dequantize`` / ``quantize`` of constants (the weights of
   the fp32 operators, the int32 biases) are computed here, with ONNX's
   semantics (``(q - zp) * s`` in fp32; round half to even and saturate).

What is left (a ``dequantize`` of a tensor no ``quantize`` made, such as
a dynamically quantized one, or a pair whose parameters are not constants)
runs as TVM lowers it and is listed (:attr:`ModelQuantization.fake`).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from tvm_shuffle.quantize import fp32_operators, s8_conv, s8_dense
from tvm_shuffle.relax_rewrite import is_op_call, rewrite_calls
from tvm_shuffle.schedules import int8
from tvm_shuffle.tvm_compat import Constant, relax, tvm

QUANTIZE = "relax.quantize"
DEQUANTIZE = "relax.dequantize"
# Operators whose every output value is one of their input's values: a clamp's range passes through them.
VALUE_PRESERVING = frozenset({"relax.reshape", "relax.permute_dims", "relax.strided_slice", "relax.split",
                              "relax.squeeze", "relax.expand_dims", "relax.flatten", "relax.nn.max_pool2d",
                              "relax.take"})
# How far (in quantization steps of a pair) a value may pass the bottom of its range before the pair's clamp is kept.
CLAMP_SLACK = 0.5
# u8 zero point of an activation type, added to the model's zero point (s8 activations shift into u8).
U8_SHIFT = {"uint8": 0, "int8": 128}


@dataclasses.dataclass
class ModelQuantization:
    """The quantization a QDQ model carries; :func:`rewrite_qdq` fills it in (the counterpart of ``quantize.Calibration``).

    ``requested`` is the precision the build was asked for (the default,
    fp32, builds a quantized model in int8 too: it is what the file says).
    """

    requested: str = "int8"
    table: dict = dataclasses.field(default_factory=dict)  # schedules.int8.InputQuantTable
    int8_convs: int = 0
    int8_dense: int = 0  # fully connected layers (the classifier)
    clamps: int = 0  # Q/DQ pairs that became a clamp to their 8-bit range
    dropped: int = 0  # Q/DQ pairs on data movement whose clamp went too
    fp32_ops: list = dataclasses.field(default_factory=list)
    fake: list = dataclasses.field(default_factory=list)  # quantize/dequantize left to TVM's float lowering

    def describe(self) -> dict:
        """What the manifest records: the quantization's source is the model, not a calibration set."""
        return {"source": "model", "format": "QDQ", "requested": self.requested, "int8_convs": self.int8_convs,
                "int8_dense": self.int8_dense, "qdq_pairs_dropped": self.clamps + self.dropped, "fp32_ops": list(self.fp32_ops),
                **({"fake_quantization_kept": list(self.fake)} if self.fake else {})}

    def summary(self) -> str:
        """The lines ``-v`` prints."""
        lines = [f"int8: {self.int8_convs} 1x1 convolutions and {self.int8_dense} fully connected layer(s) "
                 "(u8 x s8 -> s32) with the model's own scales and zero points (QDQ; no calibration)",
                 f"  fake quantization dropped: {self.clamps + self.dropped} Q/DQ pairs ({self.clamps} kept as a "
                 f"clamp to their 8-bit range, {self.dropped} on data movement from clamped values)"]
        if self.fp32_ops:
            lines.append("  stay fp32 (no int8 kernel): " + ", ".join(self.fp32_ops))
        if self.fake:
            lines.append("  kept as fake quantization (TVM's float lowering): " + ", ".join(self.fake))
        return "\n".join(lines)


def carries_quantization(mod: "tvm.IRModule") -> bool:
    """Whether ``main`` quantizes a tensor (a QDQ model: it says how, so it builds int8 from that)."""
    found = []

    def visit(expr):
        if is_op_call(expr, QUANTIZE):
            found.append(expr)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return bool(found)


@dataclasses.dataclass(frozen=True)
class _Params:
    """Constant quantization parameters of one quantize/dequantize call."""

    scale: np.ndarray  # float32, () or (C,)
    zero_point: np.ndarray  # the quantized type, () or (C,)
    axis: int
    dtype: str  # the quantized type

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1 and self.zero_point.size == 1

    def same_as(self, other: "_Params") -> bool:
        return (self.dtype == other.dtype and self.scale.shape == other.scale.shape
                and np.array_equal(self.scale, other.scale)
                and np.array_equal(self.zero_point.astype(np.int64), other.zero_point.astype(np.int64))
                and (self.per_tensor or self.axis == other.axis))


def _op(expr, lookup, name: str):
    """The call of operator ``name`` that ``expr`` is or that the variable ``expr`` is bound to, else None."""
    for _ in range(8):  # through var-to-var bindings
        if not isinstance(expr, relax.Var):
            break
        bound = lookup(expr)
        if bound is None:
            return None
        expr = bound
    if is_op_call(expr, name):
        return expr
    return None


def _constant(expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, Constant) else None


def _params(call) -> _Params | None:
    """The constant scale and zero point of a quantize or dequantize call (None when either is computed)."""
    scale, zero_point = _constant(call.args[1]), _constant(call.args[2])
    if scale is None or zero_point is None:
        return None
    dtype = str(call.attrs.out_dtype) if call.op.name == QUANTIZE else str(call.args[0].ty.dtype)
    return _Params(scale.astype(np.float32), zero_point, int(call.attrs.axis), dtype)


def _along(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """Per-channel ``values`` shaped to broadcast along ``axis`` of an ``ndim`` tensor (a scalar stays one)."""
    if values.size == 1:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = values.size
    return values.reshape(shape)


# ---------------------------------------------------------------------------
# 1. int8 convolutions


def _quantized_input(expr, lookup) -> tuple | None:
    """``(x, InputQuant, dequantize scale)`` when ``expr`` is ``dequantize(quantize(x))`` to 8 bits per tensor.

    The dequantize may use another scale (ConvInteger's is 1) but the same
    zero point: the kernel's sums are then multiplied by its scale.
    """
    dq = _op(expr, lookup, DEQUANTIZE)
    q = None if dq is None else _op(dq.args[0], lookup, QUANTIZE)
    if q is None:
        return None
    qp, dqp = _params(q), _params(dq)
    if qp is None or dqp is None or not (qp.per_tensor and dqp.per_tensor) or qp.dtype not in U8_SHIFT:
        return None
    if int(qp.zero_point.reshape(())) != int(dqp.zero_point.reshape(())) or str(q.args[0].ty.dtype) != "float32":
        return None
    zero_point = int(qp.zero_point.reshape(())) + U8_SHIFT[qp.dtype]
    return q.args[0], int8.InputQuant(float(qp.scale.reshape(())), zero_point), float(dqp.scale.reshape(()))


def _quantized_weight(expr, lookup, out_channels: int, axis: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """``(s8 weights, per-output-channel scales)`` when ``expr`` is ``dequantize`` of constant 8-bit weights.

    ``axis`` is the output channels' (a per-channel scale must be along it).
    A weight zero point is subtracted here; weights that then leave the s8
    range (u8 weights far from their zero point) are not int8-able.
    """
    dq = _op(expr, lookup, DEQUANTIZE)
    if dq is None:
        return None
    weight, params = _constant(dq.args[0]), _params(dq)
    if weight is None or params is None or weight.dtype not in (np.int8, np.uint8):
        return None
    if not params.per_tensor and (params.axis % weight.ndim != axis or params.scale.size != out_channels
                                  or params.zero_point.size not in (1, out_channels)):
        return None
    shifted = weight.astype(np.int32) - _along(params.zero_point.astype(np.int32), axis, weight.ndim)
    if shifted.min(initial=0) < -128 or shifted.max(initial=0) > 127:
        return None
    scales = np.broadcast_to(params.scale.reshape(-1).astype(np.float64), (out_channels,))
    return shifted.astype(np.int8), scales


def _dense_weight(expr, lookup, out_features: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A matmul's K x O weights as ``(s8 O x K, per-output scales)``: ``permute_dims(dequantize(O x K))`` or ``dequantize(K x O)``."""
    transpose = _op(expr, lookup, "relax.permute_dims")
    if transpose is not None:
        axes = transpose.attrs.axes
        if axes is not None and [int(a) for a in axes] != [1, 0]:
            return None
        return _quantized_weight(transpose.args[0], lookup, out_features, axis=0)
    found = _quantized_weight(expr, lookup, out_features, axis=1)
    return None if found is None else (np.ascontiguousarray(found[0].T), found[1])


def _int8_plan(call, lookup) -> tuple | None:
    """``(x, s8 weights, multiplier, InputQuant)`` for a conv2d of quantized input and weights that the int8 kernel computes."""
    if not is_op_call(call, "relax.nn.conv2d"):
        return None
    attrs = call.attrs
    if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or attrs.out_layout not in ("NCHW", ""):
        return None
    shape = call.args[1].ty.shape
    if shape is None or not int8.is_pointwise(shape.values, attrs.strides, attrs.padding, attrs.dilation,
                                                int(attrs.groups)):
        return None
    out_channels = int(shape.values[0])
    data, weight = _quantized_input(call.args[0], lookup), _quantized_weight(call.args[1], lookup, out_channels)
    if data is None or weight is None:
        return None
    x, quant, data_scale = data
    weight_q, weight_scale = weight
    return x, weight_q, data_scale * weight_scale, quant


def _dense_plan(call, lookup) -> tuple | None:
    """``(x, s8 O x K weights, per-output scales, InputQuant, dequantize scale)`` for a fully connected layer of quantized input and weights."""
    if not is_op_call(call, "relax.matmul"):
        return None
    data, weight = call.args
    if data.ty.ndim != 2 or weight.ty.ndim != 2 or str(call.ty.dtype) != "float32":
        return None
    quantized = _quantized_input(data, lookup)
    found = _dense_weight(weight, lookup, int(weight.ty.shape.values[1]))
    if quantized is None or found is None:
        return None
    x, quant, data_scale = quantized
    return x, found[0], found[1], quant, data_scale


def _int8_convs(mod: "tvm.IRModule", quantization: ModelQuantization) -> "tvm.IRModule":
    """Step 1: the int8-able convolutions and fully connected layers in the form of ``quantize.quantize_convs``.

    The convolutions' input quantization goes in the table (the dense kernel takes its own as an argument).
    """
    func = mod["main"]
    var2val = relax.analysis.get_var2val(func)
    plans = []

    def collect(expr):
        if isinstance(expr, relax.Call):
            plans.append(_int8_plan(expr, var2val.get))

    relax.analysis.post_order_visit(func.body, collect)
    quants = collections.defaultdict(set)
    for plan in filter(None, plans):
        quants[int8.fingerprint(plan[1])].add(plan[3])
    # Two convolutions with the same s8 weights and different inputs cannot be told apart by the kernel: both stay fp32.
    table = {key: next(iter(found)) for key, found in quants.items() if len(found) == 1}
    quantization.table.update(table)

    def rewrite(call, builder):
        dense = _dense_plan(call, builder.lookup_binding)
        if dense is not None:
            x, weight_q, weight_scale, quant, data_scale = dense
            quantization.int8_dense += 1
            out = s8_dense(x, weight_q, quant, weight_scale, builder)
            # The kernel's sums times s_x s_w; a dequantize with another scale (s') wants them times s' s_w.
            return out if data_scale == quant.scale else relax.op.multiply(out, relax.const(
                np.float32(data_scale / quant.scale)))
        plan = _int8_plan(call, builder.lookup_binding)
        if plan is None:
            return call
        x, weight_q, multiplier, quant = plan
        if int8.fingerprint(weight_q) not in table:
            return call
        quantization.int8_convs += 1
        return s8_conv(x, weight_q, call.attrs, multiplier, quant.zero_point)

    return rewrite_calls(mod, rewrite)


# ---------------------------------------------------------------------------
# 2. and 3. the other pairs, constants


def _interval(expr, lookup, depth: int = 0) -> tuple[float, float] | None:
    """Bounds every value of ``expr`` is known to lie in (from clamps, through value-preserving operators), else None."""
    if depth > 256:
        return None
    if isinstance(expr, relax.Var):
        bound = lookup(expr)
        return None if bound is None else _interval(bound, lookup, depth + 1)
    if isinstance(expr, relax.TupleGetItem):
        return _interval(expr.tuple_value, lookup, depth + 1)
    if isinstance(expr, relax.Tuple):
        parts = [_interval(field, lookup, depth + 1) for field in expr.fields]
        if not parts or None in parts:
            return None
        return min(p[0] for p in parts), max(p[1] for p in parts)
    if not (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)):
        return None
    name = expr.op.name
    if name == "relax.clip":
        low, high = (float(getattr(arg.value, "value", arg.value)) for arg in expr.args[1:3])  # PrimValue(FloatImm)
        inner = _interval(expr.args[0], lookup, depth + 1)
        return (low, high) if inner is None else (max(low, inner[0]), min(high, inner[1]))
    if name in VALUE_PRESERVING or name == "relax.concat":
        return _interval(expr.args[0], lookup, depth + 1)
    if name == "relax.nn.relu":
        inner = _interval(expr.args[0], lookup, depth + 1)
        return None if inner is None else (max(inner[0], 0.0), max(inner[1], 0.0))
    return None


def _range(params: _Params) -> tuple[np.ndarray, np.ndarray]:
    """The real values the 8-bit (or other integer) grid of ``params`` spans: ``[(q_min - zp) s, (q_max - zp) s]``."""
    info = np.iinfo(params.dtype)
    zero_point = params.zero_point.astype(np.float64)
    scale = params.scale.astype(np.float64)
    return (info.min - zero_point) * scale, (info.max - zero_point) * scale


def _unquantized(q, dq, builder, quantization: ModelQuantization):
    """``dequantize(quantize(x))`` without the rounding: ``x`` clamped to the pair's range (then rescaled if the two differ)."""
    qp, dqp = _params(q), _params(dq)
    if qp is None or dqp is None or not np.issubdtype(np.dtype(qp.dtype), np.integer) or qp.dtype != dqp.dtype:
        return None
    if not (qp.per_tensor or dqp.per_tensor or qp.axis == dqp.axis):
        return None
    x = q.args[0]
    ndim = x.ty.ndim
    low, high = _range(qp)
    if qp.per_tensor:
        known = _interval(x, builder.lookup_binding)
        slack = CLAMP_SLACK * float(qp.scale.reshape(()))
        if known is not None and known[0] >= float(low) - slack:
            quantization.dropped += 1
            clamped = x
        else:
            quantization.clamps += 1
            clamped = relax.op.clip(x, float(low), float(high))
    else:
        quantization.clamps += 1
        dtype = str(x.ty.dtype)
        clamped = relax.op.minimum(relax.op.maximum(x, relax.const(_along(low, qp.axis, ndim).astype(dtype))),
                                   relax.const(_along(high, qp.axis, ndim).astype(dtype)))
    if qp.same_as(dqp):
        return clamped
    # dequantize(q, s', zp') of q = x / s + zp: x * s' / s + (zp - zp') s'.
    dq_axis = dqp.axis if not dqp.per_tensor else qp.axis
    ratio = _along(dqp.scale.astype(np.float64), dq_axis, ndim) / _along(qp.scale.astype(np.float64), qp.axis, ndim)
    shift = ((_along(qp.zero_point.astype(np.float64), qp.axis, ndim)
              - _along(dqp.zero_point.astype(np.float64), dq_axis, ndim))
             * _along(dqp.scale.astype(np.float64), dq_axis, ndim))
    dtype = str(dq.ty.dtype)
    return relax.op.add(relax.op.multiply(clamped, relax.const(np.asarray(ratio, dtype))),
                        relax.const(np.asarray(shift, dtype)))


def dequantize_constant(values: np.ndarray, params: _Params, dtype: str = "float32") -> np.ndarray:
    """ONNX DequantizeLinear of a constant: ``(q - zp) * s``, the difference exact, the product in ``dtype``."""
    axis = params.axis
    difference = values.astype(np.int64) - _along(params.zero_point.astype(np.int64), axis, values.ndim)
    return (difference.astype(dtype) * _along(params.scale.astype(dtype), axis, values.ndim)).astype(dtype)


def quantize_constant(values: np.ndarray, params: _Params) -> np.ndarray:
    """ONNX QuantizeLinear of a constant: ``saturate(round_half_even(x / s) + zp)``."""
    axis = params.axis
    scaled = np.rint(values.astype(np.float32) / _along(params.scale, axis, values.ndim))
    info = np.iinfo(params.dtype)
    shifted = scaled.astype(np.float64) + _along(params.zero_point.astype(np.float64), axis, values.ndim)
    return np.clip(shifted, info.min, info.max).astype(params.dtype)


def _drop_pairs(mod: "tvm.IRModule", quantization: ModelQuantization) -> "tvm.IRModule":
    """Steps 2 and 3: every other Q/DQ pair as a clamp (or nothing), quantize/dequantize of constants computed."""

    def rewrite(call, builder):
        if not isinstance(call.op, tvm.ir.Op) or call.op.name not in (QUANTIZE, DEQUANTIZE):
            return call
        params = _params(call)
        values = _constant(call.args[0])
        if params is not None and values is not None and np.issubdtype(np.dtype(params.dtype), np.integer):
            if call.op.name == DEQUANTIZE:
                return relax.const(dequantize_constant(values, params, str(call.ty.dtype)))
            return relax.const(quantize_constant(values, params))
        if call.op.name == DEQUANTIZE:
            q = _op(call.args[0], builder.lookup_binding, QUANTIZE)
            if q is not None:
                unquantized = _unquantized(q, call, builder, quantization)
                if unquantized is not None:
                    return unquantized
        return call

    return rewrite_calls(mod, rewrite)


def _left_over(mod: "tvm.IRModule") -> list[str]:
    """The quantize/dequantize calls still in ``main``, counted: ``dequantize (2)``."""
    counts: collections.Counter = collections.Counter()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in (QUANTIZE, DEQUANTIZE):
            counts[expr.op.name.removeprefix("relax.")] += 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return [f"{name} ({n})" for name, n in sorted(counts.items())]


def rewrite_qdq(mod: "tvm.IRModule", quantization: ModelQuantization) -> "tvm.IRModule":
    """``mod`` (an imported QDQ model) with int8 convolutions and its other Q/DQ pairs dropped; fills ``quantization``.

    Runs before constant folding (see the module docstring); the result is
    what ``quantize.quantize_convs`` makes of a float model, so the
    channel-shuffle fusion and ``passes.lower_int8_convs`` take it from
    there under ``int8.using_table(quantization.table)``.
    """
    simplify = tvm.transform.Sequential([relax.transform.CanonicalizeBindings(),
                                         relax.transform.DeadCodeElimination()])
    mod = simplify(_int8_convs(mod, quantization))  # the pairs only int8 convolutions read go with them
    mod = simplify(_drop_pairs(mod, quantization))
    quantization.fake = _left_over(mod)
    quantization.fp32_ops = fp32_operators(mod)
    return mod


__all__ = ["ModelQuantization", "carries_quantization", "rewrite_qdq", "dequantize_constant", "quantize_constant"]
