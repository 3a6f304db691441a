"""Compute definitions of the fused kernels: convolutions that read their input through a channel gather.

After a shuffle is removed from the graph, a convolution may need input
channels that live in several tensors (the pieces a concat would have
copied together) or in shuffled order. Instead of copying them into one
tensor, the convolution's input read goes through index arithmetic: each
gathered channel ``j`` is plane ``f(j)`` of one source tensor. Reading a plane
from another buffer costs nothing extra in a convolution, whose inner loops
run over the pixels of one plane.

Two gather forms keep that arithmetic cheap (no lookup tables, so tuning
measurements with random inputs stay in bounds):

* :class:`Segments`: ``j`` in ``[start, stop)`` reads plane ``first + j -
  start`` of source ``source``; a short chain of comparisons picks the segment.
* :class:`ShuffleIndex`: ``j`` reads plane ``(j % groups) * per_group + j //
  groups`` of one source (ShuffleNet v1's shuffle before a grouped conv).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from tvm_shuffle.tvm_compat import te, tir

# Name of the compute; schedules and task names show it.
GATHERED_CONV = "conv2d_gathered"
GATHERED_PAD = "gathered_pad"
GATHERED_INPUT = "gathered_input"
DEPTHWISE_CONV = "conv2d_depthwise"
# The valid columns of rows computed wider than the output (``row_multiple``).
ROW_CROP = "conv2d_crop"


@dataclasses.dataclass(frozen=True)
class Segments:
    """Piecewise-contiguous gather: ``(start, stop, source, first)`` per run, covering ``[0, C)`` in order."""

    runs: tuple[tuple[int, int, int, int], ...]

    def read(self, sources, n, j, h, w):
        *rest, last = self.runs
        value = _plane(sources, last, n, j, h, w)
        for run in reversed(rest):
            value = tir.if_then_else(j < run[1], _plane(sources, run, n, j, h, w), value)
        return value


@dataclasses.dataclass(frozen=True)
class ShuffleIndex:
    """Gathered channel ``j`` is plane ``(j % groups) * per_group + j // groups`` of source ``source``."""

    source: int
    groups: int
    per_group: int

    def read(self, sources, n, j, h, w):
        return sources[self.source][n, (j % self.groups) * self.per_group + j // self.groups, h, w]


def _plane(sources, run, n, j, h, w):
    start, _, source, first = run
    return sources[source][n, j - start + first, h, w]


def gathered_conv2d(*tensors: te.Tensor, gather: Segments | ShuffleIndex, strides: Sequence[int],
                    padding: Sequence[int], dilation: Sequence[int], groups: int, out_dtype: str,
                    row_multiple: int = 1) -> te.Tensor:
    """NCHW/OIHW conv2d of the gathered input; ``tensors`` are the sources then the weight.

    A 1x1 convolution whose weights are bf16 (``--precision bf16``) is
    :func:`tvm_shuffle.schedules.bf16.pointwise_conv2d` instead (on CUDA, and
    for fp16 weights, :func:`tvm_shuffle.schedules.tensorcore.pointwise_conv2d`); one whose
    weights are s8 (``--quantize int8``), :func:`tvm_shuffle.schedules.int8.pointwise_conv2d`.

    The same arithmetic as Relax's legalized ``conv2d`` (``topi.nn.conv``), with
    the gather inlined into the input read (or into the padding stage, when
    there is padding), so no gathered copy of the input is ever stored whole
    once the kernel is scheduled.

    ``row_multiple`` > 1 computes every output row rounded up to a multiple
    of it, from a padding stage widened with zeros to match, and keeps the
    real columns in a last stage: a row of 7, 14 or 28 floats is no whole
    number of vector registers, and LLVM assembles such a vector from three
    loads and two inserts, and leaves its spare lanes undefined (their
    garbage can be denormal, which costs a microcode assist per operation).
    """
    *sources, weight = tensors
    if str(weight.dtype) in ("bfloat16", "float16") and _reduced_float_pointwise(weight, strides, padding, dilation,
                                                                                 groups):
        from tvm_shuffle.schedules import bf16, tensorcore

        module = tensorcore if tensorcore.computes(str(weight.dtype)) else bf16
        return module.pointwise_conv2d(*tensors, gather=gather, out_dtype=out_dtype)
    if str(weight.dtype) == "int8":
        from tvm_shuffle.schedules import int8

        if int8.is_pointwise(weight.shape, strides, padding, dilation, groups):
            return int8.pointwise_conv2d(*tensors, gather=gather, out_dtype=out_dtype)
    batch, _, height, width = (int(d) for d in sources[0].shape)
    out_channels, in_per_group, kh, kw = (int(d) for d in weight.shape)
    out_per_group = out_channels // groups
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    out_h = (height + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + left + right - dw * (kw - 1) - 1) // sw + 1
    wide_w = -(-out_w // row_multiple) * row_multiple
    # Columns the wide rows read; even, so a stride-2 schedule can store even and odd columns apart.
    pad_w = max(width + left + right, (wide_w - 1) * sw + dw * (kw - 1) + 1)
    pad_w += pad_w % 2 if wide_w > out_w else 0
    dtype = sources[0].dtype

    rc, ry, rx = (_reduce_axis(extent, name) for extent, name in ((in_per_group, "rc"), (kh, "ry"), (kw, "rx")))
    axes = [a for a in (rc, ry, rx) if a is not None]
    zero = _i64(0)

    if any((top, left, bottom, right)) or wide_w > out_w:
        # A separate padding stage, as topi has: a schedule can pad one plane
        # at a time into a small buffer and keep the bounds test out of its
        # vector loop.
        def pad(n, c, h, w):
            inside = tir.all(h >= top, h < height + top, w >= left, w < width + left)
            return tir.if_then_else(inside, gather.read(sources, n, c, h - top, w - left), tir.const(0, dtype))

        padded = te.compute(tuple(_i64(d) for d in (batch, in_per_group * groups, height + top + bottom, pad_w)),
                            pad, name=GATHERED_PAD)

        def read(n, c, iy, ix):
            return padded[n, c, iy, ix]
    elif len(sources) > 1:
        # Several tensors: the choice between them is a chain of comparisons,
        # a stage of its own so that a schedule evaluates it once per input
        # vector rather than once per output channel that reads the vector.
        gathered = te.compute(tuple(_i64(d) for d in (batch, in_per_group * groups, height, width)),
                              lambda n, c, h, w: gather.read(sources, n, c, h, w), name=GATHERED_INPUT)

        def read(n, c, iy, ix):
            return gathered[n, c, iy, ix]
    else:
        def read(n, c, iy, ix):
            return gather.read(sources, n, c, iy, ix)

    def compute(n, o, y, x):
        c = rc if rc is not None else zero
        if groups > 1:
            c = (o // out_per_group) * in_per_group + c
        iy = y * sh + (ry * dh if ry is not None else zero)
        ix = x * sw + (rx * dw if rx is not None else zero)
        w = weight[o, rc if rc is not None else zero, ry if ry is not None else zero, rx if rx is not None else zero]
        product = read(n, c, iy, ix).astype(out_dtype) * w.astype(out_dtype)
        return te.sum(product, axis=axes) if axes else product

    shape = tuple(_i64(d) for d in (batch, out_channels, out_h, wide_w))
    conv = te.compute(shape, compute, name=GATHERED_CONV)
    if wide_w == out_w:
        return conv
    return te.compute(shape[:3] + (_i64(out_w),), lambda n, o, y, x: conv[n, o, y, x], name=ROW_CROP)


def _reduced_float_pointwise(weight: te.Tensor, strides, padding, dilation, groups: int) -> bool:
    """A 1x1 convolution with bf16/fp16 weights: :func:`.bf16.pointwise_conv2d` or :func:`.tensorcore.pointwise_conv2d` computes it."""
    from tvm_shuffle.schedules import bf16

    return bf16.is_pointwise(weight.shape, strides, padding, dilation, groups)


def depthwise_conv2d(data: te.Tensor, weight: te.Tensor, *, strides: Sequence[int], padding: Sequence[int],
                     dilation: Sequence[int], out_dtype: str, row_multiple: int) -> te.Tensor:
    """A plain depthwise conv2d (NCHW/OIHW) with rows rounded up to ``row_multiple`` (see :func:`gathered_conv2d`)."""
    channels = int(data.shape[1])
    return gathered_conv2d(data, weight, gather=Segments(((0, channels, 0, 0),)), strides=strides, padding=padding,
                           dilation=dilation, groups=channels, out_dtype=out_dtype, row_multiple=row_multiple)


def _i64(value: int):
    # Relax tensors have int64 shapes; int32 loop variables would mix types in the indices.
    return tir.IntImm("int64", value)


def _reduce_axis(extent: int, name: str):
    return te.reduce_axis((_i64(0), _i64(extent)), name) if extent > 1 else None
