"""bf16 1x1 convolutions on aarch64 with the Armv8.6 bf16 instructions (``+bf16``: Neoverse V1 / Graviton3).

The compute is :mod:`.bf16`'s (bf16 inputs and weights, fp32 sums, the
input stored as interleaved channel pairs ``[K / 2, pixels, 2]``), and so is
the schedule (:func:`.bf16.schedule_native`: ``oc x vectors`` sums in
registers while the input pairs stream past, the epilogue and a fused
channel shuffle's gather folded in). What is ARM's are the two steps it
tensorizes with, each an LLVM function (:data:`LLVM_IR`) that sees the bf16
values TIR moves as 32-bit words:

* the dot product, ``bfdot v.4s, v.8h, v.8h`` (``llvm.aarch64.neon.bfdot``):
  4 pixels x 1 output channel x 2 input channels, the channel's weight pair
  in every lane (one ``ld1r`` per channel and step, from the weights packed
  ``[O / oc, K / 2, oc, 2]`` at build time);
* the conversion of the input, ``bfcvtn`` (fp32 -> bf16, round to nearest
  even, as the compute's cast) of two channels and a ``zip1`` of them, 4
  pixels at a time, once per pixel tile.

``bfdot`` rather than ``bfmmla``: ``bfmmla`` sums a 2x4 by 4x2 block into
2 output channels x 2 pixels, so its input would be stored in quads of
channels of pixel pairs and every tile of sums transposed on its way out;
``bfdot`` takes the layout the x86 kernel already uses, with the same
number of multiply-adds per instruction and register.

A register tile holds at most :data:`TILES`' accumulators of sums, so that
the tile, the input vectors of a step and a weight stay in NEON's 32
registers (the static check of ShuffleNetV2's kernels finds no vector
spills in their innermost loops).

``bfdot`` sums each pair of products without rounding the first (and, on
cores without FEAT_EBF16, rounds to odd and flushes denormals): its fp32
sums differ from x86's ``vdpbf16ps`` by rounding only.
"""

from __future__ import annotations

import functools

from tvm_shuffle.schedules import bf16
from tvm_shuffle.schedules.int8_arm import VECTOR, is_aarch64
from tvm_shuffle.tvm_compat import Schedule, dlight, target_has_feature, tir

BF16_FEATURE = "bf16"  # the LLVM feature of bfdot, bfmmla, bfcvtn (Armv8.6-A BF16)
DOT_INTRIN = "tvm_shuffle_neon_bfdot_4x2"
PAIRS_INTRIN = "tvm_shuffle_neon_bf16_pairs_2x4"
DOT_FUNCTION = "tvm_shuffle_neon_bfdot"
PAIRS_FUNCTION = "tvm_shuffle_neon_bf16_pairs"

# Sums of a register tile: with the step's input vectors (up to 8) and a weight, at most 28 of the 32 registers.
TILES = bf16.Tiles(accumulators=20, tile_vectors=bf16.TILES.tile_vectors)

LLVM_IR = f"""
define linkonce_odr <4 x float> @{DOT_FUNCTION}(<4 x float> %acc, <4 x i32> %pairs, i32 %weights) #0 {{
  %a = bitcast <4 x i32> %pairs to <8 x bfloat>
  %w1 = insertelement <4 x i32> poison, i32 %weights, i64 0
  %w4 = shufflevector <4 x i32> %w1, <4 x i32> poison, <4 x i32> zeroinitializer
  %b = bitcast <4 x i32> %w4 to <8 x bfloat>
  %r = call <4 x float> @llvm.aarch64.neon.bfdot.v4f32.v8bf16(<4 x float> %acc, <8 x bfloat> %a, <8 x bfloat> %b)
  ret <4 x float> %r
}}
define linkonce_odr <4 x i32> @{PAIRS_FUNCTION}(<4 x float> %even, <4 x float> %odd) #0 {{
  %e = fptrunc <4 x float> %even to <4 x bfloat>
  %o = fptrunc <4 x float> %odd to <4 x bfloat>
  %i = shufflevector <4 x bfloat> %e, <4 x bfloat> %o, <8 x i32> <{bf16.interleave_mask(VECTOR)}>
  %r = bitcast <8 x bfloat> %i to <4 x i32>
  ret <4 x i32> %r
}}
declare <4 x float> @llvm.aarch64.neon.bfdot.v4f32.v8bf16(<4 x float>, <8 x bfloat>, <8 x bfloat>)
attributes #0 = {{ alwaysinline nounwind }}
"""


def has_bf16(target) -> bool:
    """Whether ``target`` is an aarch64 LLVM target with the bf16 instructions (``bfdot``)."""
    return is_aarch64(target) and target_has_feature(target, BF16_FEATURE)


@functools.lru_cache(maxsize=None)
def register_intrinsics() -> None:
    """Register the two NEON steps with TVM (once per process)."""
    from tvm.s_tir import TensorIntrin

    TensorIntrin.register(DOT_INTRIN, *bf16.dot_step(VECTOR, DOT_FUNCTION), override=True)
    TensorIntrin.register(PAIRS_INTRIN, *bf16.pairs_step(VECTOR, PAIRS_FUNCTION), override=True)


class PointwiseBF16Neon(dlight.ScheduleRule):
    """:mod:`.bf16`'s kernels (a block named ``conv2d_bf16``) on aarch64 targets with ``+bf16``; None elsewhere."""

    def __init__(self, tiles: bf16.Tiles = TILES):
        self.tiles = tiles

    def apply(self, func, target, tunable):  # noqa: ARG002 - one schedule, nothing tunable
        if not isinstance(func, tir.PrimFunc) or not has_bf16(target):
            return None
        sch = Schedule(func)
        found = bf16.find_blocks(sch)
        if found is None:
            return None
        register_intrinsics()
        bf16.schedule_native(sch, found, self.tiles, bf16.thread_slices(target), lanes=VECTOR,
                             dot_intrin=DOT_INTRIN, pairs_intrin=PAIRS_INTRIN, llvm_ir=LLVM_IR)
        return sch


__all__ = ["BF16_FEATURE", "has_bf16", "register_intrinsics", "PointwiseBF16Neon", "TILES"]
