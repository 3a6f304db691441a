"""Post-training static int8 quantization of the 1x1 convolutions (``--quantize int8``).

Steps, on the Relax module after BatchNorm folding (``passes.optimize`` calls
:func:`quantize_convs` before the channel-shuffle fusion):

1. **Calibration data** (:func:`load_calibration`): an N x C x H x W float
   array (``.npy``), a directory of images preprocessed as torchvision's
   ImageNet models expect (resize 256, center crop, ImageNet mean/std), or,
   when none is given, :data:`SYNTHETIC_IMAGES` seeded N(0, 1) images with a
   warning (ranges from noise, not from the data the model will see).
2. **Ranges** (:func:`calibrate`): the fp32 module, every int8-able
   convolution's input also returned, is built with TVM's default pipeline
   and run on each calibration image; ``minmax`` keeps each input's extremes,
   ``percentile`` the :data:`PERCENTILE` and 100 - :data:`PERCENTILE`
   percentiles of its values (outlier-robust).
3. **Rewrite**: each dense 1x1 convolution gets s8 weights, symmetric per
   output channel (``scale_w[o] = max|W[o]| / 127``), and its input a u8
   per-tensor scale and zero point from its range; the graph multiplies the
   kernel's s32 sums by ``scale_x * scale_w[o]`` and subtracts the zero
   point's share (``zero_point * sum_k W_q[o, k]``) before the bias.
   :mod:`tvm_shuffle.schedules.int8` computes the kernels. A fully
   connected layer with constant weights (the classifier) is quantized the
   same way and becomes a :mod:`tvm_shuffle.schedules.int8_dense` kernel at
   once. Every other operator stays fp32 (:attr:`Calibration.fp32_ops`
   lists them).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np

from tvm_shuffle import precisions
from tvm_shuffle.errors import UserError
from tvm_shuffle.relax_rewrite import is_op_call, rewrite_calls
from tvm_shuffle.schedules import int8
from tvm_shuffle.tvm_compat import Constant, relax, tvm

CALIBRATORS = precisions.CALIBRATORS
DEFAULT_CALIBRATOR = CALIBRATORS[0]
PERCENTILE = 99.99
SYNTHETIC_IMAGES = 8
SYNTHETIC_SEED = 0
# Values of one tensor kept per image for the percentile calibrator (a seeded subsample beyond it).
PERCENTILE_SAMPLE = 1 << 18
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclasses.dataclass
class Calibration:
    """What to calibrate on and how; :func:`quantize_convs` fills in the outcome (``table``, ``int8_convs``, ``fp32_ops``)."""

    data: np.ndarray  # N x C x H x W float32
    calibrator: str = DEFAULT_CALIBRATOR
    source: str = "synthetic"  # a path, "array" or "synthetic"
    table: dict = dataclasses.field(default_factory=dict)  # schedules.int8.InputQuantTable
    int8_convs: int = 0
    int8_dense: int = 0  # fully connected layers (the classifier)
    fp32_ops: list = dataclasses.field(default_factory=list)
    # Structural hash of a module -> its convolutions' input quantization: a tune optimizes the same
    # module for its tasks, the untuned, the picked and the tuned build, and calibrates it once.
    ranges: dict = dataclasses.field(default_factory=dict, repr=False)

    def describe(self) -> dict:
        """What the manifest records."""
        return {"source": self.source, "images": int(self.data.shape[0]), "calibrator": self.calibrator,
                **({"percentile": PERCENTILE} if self.calibrator == "percentile" else {}),
                "int8_convs": self.int8_convs, "int8_dense": self.int8_dense}

    def summary(self) -> str:
        """The lines ``-v`` prints: how many convolutions are int8 and which operators stay fp32."""
        lines = [f"int8: {self.int8_convs} 1x1 convolutions and {self.int8_dense} fully connected layer(s) "
                 f"(u8 x s8 -> s32), calibrated on {self.data.shape[0]} "
                 f"{self.source} image(s) with {self.calibrator}"]
        if self.fp32_ops:
            lines.append("  stay fp32 (no int8 kernel): " + ", ".join(self.fp32_ops))
        return "\n".join(lines)


def check_calibrator(calibrator: str) -> str:
    if calibrator not in CALIBRATORS:
        raise UserError(f"unknown calibrator {calibrator!r}; choose one of: {', '.join(CALIBRATORS)}")
    return calibrator


def load_calibration(source, input_shape, *, calibrator: str = DEFAULT_CALIBRATOR) -> Calibration:
    """The calibration set for a model whose input is ``input_shape`` (N, C, H, W).

    ``source``: None (a synthetic set, with a warning), a numpy array, a
    ``.npy`` file or a directory of images. A set of the wrong shape or
    dtype, an empty one, or one holding NaN or infinity is one ``UserError``.
    """
    check_calibrator(calibrator)
    shape = tuple(int(d) for d in input_shape)
    if source is None:
        warnings.warn(f"no calibration data: calibrating int8 on {SYNTHETIC_IMAGES} synthetic N(0, 1) images "
                      f"(seed {SYNTHETIC_SEED}); give --calibration FILE.npy or a directory of images for ranges "
                      "that match real inputs", UserWarning, stacklevel=2)
        data = np.random.default_rng(SYNTHETIC_SEED).standard_normal((SYNTHETIC_IMAGES, *shape[1:]), dtype=np.float32)
        return Calibration(data, calibrator, "synthetic")
    if isinstance(source, np.ndarray):
        return Calibration(_checked(source, shape, "the calibration array"), calibrator, "array")
    path = Path(os.fspath(source))
    if path.is_dir():
        return Calibration(_checked(_load_images(path, shape), shape, str(path)), calibrator, str(path))
    if not path.is_file():
        raise UserError(f"calibration data {path}: no such file or directory")
    if path.suffix != ".npy":
        raise UserError(f"calibration data {path}: give an N x C x H x W .npy file or a directory of images")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"calibration data {path}: not a readable .npy file ({err})") from None
    return Calibration(_checked(array, shape, str(path)), calibrator, str(path))


def _checked(array: np.ndarray, shape: tuple, name: str) -> np.ndarray:
    expected = "x".join(map(str, ("N", *shape[1:])))
    if not np.issubdtype(array.dtype, np.floating):
        raise UserError(f"{name}: calibration data must be floating point ({expected}), not {array.dtype}")
    if array.ndim != len(shape) or tuple(array.shape[1:]) != shape[1:]:
        raise UserError(f"{name}: calibration data must be {expected} for this model, not "
                        f"{'x'.join(map(str, array.shape))}")
    if array.shape[0] == 0:
        raise UserError(f"{name}: the calibration set is empty")
    if not np.isfinite(array).all():
        raise UserError(f"{name}: the calibration set holds NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


def _load_images(directory: Path, shape: tuple) -> np.ndarray:
    """Images preprocessed as torchvision's ImageNet models: resize the short side to 256/224 of the crop, center crop, normalize."""
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{directory}: the calibration directory holds no images ({', '.join(IMAGE_SUFFIXES)})")
    try:
        from PIL import Image
    except ImportError:
        raise UserError("calibrating on a directory of images needs Pillow (pip install pillow); "
                        "or give an N x C x H x W .npy file") from None
    height, width = shape[2:]
    resize = round(min(height, width) * 256 / 224)
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    images = []
    for file in files:
        image = Image.open(file).convert("RGB")
        scale = resize / min(image.size)
        image = image.resize((max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale))),
                             Image.BILINEAR)
        left, top = (image.size[0] - width) // 2, (image.size[1] - height) // 2
        array = np.asarray(image.crop((left, top, left + width, top + height)), np.float32) / 255.0
        images.append(((array - mean) / std).transpose(2, 0, 1))
    return np.stack(images)


# ---------------------------------------------------------------------------
# The graph


def int8_able(call) -> bool:
    """A conv2d :mod:`tvm_shuffle.schedules.int8` computes: dense 1x1, stride 1, NCHW, constant fp32 weights."""
    if not is_op_call(call, "relax.nn.conv2d"):
        return False
    weight = call.args[1]
    attrs = call.attrs
    return (isinstance(weight, Constant) and str(weight.ty.dtype) == "float32" and attrs.data_layout == "NCHW"
            and attrs.kernel_layout == "OIHW" and attrs.out_layout in ("NCHW", "")
            and int8.is_pointwise(weight.ty.shape.values, attrs.strides, attrs.padding, attrs.dilation,
                                  int(attrs.groups)))


def int8_able_dense(call) -> bool:
    """A fully connected layer :mod:`tvm_shuffle.schedules.int8_dense` computes: ``matmul(x, W)``, x 2-D, W a constant fp32 K x O."""
    if not is_op_call(call, "relax.matmul"):
        return False
    data, weight = call.args
    return (isinstance(weight, Constant) and str(weight.ty.dtype) == "float32" and len(weight.ty.shape.values) == 2
            and str(data.ty.dtype) == "float32" and data.ty.ndim == 2)


def _int8_calls(func) -> list:
    """The int8-able convolutions and fully connected layers of ``func``, in binding order (the order :func:`tvm_shuffle.relax_rewrite.rewrite_calls` visits)."""
    found = []

    def visit(expr):
        if int8_able(expr) or int8_able_dense(expr):
            found.append(expr)

    relax.analysis.post_order_visit(func.body, visit)
    return found


def calibrate(mod: "tvm.IRModule", calibration: Calibration) -> list[int8.InputQuant]:
    """Each int8-able call's input quantization (binding order), from the fp32 module run on the set."""
    func = relax.transform.ToNonDataflow()(mod)["main"]
    inputs = [call.args[0] for call in _int8_calls(func)]
    if not inputs:
        return []
    unique = list({id(v): v for v in inputs}.values())
    position = {id(v): i for i, v in enumerate(unique)}
    body = func.body
    probe = relax.Function(func.params, relax.SeqExpr(body.blocks, relax.Tuple(unique)),
                           tvm.ir.TupleType([v.ty for v in unique]))
    probe_mod = relax.transform.Normalize()(tvm.IRModule({"main": probe}))
    from tvm_shuffle import host, targets

    target = targets.get("x86").tvm_target() if host.arch() == "x86_64" else tvm.target.Target({"kind": "llvm"})
    executable = tvm.compile(probe_mod, target=target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    lows = [np.inf] * len(unique)
    highs = [-np.inf] * len(unique)
    samples: list[list[np.ndarray]] = [[] for _ in unique]
    rng = np.random.default_rng(SYNTHETIC_SEED)
    batch = int(mod["main"].params[0].ty.shape.values[0])
    data = calibration.data
    for start in range(0, data.shape[0], batch):
        # The probe runs at the model's batch: a last, short chunk is filled with its own images again,
        # and only its real images' values count (every int8-able input is batch-first).
        real = min(batch, data.shape[0] - start)
        chunk = np.take(data[start:start + real], np.arange(batch) % real, axis=0)
        outputs = vm["main"](tvm.runtime.tensor(chunk))
        for i in range(len(unique)):
            values = outputs[i].numpy()[:real].ravel()
            lows[i] = min(lows[i], float(values.min()))
            highs[i] = max(highs[i], float(values.max()))
            if calibration.calibrator == "percentile":
                if values.size > PERCENTILE_SAMPLE:
                    values = rng.choice(values, PERCENTILE_SAMPLE, replace=False)
                samples[i].append(values)
    if calibration.calibrator == "percentile":
        for i, parts in enumerate(samples):
            values = np.concatenate(parts)
            lows[i], highs[i] = (float(v) for v in np.percentile(values, [100 - PERCENTILE, PERCENTILE]))
    quants = [input_quant(lo, hi) for lo, hi in zip(lows, highs)]
    return [quants[position[id(v)]] for v in inputs]


def input_quant(low: float, high: float) -> int8.InputQuant:
    """u8 scale and zero point of the range ``[low, high]``, widened to hold 0 (asymmetric, as ONNX Runtime's QUInt8)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255.0
    if not scale > 0:
        return int8.InputQuant(1.0, 0)
    return int8.InputQuant(float(scale), int(np.clip(round(-low / scale), 0, 255)))


def quantize_weights(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s8 weights, symmetric per output channel, and their scales (O,)."""
    flat = weight.reshape(weight.shape[0], -1).astype(np.float64)
    scale = np.abs(flat).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    quantized = np.clip(np.round(flat / scale[:, None]), -127, 127).astype(np.int8)
    return quantized.reshape(weight.shape), scale


def quantize_convs(mod: "tvm.IRModule", calibration: Calibration) -> "tvm.IRModule":
    """``mod`` with its int8-able convolutions and classifier on s8 weights; fills ``calibration``'s outcome.

    Fills ``table``, ``int8_convs``, ``int8_dense`` and ``fp32_ops``. The
    classifier becomes its kernel here (:func:`s8_dense`). The s8
    convolutions stay Relax ``conv2d`` calls (fp32 input, s8 weights, fp32
    result: the kernel's s32 sums) until the fusion or
    ``passes.lower_int8_convs`` makes them
    :func:`tvm_shuffle.schedules.int8.pointwise_conv2d` kernels; run those
    with :func:`tvm_shuffle.schedules.int8.using_table` on ``calibration.table``.
    """
    import tvm_ffi

    module_hash = tvm_ffi.structural_hash(mod)
    if module_hash not in calibration.ranges:
        calibration.ranges[module_hash] = calibrate(mod, calibration)
    quants = calibration.ranges[module_hash]
    calls = _int8_calls(mod["main"])
    weights = [quantize_weights(_weight_oi(call)) for call in calls]
    # A conv kernel finds its input quantization by its weights' fingerprint; the classifier's takes it as an argument.
    keys = [int8.fingerprint(weight_q) if int8_able(call) else None for call, (weight_q, _) in zip(calls, weights)]
    convs = [(key, quant) for key, quant in zip(keys, quants) if key is not None]
    # Two convolutions with the same s8 weights and different inputs cannot be told apart by the kernel: both stay fp32.
    refused = {key for key, quant in convs if any(other == key and other_quant != quant for other, other_quant in convs)}
    calibration.table.update((key, quant) for key, quant in convs if key not in refused)
    plan = iter(zip(weights, keys, quants))

    def rewrite(call, builder):
        if not (int8_able_dense(call) or int8_able(call)):
            return call
        (weight_q, weight_scale), key, quant = next(plan)
        if key is None:
            return s8_dense(call.args[0], weight_q, quant, weight_scale, builder)
        if key in refused:
            return call
        return s8_conv(call.args[0], weight_q, call.attrs, quant.scale * weight_scale, quant.zero_point)

    out = rewrite_calls(mod, rewrite)
    calibration.int8_dense = keys.count(None)
    calibration.int8_convs = sum(key is not None and key not in refused for key in keys)
    calibration.fp32_ops = fp32_operators(out)
    return out


def _weight_oi(call) -> np.ndarray:
    """An int8-able call's fp32 weights with the output channels first (a conv's OIHW; a matmul's K x O transposed)."""
    weight = call.args[1].value.numpy()
    return np.ascontiguousarray(weight.T) if int8_able_dense(call) else weight


def s8_dense(data, weight_q: np.ndarray, quant: int8.InputQuant, weight_scale: np.ndarray, builder):
    """The int8 form of ``matmul(data, W)``: an :func:`tvm_shuffle.schedules.int8_dense.dense` kernel on s8 ``weight_q`` (O x K).

    The kernel quantizes ``data`` with ``quant`` itself (it takes it as an
    argument: no table), on weights zero-padded to its shape; the graph
    scales its s32 sums back and subtracts the zero point's share, as
    :func:`s8_conv` does.
    """
    import functools

    from tvm_shuffle.schedules import int8_dense

    out_features, features = weight_q.shape
    padded = np.zeros(int8_dense.padded_shape(out_features, features), np.int8)
    padded[:out_features, :features] = weight_q
    sums = builder.call_te(functools.partial(int8_dense.dense, quant=quant, out_features=out_features), data,
                           relax.const(padded), primfunc_name_hint=int8_dense.DENSE)
    multiplier = quant.scale * weight_scale
    offset = -multiplier * quant.zero_point * weight_q.astype(np.int64).sum(axis=1)
    return relax.op.add(relax.op.multiply(sums, relax.const(multiplier.astype(np.float32)[None])),
                        relax.const(offset.astype(np.float32)[None]))


def s8_conv(data, weight_q: np.ndarray, attrs, multiplier: np.ndarray, zero_point: int):
    """The int8 form of a 1x1 conv2d: ``conv2d(data, s8 W_q) * multiplier[o] - multiplier[o] * zero_point * sum_k W_q[o, k]``.

    ``data`` stays fp32 (the kernel quantizes it to u8 with the table's
    :class:`~tvm_shuffle.schedules.int8.InputQuant`, whose zero point is
    ``zero_point``), the conv returns the s32 sums as fp32, and the
    per-channel ``multiplier`` (input scale x weight scale) makes them real
    numbers again, less the zero point's share.
    """
    conv = relax.op.nn.conv2d(data, relax.const(weight_q), strides=attrs.strides, padding=attrs.padding,
                              dilation=attrs.dilation, groups=attrs.groups, data_layout="NCHW",
                              kernel_layout="OIHW", out_layout="NCHW", out_dtype="float32")
    offset = -multiplier * zero_point * weight_q.reshape(weight_q.shape[0], -1).astype(np.int64).sum(axis=1)
    channels = (1, weight_q.shape[0], 1, 1)
    return relax.op.add(relax.op.multiply(conv, relax.const(multiplier.astype(np.float32).reshape(channels))),
                        relax.const(offset.astype(np.float32).reshape(channels)))


def fp32_operators(mod: "tvm.IRModule") -> list[str]:
    """The compute operators of ``main`` left in fp32, counted: ``conv2d 3x3 (17)``, ``matmul (1)``."""
    import collections

    counts: collections.Counter = collections.Counter()

    def visit(expr):
        if not (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)):
            return
        name = expr.op.name.removeprefix("relax.").removeprefix("nn.")
        if name == "conv2d":
            weight = expr.args[1]
            if str(weight.ty.dtype) == "int8":
                return
            shape = [int(d) for d in weight.ty.shape.values]
            kind = "depthwise" if int(expr.attrs.groups) > 1 and shape[1] == 1 else \
                f"grouped g{int(expr.attrs.groups)}" if int(expr.attrs.groups) > 1 else "dense"
            counts[f"conv2d {shape[2]}x{shape[3]} {kind}"] += 1
        elif name in ("matmul", "linear", "dense", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "mean"):
            counts[name] += 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return [f"{name} ({n})" for name, n in sorted(counts.items())]


__all__ = ["CALIBRATORS", "DEFAULT_CALIBRATOR", "PERCENTILE", "SYNTHETIC_IMAGES", "Calibration", "check_calibrator",
           "load_calibration", "calibrate", "input_quant", "quantize_weights", "quantize_convs", "fp32_operators",
           "int8_able"]
