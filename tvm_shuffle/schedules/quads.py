"""The u8 quads every int8 kernel reads: four input channels' u8 values in the bytes of one uint32.

:func:`pack_quad` quantizes four fp32 channels of a pixel
(:func:`quantize_u8`, the per-tensor :class:`InputQuant`) into one word, a
vector of pixels at a time; :func:`unpack` takes byte ``j`` back out, as the
compute of a dot product over quads reads it. The x86 (:mod:`.int8`,
:mod:`.int8_dense`), ARM (:mod:`.int8_arm`) and CUDA (:mod:`.int8_gpu`)
kernels share this arithmetic, and their tensor intrinsics' descriptions
match it.
"""

from __future__ import annotations

import dataclasses
import functools

from tvm_shuffle.schedules.analysis import iter_extents
from tvm_shuffle.schedules.bf16 import LAYOUT_REWRITE_PREPROC, MIN_PARALLEL_WORK, i64, vectorize_divisor
from tvm_shuffle.tvm_compat import Schedule, tir

QUAD = 4  # input channels per 32-bit word (one lane of vpdpbusd, sdot, dp4a)


@dataclasses.dataclass(frozen=True)
class InputQuant:
    """Per-tensor u8 quantization of a convolution's input: ``q = clamp(round(x / scale) + zero_point, 0, 255)``."""

    scale: float
    zero_point: int


def quantize_u8(value, quant: InputQuant):
    """``clamp(round(value / scale) + zero_point, 0, 255)`` of an fp32 expression, as a uint32."""
    scaled = tir.round(value * tir.const(1.0 / quant.scale, "float32") + tir.const(float(quant.zero_point), "float32"))
    return tir.max(tir.min(scaled, tir.const(255.0, "float32")), tir.const(0.0, "float32")).astype("uint32")


def pack_quad(read, k, channels: int, quant: InputQuant):
    """The u8 values of channels ``4k .. 4k + 3`` (``read(c)`` in fp32; 0 past ``channels``) in the bytes of a uint32."""
    def channel(c):
        value = quantize_u8(read(tir.min(c, i64(channels - 1)) if channels % QUAD else c), quant)
        return tir.if_then_else(c < i64(channels), value, tir.const(0, "uint32")) if channels % QUAD else value

    words = [channel(k * i64(QUAD) + i64(j)) << tir.const(8 * j, "uint32") for j in range(QUAD)]
    return functools.reduce(lambda a, b: a | b, words)


def unpack(word, j):
    """Byte ``j`` of a uint32 quad as an int32: the u8 input of channel ``4k + j``."""
    return tir.Cast("int32", tir.bitwise_and(tir.shift_right(word, tir.Cast("uint32", j) * tir.const(8, "uint32")),
                                             tir.const(255, "uint32")))


def vectorize_input_stages(sch: Schedule, gather, pad, quads, lanes: int, plane: int | None = None) -> None:
    """The stages in front of the dot products: the gather and the padding vectorized, the quads ``lanes`` pixels at a time.

    ``plane``: the pixels per image of a kernel whose batch is one pixel axis
    (:func:`.int8.batch_input`): its gather or padding stage copies the real
    pixels image by image, each a contiguous row of ``plane`` pixels in the
    NCHW source and in the copy, vectorized along the row.
    """
    if gather is not None:
        _vectorize_rows(sch, sch.get_loops(gather)[-1], plane)
    if pad is not None:
        loops = sch.get_loops(pad)
        if sch.can_decompose_padding(pad, loops[-1]):
            sch.decompose_padding(pad, loops[-1])
            _vectorize_rows(sch, sch.get_loops(pad)[-1], plane)
    _, lane = sch.split(sch.get_loops(quads)[-1], [None, lanes])
    sch.vectorize(lane)


def _vectorize_rows(sch: Schedule, loop, plane: int | None) -> None:
    extent = int(sch.get(loop).extent)
    if plane is not None and extent > plane and extent % plane == 0:
        loop = sch.split(loop, [None, plane])[1]
    vectorize_divisor(sch, loop)


def batch_plane(sch: Schedule, conv, crop) -> int | None:
    """The plane of a 1x1 kernel whose batch is one pixel axis (crop iterating n, o, flat pixels), else None."""
    return iter_extents(sch, crop)[2] if computes_batch_as_one_axis(sch, conv, crop) else None


def computes_batch_as_one_axis(sch: Schedule, conv, crop) -> bool:
    """Whether a 1x1 kernel's sums hold the batch's pixels as one axis (:func:`.int8.merges_batch`): one row for N images."""
    return iter_extents(sch, conv)[0] != iter_extents(sch, crop)[0]


def crop_whole_batch(sch: Schedule, crop, work: int) -> None:
    """The crop (and epilogue) of a kernel whose batch is one pixel axis, after all the sums: images x channels, pixels.

    Placed inside a tile of the sums, TVM infers the crop's pixels from its
    ``n * plane + p`` reads as fewer than the plane when the batch's pixels
    are padded (a 7x7 plane at batch 4 kept 12 of its 49): the crop runs
    as a loop nest of its own over whole planes, each a contiguous row both
    in the sums and in the NCHW output, vectorized along it.
    """
    n, o, p = sch.get_loops(crop)
    outer = sch.fuse(n, o)
    vectorize_divisor(sch, p)
    if work >= MIN_PARALLEL_WORK:
        sch.parallel(outer)


def pack_weights_by_quad(sch: Schedule, consumer, weights=None):
    """The s8 weights as ``[K / 4, O, 4]`` (the output channels' quads, input quad by input quad); returns the packing block.

    The packing is ``weights`` (the padding stage of channels that are no
    whole quads, 2-D or 4-D) or else a copy of ``consumer``'s s8 parameter,
    marked as layout-rewrite preprocessing, which the build folds into the
    constant (``build.run_copies``). The ARM and CUDA kernels read them so.
    """
    if weights is None:
        index = next(i for i, read in enumerate(sch.get(consumer).reads) if str(read.source.dtype) == "int8")
        weights = sch.cache_read(consumer, index, "global")
    sch.transform_layout(weights, ("write", 0), lambda o, c, *_: (c // QUAD, o, c % QUAD),  # O x K (x 1 x 1)
                         assume_injective_transform=True)
    sch.annotate(weights, LAYOUT_REWRITE_PREPROC, True)
    return weights


__all__ = ["QUAD", "InputQuant", "quantize_u8", "pack_quad", "unpack", "vectorize_input_stages", "pack_weights_by_quad",
           "computes_batch_as_one_axis", "batch_plane", "crop_whole_batch"]
