"""int8 kernels on CUDA: the 1x1 convolutions (:mod:`.int8`) and the classifier (:mod:`.int8_dense`) with ``__dp4a``.

Both kernels hold the same stages (see their modules): the fp32 input
quantized to u8, four input channels in the bytes of one uint32 word
(``int8_quads`` / ``dense_int8_quads``), then s32 sums of
``unpack(word, j) * weight[o, 4k + j]`` over quads ``k`` and bytes ``j``
(``conv2d_int8`` / ``dense_int8``), a crop to fp32 and the fused epilogue.
One quad step is exactly what ``__dp4a(word, weight_word, acc)`` computes
(``dp4a.u32.s32``, sm_61 and later: the sum of four u8 x s8 products added
to an s32 accumulator), so :class:`Int8GPU` tensorizes the byte loop ``j``
with :data:`DP4A_INTRIN`, whose implementation calls it.

Each thread sums ``pixels x channels`` outputs (:func:`thread_tile`), the
most reuse that still leaves ``min_blocks`` blocks of threads (at batch 1
filling the GPU matters more than reuse, as for the fp32 convolutions of
:mod:`.gpu`): per quad step it reads its pixels' words and its channels'
weight words once and issues ``pixels x channels`` dp4a. In a block,
neighbouring threads take neighbouring pixels (the classifier: its batch
rows) of the same channels, so their input reads coalesce and their weight
reads are one broadcast.

The quantized input is staged in shared memory, :func:`quad_chunk` quads
at a time: the block's threads quantize the block's pixels together (each
fp32 input value once per block; every thread does one word after another,
neighbouring threads neighbouring pixels), then each reads its own words
from there. The padding and gathers in front of it (``int8_gather``,
``int8_pad``) are inlined into that quantization. The sums stay in
registers and the crop with the epilogue (scale, zero point's share, bias,
ReLU) writes them out from the same thread.

The weights are packed at build time into ``[K / 4, O, 4]`` (one int32
word per output channel and quad, the quads of one step side by side): a
copy of the weight parameter marked as layout-rewrite preprocessing, which
the build runs once on the constant (``build.weight_packing_passes``), as
the CPU rules do. Where the input channels are no whole number of quads
the padding stage (``int8_weights``) is that copy.
"""

from __future__ import annotations

import dataclasses
import functools

from tvm_shuffle.schedules import int8, int8_dense
from tvm_shuffle.schedules.analysis import child_blocks, iter_extents, largest_divisor
from tvm_shuffle.schedules.constants import GPU, GPUConstants
from tvm_shuffle.schedules.quads import pack_weights_by_quad, unpack
from tvm_shuffle.tvm_compat import Schedule, dlight, tir

DP4A_INTRIN = "tvm_shuffle_dp4a_u8s8s32"
DP4A_REFERENCE_INTRIN = "tvm_shuffle_dp4a_u8s8s32_reference"  # the same step in plain TIR (CPU checks)
SHARED_BYTES = 16384  # at most, for the quantized input of one block (a chunk of quads x its pixels)
PIXELS_PER_THREAD = (2, 1)  # candidates, most reuse first (with GPUConstants.channels_per_thread down to 1)
WARP = 32
PIXEL_THREADS = 4  # neighbouring threads of a block on neighbouring pixels (at least; 16 bytes of each fp32 row)


# ---------------------------------------------------------------------------
# Tensor intrinsic


@functools.lru_cache(maxsize=None)
def register_intrinsics() -> None:
    """Register :data:`DP4A_INTRIN` and :data:`DP4A_REFERENCE_INTRIN` with TVM, once.

    One step of both: one word of four u8 inputs (shared memory) times the
    four s8 weights of one output channel (an aligned int32 word) into one
    s32 sum (registers). The reference computes it in plain integer TIR on
    the same words (what the PTX ISA says ``dp4a.u32.s32`` does), so that a
    kernel scheduled with it runs on a CPU once its thread loops are serial.
    """
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    I64 = T.int64

    def step(body):
        @T.prim_func(s_tir=True)
        def func(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (I64(1),), "uint32", offset_factor=1, scope="shared")
            B = T.match_buffer(b, (I64(4),), "int8", offset_factor=4)
            C = T.match_buffer(c, (I64(1),), "int32", offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[I64(0)], A[I64(0)], B[I64(0):I64(4)])
                T.writes(C[I64(0)])
                body(A, B, C)
        return func

    @T.macro
    def desc(A, B, C):
        for j in range(I64(4)):
            with T.sblock("update"):
                vj = T.axis.remap("R", [j])
                C[I64(0)] = C[I64(0)] + unpack(A[I64(0)], vj) * T.Cast("int32", B[vj])

    @T.macro
    def dp4a(A, B, C):
        # The quad's four s8 weights, one aligned 32-bit load (offset_factor=4). TVM's CUDA codegen
        # prints int8x4 as int and, seeing it, declares __dp4a(unsigned int, int, int), that is
        # dp4a.u32.s32 (CUDA's own overloads take both words signed or both unsigned).
        C[I64(0)] = T.call_pure_extern("int32", "__dp4a", A[I64(0)], B.vload([I64(0)], "int8x4"), C[I64(0)])

    @T.macro
    def reference(A, B, C):
        # Byte j of the input word (u8) times byte j of the weight word (s8: shifted to the top, back down).
        word = T.reinterpret("int32", B.vload([I64(0)], "int8x4"))
        C[I64(0)] = C[I64(0)] + T.Cast("int32", A[I64(0)] & T.uint32(255)) * ((word << 24) >> 24) \
            + T.Cast("int32", (A[I64(0)] >> T.uint32(8)) & T.uint32(255)) * ((word << 16) >> 24) \
            + T.Cast("int32", (A[I64(0)] >> T.uint32(16)) & T.uint32(255)) * ((word << 8) >> 24) \
            + T.Cast("int32", A[I64(0)] >> T.uint32(24)) * (word >> 24)

    TensorIntrin.register(DP4A_INTRIN, step(desc), step(dp4a), override=True)
    TensorIntrin.register(DP4A_REFERENCE_INTRIN, step(desc), step(reference), override=True)


# ---------------------------------------------------------------------------
# Which kernel


@dataclasses.dataclass
class Int8Kernel:
    """The stages of an int8 kernel, found by name (:func:`find`)."""

    kind: str  # "pointwise" (conv2d_int8) or "dense" (dense_int8)
    inlined: list  # stages computed inside the quantization (gathers, padding)
    weights: object  # the weight padding stage (conv2d_int8 with channels no whole number of quads), or None
    quads: object
    sums: object
    crop: object
    epilogue: list


_LAYOUTS = {
    "pointwise": (int8.CONV, int8.QUADS, int8.CROP, (int8.GATHER, int8.PAD), int8.WEIGHTS),
    "dense": (int8_dense.DENSE, int8_dense.QUADS, int8_dense.CROP, (), None),
}


def find(sch: Schedule) -> Int8Kernel | None:
    """The stages of a :func:`.int8.pointwise_conv2d` or :func:`.int8_dense.dense` kernel, or None for any other."""
    blocks = list(child_blocks(sch))
    names = [sch.get(b).name_hint for b in blocks]
    for kind, (sums, quads, crop, inlined, weights) in _LAYOUTS.items():
        if sums not in names or quads not in names or crop not in names:
            continue
        position = names.index(sums)
        before = names[:position]
        if position + 1 == len(names) or names[position + 1] != crop or quads not in before \
                or any(name not in (quads, weights, *inlined) for name in before):
            return None
        if len(set(before)) != len(before) or len(sch.get_loops(blocks[position])) != (5 if kind == "pointwise" else 4):
            return None
        return Int8Kernel(kind, [blocks[i] for i, name in enumerate(before) if name in inlined],
                          blocks[names.index(weights)] if weights in before else None,
                          blocks[names.index(quads)], blocks[position], blocks[position + 1], blocks[position + 2:])
    return None


# ---------------------------------------------------------------------------
# Launch shape


@dataclasses.dataclass(frozen=True)
class Launch:
    """How :class:`Int8GPU` splits one kernel: a thread's tile, a block's threads, the shared stage."""

    pixels: int  # per thread (contiguous)
    channels: int  # per thread (contiguous output channels)
    pixel_threads: int  # neighbouring threads of a block, neighbouring pixel tiles
    channel_threads: int
    chunk: int  # quads staged in shared memory at a time

    @property
    def threads(self) -> int:
        return self.pixel_threads * self.channel_threads


def thread_tile(out_channels: int, pixels: int, images: int = 1, const: GPUConstants = GPU) -> tuple[int, int]:
    """``(pixels, channels)`` per thread: the most products per word read that leaves ``min_blocks`` full blocks.

    Channels divide ``out_channels`` and pixels divide ``pixels`` (of each of
    ``images``); when no tile leaves that many blocks, one output per thread.
    """
    tiles = [(p, c) for p in PIXELS_PER_THREAD for c in range(const.channels_per_thread, 0, -1)
             if pixels % p == 0 and out_channels % c == 0]
    tiles.sort(key=lambda t: (-(t[0] * t[1]) / (t[0] + t[1]), -t[1]))
    for p, c in tiles:
        if images * (out_channels // c) * (pixels // p) >= const.min_blocks * const.threads_per_block:
            return p, c
    return 1, 1


def quad_chunk(quads: int, pixels: int) -> int:
    """Quads staged in shared memory at a time for ``pixels`` pixels: the most (a divisor) in :data:`SHARED_BYTES`.

    Each chunk costs the block two barriers; ShuffleNet's are whole (its
    widest 1x1 convolution has 244 quads, a block at most 16 pixels).
    """
    return largest_divisor(quads, SHARED_BYTES // (4 * pixels))


def launch(out_channels: int, pixels: int, quads: int, images: int = 1, const: GPUConstants = GPU) -> Launch:
    """The :class:`Launch` of a kernel of ``images`` x ``out_channels`` x ``pixels`` outputs over ``quads`` quads.

    ``threads_per_block``, halved down to a warp while that leaves fewer
    than ``min_blocks`` blocks. A block is :data:`PIXEL_THREADS` pixel
    tiles wide (where they divide) and as many channel tiles deep as fit:
    the more channels a block covers, the fewer times each input word is
    quantized (once per block). Where the channel tiles have no divisor
    that fills half the block, it takes more pixel tiles instead. Every
    split divides its loop: a bounds test on the sums would keep them
    from being tensorized (TVM matches no predicated block to the
    intrinsic), and ShuffleNet's channels (58, 116, 232, 464: 29 x 2^k)
    rarely divide by powers of two, so a block may be 4 x 29 threads.
    """
    per_pixel, per_channel = thread_tile(out_channels, pixels, images, const)
    pixel_tiles, channel_tiles = pixels // per_pixel, out_channels // per_channel
    threads = const.threads_per_block
    while threads > WARP and images * pixel_tiles * channel_tiles // threads < const.min_blocks:
        threads //= 2
    pixel_threads = largest_divisor(pixel_tiles, PIXEL_THREADS)
    channel_threads = largest_divisor(channel_tiles, threads // pixel_threads)
    if 2 * pixel_threads * channel_threads <= threads:
        pixel_threads = largest_divisor(pixel_tiles, threads // channel_threads)
    return Launch(per_pixel, per_channel, pixel_threads, channel_threads,
                  quad_chunk(quads, pixel_threads * per_pixel))



# ---------------------------------------------------------------------------
# Schedule


class Int8GPU(dlight.ScheduleRule):
    """The int8 1x1 convolutions and classifier (blocks ``conv2d_int8``, ``dense_int8``) on GPUs, with ``__dp4a``."""

    def __init__(self, constants: GPUConstants = GPU):
        self.constants = constants

    def apply(self, func, target, tunable):  # noqa: ARG002 - one schedule, nothing tunable
        if "gpu" not in target.keys or not isinstance(func, tir.PrimFunc):
            return None
        sch = Schedule(func)
        kernel = find(sch)
        if kernel is None:
            return None
        register_intrinsics()
        schedule(sch, kernel, self.constants)
        return sch


def schedule(sch: Schedule, kernel: Int8Kernel, const: GPUConstants = GPU, intrin: str = DP4A_INTRIN) -> Launch:
    """Tile, bind, stage and tensorize ``kernel`` in ``sch`` (with ``intrin``); returns the launch shape chosen."""
    for block in reversed(kernel.epilogue):
        sch.reverse_compute_inline(block)
    for block in reversed(kernel.inlined):
        sch.compute_inline(block)
    crop, sums, quad_stage = kernel.crop, kernel.sums, kernel.quads
    if kernel.kind == "pointwise":
        width = iter_extents(sch, crop)[3]
        sch.transform_block_layout(crop, lambda n, o, h, w: (n, o, h * width + w))
        n, o, pixel, k, j = sch.get_loops(sums)
        outer = [n]
    else:
        pixel, o, k, j = sch.get_loops(sums)
        outer = []
    out_channels, pixels, quads = (int(sch.get(loop).extent) for loop in (o, pixel, k))
    shape = launch(out_channels, pixels, quads, int(sch.get(outer[0]).extent) if outer else 1, const)
    _pack_weights(sch, kernel, const.threads_per_block)
    p_block, p_thread, p_in = sch.split(pixel, [None, shape.pixel_threads, shape.pixels])
    o_block, o_thread, o_in = sch.split(o, [None, shape.channel_threads, shape.channels])
    k_out, k_in = sch.split(k, [None, shape.chunk])
    sch.reorder(*outer, o_block, p_block, o_thread, p_thread, k_out, k_in, o_in, p_in, j)
    blocks = sch.fuse(*outer, o_block, p_block)
    threads = sch.fuse(o_thread, p_thread)
    sch.bind(blocks, "blockIdx.x")
    sch.bind(threads, "threadIdx.x")
    sch.set_scope(sums, 0, "local")
    sch.reverse_compute_at(crop, threads)
    # The quantized input: the block's whole chunk, by all its threads (shared memory relaxes the thread loop).
    sch.set_scope(quad_stage, 0, "shared")
    sch.compute_at(quad_stage, k_out)
    loops = sch.get_loops(quad_stage)
    depth = next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(k_out))) + 1
    _, fetch_threads = sch.split(sch.fuse(*loops[depth:]), [None, shape.threads])
    sch.bind(fetch_threads, "threadIdx.x")
    sch.unroll(o_in)
    sch.unroll(p_in)
    sch.annotate(threads, "pragma_auto_unroll_max_step", const.unroll_limit)
    sch.annotate(threads, "pragma_unroll_explicit", 1)
    sch.decompose_reduction(sums, k_out)
    sch.tensorize(j, intrin)
    return shape


def _pack_weights(sch: Schedule, kernel: Int8Kernel, threads: int) -> None:
    """The s8 weights as ``[K / 4, O, 4]``, packed once at build time (layout-rewrite preprocessing).

    The packing block is a copy of the weight parameter (or the padding
    stage, ``int8_weights``, 2-D or 4-D); the build folds it into the
    constant where it can evaluate it (``build.run_copies``: copies, the
    padding's clamped index). Its loops are bound to GPU threads all the
    same, so that where the build cannot fold it, it stays a kernel of its
    own that runs (it is split out of this one) instead of failing to build.
    """
    packed = pack_weights_by_quad(sch, kernel.sums, kernel.weights)
    _, inner = sch.split(sch.fuse(*sch.get_loops(packed)), [None, threads])
    outer = sch.get_loops(packed)[0]
    sch.bind(outer, "blockIdx.x")
    sch.bind(inner, "threadIdx.x")


__all__ = ["DP4A_INTRIN", "Int8GPU", "Int8Kernel", "Launch", "find", "launch", "thread_tile", "quad_chunk",
           "schedule", "register_intrinsics", "DP4A_REFERENCE_INTRIN"]
