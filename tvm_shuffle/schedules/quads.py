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

from tvm_shuffle.schedules.bf16 import i64
from tvm_shuffle.tvm_compat import tir

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


__all__ = ["QUAD", "InputQuant", "quantize_u8", "pack_quad", "unpack"]
