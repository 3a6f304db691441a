"""The int8 classifier: a fully connected layer as u8 x s8 -> s32 dot products, fp32 in and out.

``--quantize int8`` quantizes the classifier (``x @ W``, constant weights)
as it does the 1x1 convolutions (:mod:`tvm_shuffle.quantize`): weights s8,
symmetric per output feature; the input u8 per tensor from the calibrated
range. ShuffleNet's classifier holds 1024 x 1000 weights, 45 % of
ShuffleNetV2 1.0x's and 75 % of 0.5x's: at batch 1 its fp32 matrix-vector
product reads 4 MB per inference, the s8 one 1 MB.

The compute (:func:`dense`) quantizes the input into uint32 words of four
features (:func:`.quads.pack_quad`) and sums ``unpack(x_q[k], j) *
W[o, 4k + j]`` over features; the weights come padded by the graph pass to
whole quads of features and whole vectors of outputs. :class:`DenseInt8`
schedules it with the orientation of TVM's own ``dot_16x4_vnni``: 16 output
features per vector, the input quad broadcast, the weights packed at build
time as ``[O / 16, K / 4, 16, 4]``, :data:`ACCUMULATORS` vectors of sums
interleaved so that the chains of ``vpdpbusd`` overlap.

Stages (block names): ``dense_int8_quads`` (the quantized input),
``dense_int8`` (the s32 sums over the padded outputs), ``dense_int8_crop``
(the real outputs as fp32, which the fused epilogue joins).
"""

from __future__ import annotations

import functools

from tvm_shuffle.schedules.analysis import child_blocks
from tvm_shuffle.schedules import int8_arm
from tvm_shuffle.schedules.bf16 import LANES, LAYOUT_REWRITE_PREPROC, MIN_PARALLEL_WORK, i64, shape64
from tvm_shuffle.schedules.int8 import has_vnni
from tvm_shuffle.schedules.quads import QUAD, InputQuant, pack_quad, unpack
from tvm_shuffle.tvm_compat import Schedule, dlight, te, tir

DENSE = "dense_int8"
QUADS = "dense_int8_quads"
CROP = "dense_int8_crop"
DOT_INTRIN = "tvm_shuffle_vpdpbusd_dense_16x4"
ACCUMULATORS = 8  # vectors of 16 sums in flight (a divisor of the output vectors at most this)


def padded_shape(out_features: int, features: int) -> tuple[int, int]:
    """The weights' shape :func:`dense` takes: outputs to whole vectors of :data:`LANES`, features to whole quads."""
    return -(-out_features // LANES) * LANES, -(-features // QUAD) * QUAD


def dense(x: te.Tensor, weight: te.Tensor, *, quant: InputQuant, out_features: int) -> te.Tensor:
    """``x`` (N x K, fp32) times the s8 weights ``weight`` (:func:`padded_shape` of ``out_features`` x K), as fp32 s32 sums."""
    batch, features = (int(d) for d in x.shape)
    padded_out, padded_features = (int(d) for d in weight.shape)
    quads = padded_features // QUAD
    quad_input = te.compute(shape64(batch, quads),
                            lambda n, k: pack_quad(lambda c: x[n, c], k, features, quant), name=QUADS)
    k = te.reduce_axis((i64(0), i64(quads)), "rk")
    j = te.reduce_axis((i64(0), i64(QUAD)), "rj")
    sums = te.compute(shape64(batch, padded_out),
                      lambda n, o: te.sum(unpack(quad_input[n, k], j) * weight[o, k * i64(QUAD) + j].astype("int32"),
                                          axis=[k, j]), name=DENSE)
    return te.compute(shape64(batch, out_features), lambda n, o: sums[n, o].astype("float32"), name=CROP)


@functools.lru_cache(maxsize=None)
def register_intrinsics() -> None:
    """Register the ``vpdpbusd`` step of :func:`dense` (one input quad broadcast, 16 outputs x 4 s8 weights), once."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    I64 = T.int64

    @T.prim_func(s_tir=True)
    def dot_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (I64(1),), "uint32", offset_factor=1)
        B = T.match_buffer(b, (I64(16), I64(4)), "int8", offset_factor=64)
        C = T.match_buffer(c, (I64(16),), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[I64(0):I64(16)], A[I64(0):I64(1)], B[I64(0):I64(16), I64(0):I64(4)])
            T.writes(C[I64(0):I64(16)])
            for i, k in T.grid(I64(16), I64(4)):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + unpack(A[I64(0)], vk) * T.Cast("int32", B[vi, vk])

    @T.prim_func(s_tir=True)
    def dot_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (I64(1),), "uint32", offset_factor=1)
        B = T.match_buffer(b, (I64(16), I64(4)), "int8", offset_factor=64)
        C = T.match_buffer(c, (I64(16),), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[I64(0):I64(16)], A[I64(0):I64(1)], B[I64(0):I64(16), I64(0):I64(4)])
            T.writes(C[I64(0):I64(16)])
            B8 = T.decl_buffer((64,), "int8", data=B.data, elem_offset=B.elem_offset)
            C[T.ramp(0, 1, 16)] = T.call_llvm_pure_intrin(
                "int32x16", "llvm.x86.avx512.vpdpbusd.512", C[T.ramp(0, 1, 16)],
                T.reinterpret(T.broadcast(A[0], 16), dtype="int8x64"), B8[T.ramp(0, 1, 64)])

    TensorIntrin.register(DOT_INTRIN, dot_desc, dot_impl, override=True)


class DenseInt8(dlight.ScheduleRule):
    """The kernels of :func:`dense` (a block named ``dense_int8``), with their fused epilogue."""

    def apply(self, func, target, tunable):  # noqa: ARG002 - one schedule, nothing tunable
        if target.kind.name != "llvm" or not isinstance(func, tir.PrimFunc):
            return None
        sch = Schedule(func)
        blocks = list(child_blocks(sch))
        names = [sch.get(b).name_hint for b in blocks]
        if names[:3] != [QUADS, DENSE, CROP]:
            return None
        sums = blocks[1]  # after the quantized input, computed first and whole (a row of quads per image)
        for block in reversed(blocks[3:]):
            sch.reverse_compute_inline(block)
        if int8_arm.has_dotprod(target):
            int8_arm.schedule_dense(sch, sums, target)
            return sch
        native = has_vnni(target)
        n, o, k, j = sch.get_loops(sums)
        padded_out = int(sch.get(o).extent)
        vectors = padded_out // LANES
        limit = int8_arm.PLAIN_DENSE_ACCUMULATORS if int8_arm.is_aarch64(target) else ACCUMULATORS
        accumulators = max(a for a in range(1, limit + 1) if vectors % a == 0)
        o_out, o_mid, o_in = sch.split(o, [None, accumulators, LANES])
        # vpdpbusd takes 16 outputs x 4 features per step; plain integer code one feature of 16 outputs per step.
        sch.reorder(n, o_out, k, o_mid, o_in, j) if native else sch.reorder(n, o_out, k, o_mid, j, o_in)
        writeback = sch.cache_write(sums, 0, "local")
        sch.reverse_compute_at(writeback, o_out)
        sch.vectorize(sch.get_loops(writeback)[-1])
        _pack_weights(sch, sums)
        outer = sch.fuse(n, o_out)
        # The work is every weight (a batch-1 classifier reads 1 MB of them): threads share the outputs.
        if int(sch.get(outer).extent) * accumulators * LANES * int(sch.get(k).extent) >= MIN_PARALLEL_WORK:
            sch.parallel(outer)
        sch.unroll(o_mid)
        if not native:
            sch.vectorize(o_in)
        sch.decompose_reduction(sums, k)
        if native:
            register_intrinsics()
            sch.tensorize(o_in, DOT_INTRIN)
        return sch


def _pack_weights(sch: Schedule, sums) -> None:
    """The s8 weights as ``[O / 16, K / 4, 16, 4]``: a copy of the parameter the build runs once on the constant."""
    weight = next(index for index, read in enumerate(sch.get(sums).reads) if str(read.source.dtype) == "int8")
    packed = sch.cache_read(sums, weight, "global")
    sch.transform_layout(packed, ("write", 0), lambda o, c: (o // LANES, c // QUAD, o % LANES, c % QUAD),
                         assume_injective_transform=True)
    sch.annotate(packed, LAYOUT_REWRITE_PREPROC, True)


__all__ = ["DENSE", "ACCUMULATORS", "padded_shape", "dense", "register_intrinsics", "DenseInt8"]
