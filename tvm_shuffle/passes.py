"""Step 2, graph passes on Relax before lowering to TIR.

``optimize`` is the whole sequence; each pass is usable (and tested) alone.
"""

from __future__ import annotations

import collections
import contextlib
import functools

import numpy as np

from tvm_shuffle import precisions
from tvm_shuffle.defaults import SHUFFLE_MODES
from tvm_shuffle.relax_rewrite import is_op_call, rewrite_calls, rewrite_matches
from tvm_shuffle.tvm_compat import relax, tvm


def _bn_fold_pattern():
    from tvm.relax.dpl import TupleGetItemPattern, is_const, is_op, wildcard

    weight = is_const()
    conv = is_op("relax.nn.conv2d")(wildcard(), weight)
    conv_bias = is_const()
    biased = is_op("relax.add")(conv, conv_bias)
    stats = [is_const() for _ in range(4)]  # gamma, beta, mean, var
    bn = is_op("relax.nn.batch_norm")(conv | biased, *stats)
    return TupleGetItemPattern(bn, 0), conv, weight, conv_bias, bn, stats


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """A constant broadcast along axis 1 of NCHW as a (C,) vector, else None."""
    if value.size == 1:
        return np.full(channels, value.reshape(()), dtype=value.dtype)
    if value.size == channels and value.shape in ((channels,), (1, channels, 1, 1), (channels, 1, 1)):
        return value.reshape(channels)
    return None


def fold_batchnorm(mod: "tvm.IRModule") -> "tvm.IRModule":
    """Fold inference BatchNorm into the preceding conv's weights and bias.

    Matches ``batch_norm(conv2d(x, W))`` (torch.export) and
    ``batch_norm(conv2d(x, W) + b)`` (ONNX Conv with bias), all parameters
    constant, and emits ``conv2d(x, W * s) + b'`` with ``s = gamma /
    sqrt(var + eps)``, ``b' = (b - mean) * s + beta``, computed in float64 so
    the folded model rounds once. Relax's own ``FoldBatchnormToConv2D`` only
    knows the bias-free form.
    """
    mod = relax.transform.FoldConstant()(mod)  # conv biases arrive as reshape(const)
    pattern, conv_p, weight_p, bias_p, bn_p, stats_p = _bn_fold_pattern()

    def rewrite(expr, matches):
        conv = matches[conv_p]
        if conv.attrs.data_layout != "NCHW" or conv.attrs.kernel_layout != "OIHW":
            return expr
        weight = matches[weight_p].value.numpy()
        channels = weight.shape[0]
        gamma, beta, mean, var = (matches[p].value.numpy().astype(np.float64) for p in stats_p)
        bias = np.zeros(channels) if bias_p not in matches else _per_channel(matches[bias_p].value.numpy(), channels)
        if bias is None or any(v.shape != (channels,) for v in (gamma, beta, mean, var)):
            return expr
        bn_attrs = matches[bn_p].attrs
        scale = (gamma if bn_attrs.scale else 1.0) / np.sqrt(var + float(bn_attrs.epsilon))
        shift = (bias - mean) * scale + (beta if bn_attrs.center else 0.0)
        dtype = weight.dtype
        new_weight = (weight.astype(np.float64) * scale.reshape(-1, 1, 1, 1)).astype(dtype)
        new_conv = relax.Call(conv.op, [conv.args[0], relax.const(new_weight)], conv.attrs)
        return relax.op.add(new_conv, relax.const(shift.astype(dtype).reshape(1, channels, 1, 1)))

    return rewrite_matches(mod, pattern, rewrite)


def optimize(mod: "tvm.IRModule", *, shuffle: str = "fused", report=None, precision: str = "fp32",
             calibration=None, tensor_cores: bool = False) -> "tvm.IRModule":
    """Graph passes in order: constant folding, BN folding, channel-shuffle fusion.

    ``report`` (a ``schedules.FusionReport``) is filled in by the fusion when given.
    ``precision="bf16"`` stores the 1x1 convolutions' weights in bf16 before the
    fusion and makes every such convolution a bf16 kernel after it
    (:mod:`tvm_shuffle.schedules.bf16`); ``precision="fp16"`` does the same
    in fp16. With ``tensor_cores`` (CUDA builds) the bf16 and fp16 kernels
    are tensor-core kernels (:mod:`tvm_shuffle.schedules.tensorcore`).
    ``precision="int8"`` calibrates on
    ``calibration`` (a :class:`tvm_shuffle.quantize.Calibration`, which it
    fills in) and quantizes the 1x1 convolutions before the fusion, and
    makes each an int8 kernel (:mod:`tvm_shuffle.schedules.int8`). A
    quantized model's ``calibration`` is a :class:`tvm_shuffle.qdq.ModelQuantization`:
    its int8 convolutions come from its own Q/DQ pairs
    (:func:`tvm_shuffle.qdq.rewrite_qdq`, first, while its weights are still
    s8), and nothing is calibrated.
    """
    if shuffle not in SHUFFLE_MODES:
        raise ValueError(f"shuffle must be one of {SHUFFLE_MODES}, not {shuffle!r}")
    from tvm_shuffle import qdq

    from_model = isinstance(calibration, qdq.ModelQuantization)
    if from_model:
        mod = qdq.rewrite_qdq(mod, calibration)
    elif qdq.carries_quantization(mod):
        raise ValueError("a quantized (QDQ) model builds int8 with its own quantization: "
                         "precision='int8', calibration=tvm_shuffle.qdq.ModelQuantization()")
    seq = tvm.transform.Sequential([relax.transform.FoldConstant(), relax.transform.CanonicalizeBindings()])
    mod = seq(mod)
    mod = fold_batchnorm(mod)
    # Anything BN folding left (a BN not after a conv) becomes elementwise math.
    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod = tvm.transform.Sequential([relax.transform.FoldConstant(), relax.transform.CanonicalizeBindings(),
                                    relax.transform.DeadCodeElimination()])(mod)
    from tvm_shuffle.schedules import fuse_shuffles, report_stock

    weights = precisions.get(precision).weights
    if weights in REDUCED_FLOATS:
        mod = store_weights(mod, weights)
    if precision == "int8":
        from tvm_shuffle import quantize
        from tvm_shuffle.schedules import int8

        if calibration is None:
            raise ValueError("precision='int8' needs a calibration (tvm_shuffle.quantize.load_calibration)")
        if not from_model:
            mod = quantize.quantize_convs(mod, calibration)
        mod = merge_constant_adds(mod)  # the int8 epilogue's zero-point offset and the bias: one add
        with int8.using_table(calibration.table):  # the fused kernels and lower_int8_convs read it
            if shuffle == "fused":
                mod = fuse_shuffles(mod, report)
            elif report is not None:
                report_stock(mod, report)
            return lower_int8_convs(mod)
    from tvm_shuffle.schedules import tensorcore

    with tensorcore.on_tensor_cores() if tensor_cores else contextlib.nullcontext():
        if shuffle == "fused":
            mod = fuse_shuffles(mod, report)
        elif report is not None:
            report_stock(mod, report)
        if weights in REDUCED_FLOATS:
            mod = lower_reduced_float_convs(mod)
    return mod


def merge_constant_adds(mod: "tvm.IRModule") -> "tvm.IRModule":
    """``(x + a) + b`` with constants ``a`` and ``b`` (either operand order) as ``x + (a + b)``.

    The int8 convolutions' epilogue adds the zero point's share and then the
    folded bias, both per output channel: one add per output instead of two.
    Only when ``a + b`` has the shape and dtype of ``a`` (the broadcast of
    ``x`` is unchanged).
    """
    from tvm.relax.dpl import is_const, is_op, wildcard

    x, a, b = wildcard(), is_const(), is_const()
    inner = is_op("relax.add")(x, a) | is_op("relax.add")(a, x)
    pattern = is_op("relax.add")(inner, b) | is_op("relax.add")(b, inner)

    def rewrite(expr, matches):
        first, second = matches[a].value.numpy(), matches[b].value.numpy()
        total = first + second
        if total.shape != first.shape or total.dtype != first.dtype:
            return expr
        return relax.op.add(matches[x], relax.const(total))

    return rewrite_matches(mod, pattern, rewrite)


REDUCED_FLOATS = ("bfloat16", "float16")  # weight dtypes whose 1x1 convolutions get kernels of their own


def store_weights(mod: "tvm.IRModule", dtype: str) -> "tvm.IRModule":
    """Every 1x1 conv2d (NCHW, dense, stride 1, constant weights, even input channels) with its weights in ``dtype``.

    ``dtype`` is one of :data:`REDUCED_FLOATS`. The conv keeps an fp32 input
    and output (``out_dtype``). Runs before the channel-shuffle fusion, which
    carries the weights into the convolutions it rewrites
    (:func:`tvm_shuffle.schedules.kernels.gathered_conv2d` then computes them
    with :func:`tvm_shuffle.schedules.bf16.pointwise_conv2d` or
    :func:`tvm_shuffle.schedules.tensorcore.pointwise_conv2d`).
    """
    import ml_dtypes

    from tvm_shuffle.schedules.bf16 import is_pointwise
    from tvm_shuffle.tvm_compat import Constant

    numpy_dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]

    def convert(call, _builder):
        if not _is_conv(call) or not isinstance(call.args[1], Constant):
            return call
        weight = call.args[1].value.numpy()
        attrs = call.attrs
        if (weight.dtype != np.float32 or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW"
                or attrs.out_layout not in ("NCHW", "")
                or not is_pointwise(weight.shape, attrs.strides, attrs.padding, attrs.dilation, int(attrs.groups))):
            return call
        return relax.op.nn.conv2d(call.args[0], relax.const(weight.astype(numpy_dtype)), strides=attrs.strides,
                                  padding=attrs.padding, dilation=attrs.dilation, groups=attrs.groups,
                                  data_layout="NCHW", kernel_layout="OIHW", out_layout="NCHW", out_dtype="float32")

    return rewrite_calls(mod, convert)


def lower_reduced_float_convs(mod: "tvm.IRModule") -> "tvm.IRModule":
    """The conv2d calls with bf16/fp16 weights that the fusion left as they were, as the kernels the fusion makes of them.

    That is :func:`tvm_shuffle.schedules.bf16.pointwise_conv2d`, or under
    :func:`tvm_shuffle.schedules.tensorcore.on_tensor_cores` (and for fp16
    always) :func:`tvm_shuffle.schedules.tensorcore.pointwise_conv2d`.
    """
    from tvm_shuffle.schedules import bf16, kernels, tensorcore

    def lower(call, builder):
        dtype = str(call.args[1].ty.dtype) if _is_conv(call) else ""
        if dtype not in REDUCED_FLOATS:
            return call
        module = tensorcore if tensorcore.computes(dtype) else bf16
        channels = int(call.args[0].ty.shape.values[1])
        compute = functools.partial(module.pointwise_conv2d, gather=kernels.Segments(((0, channels, 0, 0),)),
                                    out_dtype="float32")
        return builder.call_te(compute, *call.args, primfunc_name_hint=module.CONV)

    return rewrite_calls(mod, lower)


def lower_int8_convs(mod: "tvm.IRModule") -> "tvm.IRModule":
    """The conv2d calls with s8 weights that the fusion left as they were, as :func:`tvm_shuffle.schedules.int8.pointwise_conv2d` kernels.

    Run under :func:`tvm_shuffle.schedules.int8.using_table` (the kernels' input quantization).
    """
    from tvm_shuffle.schedules import int8, kernels

    def lower(call, builder):
        if not _is_conv(call) or str(call.args[1].ty.dtype) != "int8":
            return call
        channels = int(call.args[0].ty.shape.values[1])
        compute = functools.partial(int8.pointwise_conv2d, gather=kernels.Segments(((0, channels, 0, 0),)),
                                    out_dtype="float32")
        return builder.call_te(compute, *call.args, primfunc_name_hint=int8.CONV)

    return rewrite_calls(mod, lower)


def _is_conv(call) -> bool:
    return is_op_call(call, "relax.nn.conv2d")


def pad_depthwise_rows(mod: "tvm.IRModule", row_multiple: int, *, strided_from: int = 0) -> "tvm.IRModule":
    """Depthwise convolutions whose output rows are not a multiple of ``row_multiple`` compute wider rows.

    A lowering step for CPUs (see ``kernels.gathered_conv2d``): the conv is
    replaced by the same sums over rows rounded up, of which the kernel keeps
    the real columns. ``row_multiple`` 1 leaves ``mod`` as it is. A strided
    convolution is widened only when its rows have at least ``strided_from``
    columns (``CPUConstants.strided_row_from``).
    """
    if row_multiple <= 1:
        return mod
    from tvm_shuffle.schedules import kernels
    from tvm_shuffle.schedules.fuse import conv_arguments

    def widen(call, builder):
        if not _is_depthwise_nchw(call) or int(call.ty.shape.values[3]) % row_multiple == 0:
            return call
        strided = any(int(s) > 1 for s in call.attrs.strides)
        if strided and int(call.ty.shape.values[3]) < strided_from:
            return call
        compute = functools.partial(kernels.depthwise_conv2d, row_multiple=row_multiple,
                                    **conv_arguments(call.attrs, call.args[0].ty.dtype))
        return builder.call_te(compute, *call.args, primfunc_name_hint=kernels.DEPTHWISE_CONV)

    return rewrite_calls(mod, widen)


def fuse_stem_pool(mod: "tvm.IRModule", lanes: int) -> "tvm.IRModule":
    """``max_pool2d(relu(conv2d(x, w) + b))`` of a ShuffleNet's stem as one kernel (:mod:`.schedules.stem`).

    A lowering step for CPUs with ``lanes`` fp32 lanes per vector: the 3x3
    stride-2 convolution (constant weights and per-channel bias, NCHW, fp32)
    and the 3x3 stride-2 max-pool after its ReLU, each with padding 1. Any
    other chain is left as it is.
    """
    from tvm_shuffle.schedules import stem

    def fuse(call, builder):
        chain = _stem_chain(call, builder.lookup_binding)
        if chain is None:
            return call
        data, weight, bias = chain
        return builder.call_te(functools.partial(stem.conv_relu_maxpool, lanes=lanes), data, weight, bias,
                               primfunc_name_hint=stem.STEM_POOL)

    return relax.transform.DeadCodeElimination()(rewrite_calls(mod, fuse))


def _stem_chain(call, lookup) -> tuple | None:
    """(data, weight, bias) when ``call`` is the max-pool of :func:`fuse_stem_pool`'s chain, else None."""
    from tvm_shuffle.schedules import stem
    from tvm_shuffle.tvm_compat import Constant

    if not is_op_call(call, "relax.nn.max_pool2d") or not _has_attrs(call.attrs, stem.POOL) or call.attrs.ceil_mode:
        return None
    if call.attrs.layout != "NCHW" or call.ty.dtype != "float32":
        return None
    relu = lookup(call.args[0]) if isinstance(call.args[0], relax.Var) else None
    if not is_op_call(relu, "relax.nn.relu") or not isinstance(relu.args[0], relax.Var):
        return None
    add = lookup(relu.args[0])
    if not is_op_call(add, "relax.add") or not isinstance(add.args[0], relax.Var) or not isinstance(add.args[1], Constant):
        return None
    conv = lookup(add.args[0])
    if not is_op_call(conv, "relax.nn.conv2d") or not isinstance(conv.args[1], Constant):
        return None
    attrs, weight, bias = conv.attrs, conv.args[1], add.args[1]
    channels = int(weight.ty.shape.values[0])
    if (not _has_attrs(attrs, {key: value for key, value in stem.CONV.items() if key != "kernel"})
            or tuple(int(v) for v in weight.ty.shape.values[2:]) != stem.CONV["kernel"]
            or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or conv.ty.dtype != "float32"
            or tuple(int(v) for v in bias.ty.shape.values) != (1, channels, 1, 1)):
        return None
    return conv.args[0], weight, bias


def _has_attrs(attrs, wanted: dict) -> bool:
    """Whether each attribute in ``wanted`` has that value (tuples compared as ints)."""
    def value(v):
        return tuple(int(x) for x in v) if not isinstance(v, int) else v

    return all(value(getattr(attrs, key)) == want for key, want in wanted.items())


def mark_layout_free_weights(mod: "tvm.IRModule") -> "tvm.IRModule":
    """Mark each kernel's arguments that are constants at every call as ``layout_free_buffers``.

    MetaSchedule's ``RewriteLayout`` may then store them the way its tiles
    read them. TVM's ``AttachAttrLayoutFreeBuffers`` does the same but
    renames every kernel it marks (``mean`` becomes ``mean1``), and the names
    are what profiles, reports and the tuning logs show.
    """
    from tvm_shuffle.tvm_compat import Constant

    call_tir = tvm.ir.Op.get("relax.call_tir")
    constant: dict = {}  # kernel -> argument positions constant at every call seen so far

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir) and isinstance(expr.args[1], relax.Tuple):
            here = {i for i, arg in enumerate(expr.args[1].fields) if isinstance(arg, Constant)}
            name = expr.args[0].name_hint
            constant[name] = constant.get(name, here) & here

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    functions = {gv: func.with_attr("layout_free_buffers", sorted(constant[gv.name_hint]))
                 if isinstance(func, tvm.tirx.PrimFunc) and constant.get(gv.name_hint) else func
                 for gv, func in mod.functions.items()}
    return tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)


def _is_depthwise_nchw(call) -> bool:
    if not is_op_call(call, "relax.nn.conv2d"):
        return False
    attrs = call.attrs
    if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or attrs.out_layout not in ("NCHW", ""):
        return False
    try:
        data, weight, out = (tuple(int(d) for d in e.ty.shape.values) for e in (*call.args, call))
    except (AttributeError, TypeError):  # a symbolic shape
        return False
    return int(attrs.groups) == data[1] == out[1] == weight[0] and weight[1] == 1


def op_histogram(mod: "tvm.IRModule", func: str = "main") -> collections.Counter:
    """How many calls of each Relax operator ``func`` makes (for tests and verbose output)."""
    counts: collections.Counter = collections.Counter()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            counts[expr.op.name] += 1

    relax.analysis.post_order_visit(mod[func].body, visit)
    return counts


def describe_change(before: "tvm.IRModule", after: "tvm.IRModule") -> str:
    """One line per operator whose count the graph passes changed."""
    old, new = op_histogram(before), op_histogram(after)
    lines = [f"  {op}: {old[op]} -> {new[op]}" for op in sorted(set(old) | set(new)) if old[op] != new[op]]
    return "graph passes:\n" + ("\n".join(lines) if lines else "  no change")
