"""fp16 and bf16 1x1 convolutions on CUDA tensor cores (``--precision fp16``, ``--precision bf16``).

The compute (:func:`pointwise_conv2d`) is a matrix product: pixels x input
channels (the input, rounded to the weights' dtype) times input channels x
output channels (the weights), summed in fp32. Every dimension is padded
with zeros to a whole number of 16 (a 7x7 plane computes 64 pixels, 58
channels compute 64): the operand tiles of ``wmma`` are 16 x 16 x 16.

Stages of the kernel, in order (block names):

* ``mma_weights``: the weights as ``[O, K]`` padded to 16 (a copy marked
  as layout-rewrite preprocessing, which the build runs once on the
  constant: ``build.weight_packing_passes``);
* ``mma_input``: the gathered NCHW input as ``[pixels, K]`` in fp16/bf16,
  zero-padded (the gather and the conversion in one read);
* ``conv2d_mma``: the fp32 sums ``[pixels, O]`` over the padded channels;
* ``conv2d_mma_crop``: the real pixels and channels back in NCHW (the
  fused epilogue joins it).

:class:`TensorCoreConv` schedules it. Each warp owns one 16 x 16 tile of
sums (16 pixels x 16 output channels) in a ``wmma.accumulator`` fragment
and steps through the input channels 16 at a time with ``mma_sync``; a
block is up to :data:`WARPS` warps side by side along the output channels,
so they share the block's input tile, which its threads convert into
shared memory :func:`channel_chunk` channels at a time (neighbouring
threads neighbouring pixels of one channel: the fp32 reads coalesce). The
weights' fragments load straight from global memory (every block reads
different ones once). The sums go to (dynamic) shared memory, and the
block's threads write the real outputs through the crop and the epilogue
(bias, ReLU, ...), neighbouring threads neighbouring pixels. At batch 1
ShuffleNet is launch-bound and its 1x1 convolutions are small (7x7 to
56x56 planes, 24 to 1024 channels): one warp per 256 sums launches 60
(7x7, 232 channels) to 784 (56x56, 58 channels) warps per convolution of
ShuffleNetV2 1.0x, where larger warp tiles would leave most of a GPU idle.

``mma_sync`` of fp16 (sm_70 and later) and bf16 (sm_80 and later; older
GPUs have no bf16 tensor cores) with fp32 accumulators. Where the target
has no tensor cores for the dtype (:func:`has_tensor_cores`) the same
compute runs on plain threads, one output each, the rounded values widened
to fp32 (storage-only).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools

from tvm_shuffle.schedules.analysis import child_blocks
from tvm_shuffle.schedules.bf16 import LAYOUT_REWRITE_PREPROC, fold_epilogue, i64, shape64
from tvm_shuffle.schedules.constants import GPU, GPUConstants
from tvm_shuffle.tvm_compat import Schedule, dlight, target_has_feature, te, tir

CONV = "conv2d_mma"
CROP = "conv2d_mma_crop"
INPUT = "mma_input"
WEIGHTS = "mma_weights"
TILE = 16  # m = n = k of one wmma step
WARP = 32
WARPS = 4  # at most, per block (along the output channels)
SHARED_BYTES = 16384  # at most, for a block's input tile (16 pixels x a chunk of channels)
DTYPES = ("float16", "bfloat16")
# Oldest compute capability whose tensor cores take the dtype (wmma fp16: sm_70; bf16: sm_80).
MIN_ARCH = {"float16": "sm_70", "bfloat16": "sm_80"}

_ON_TENSOR_CORES: contextvars.ContextVar[bool] = contextvars.ContextVar("tensor_core_convs", default=False)


@contextlib.contextmanager
def on_tensor_cores():
    """Make the bf16 1x1 convolutions lowered inside tensor-core kernels (:func:`pointwise_conv2d`).

    A bf16 convolution is an AVX512_BF16 kernel (:mod:`.bf16`) outside;
    fp16 convolutions are always tensor-core kernels (fp16 is a GPU
    precision).
    """
    token = _ON_TENSOR_CORES.set(True)
    try:
        yield
    finally:
        _ON_TENSOR_CORES.reset(token)


def computes(weight_dtype: str) -> bool:
    """Whether a 1x1 convolution with weights of ``weight_dtype`` is a :func:`pointwise_conv2d` kernel here."""
    return weight_dtype == "float16" or (weight_dtype == "bfloat16" and _ON_TENSOR_CORES.get())


# ---------------------------------------------------------------------------
# Compute


def padded(extent: int) -> int:
    """``extent`` rounded up to a whole number of :data:`TILE`."""
    return -(-extent // TILE) * TILE


def pointwise_conv2d(*tensors: te.Tensor, gather, out_dtype: str = "float32") -> te.Tensor:
    """1x1 NCHW conv2d of the gathered input (see :mod:`.kernels`) with fp16/bf16 weights ``tensors[-1]``.

    Inputs are rounded to the weights' dtype (to nearest even), products
    and sums are fp32; the result is NCHW in ``out_dtype``.
    """
    *sources, weight = tensors
    dtype = str(weight.dtype)
    batch, _, height, width = (int(d) for d in sources[0].shape)
    out_channels, channels = (int(d) for d in weight.shape[:2])
    pixels = height * width
    zero = i64(0)
    weights = te.compute(shape64(padded(out_channels), padded(channels)),
                         lambda o, k: tir.if_then_else(
                             tir.all(o < i64(out_channels), k < i64(channels)),
                             weight[tir.min(o, i64(out_channels - 1)), tir.min(k, i64(channels - 1)), zero, zero],
                             tir.const(0, dtype)), name=WEIGHTS)
    data = te.compute(shape64(batch, padded(pixels), padded(channels)),
                      lambda n, p, k: tir.if_then_else(
                          tir.all(p < i64(pixels), k < i64(channels)),
                          gather.read(sources, n, k, p // i64(width), p % i64(width)),
                          tir.const(0, "float32")).astype(dtype), name=INPUT)
    k = te.reduce_axis((zero, i64(padded(channels))), "rk")
    conv = te.compute(shape64(batch, padded(pixels), padded(out_channels)),
                      lambda n, p, o: te.sum(data[n, p, k].astype("float32") * weights[o, k].astype("float32"),
                                             axis=k), name=CONV)
    return te.compute(shape64(batch, out_channels, height, width),
                      lambda n, o, h, w: conv[n, h * i64(width) + w, o].astype(out_dtype), name=CROP)


# ---------------------------------------------------------------------------
# Tensor intrinsics


@dataclasses.dataclass(frozen=True)
class Intrinsics:
    """Names of the wmma steps of one input dtype (registered by :func:`register_intrinsics`)."""

    load_a: str  # 16 x 16 input tile, shared memory -> wmma.matrix_a (row-major: pixels x channels)
    load_b: str  # 16 x 16 weight tile, global memory -> wmma.matrix_b (stored [O, K]: column-major)
    sync: str  # C += A x B^T, fp32 accumulators
    fill: str  # C = 0
    store: str  # C -> dynamic shared memory


def intrinsics(dtype: str) -> Intrinsics:
    tag = {"float16": "f16", "bfloat16": "bf16"}[dtype]
    return Intrinsics(f"tvm_shuffle_wmma_load_{tag}_a_shared", f"tvm_shuffle_wmma_load_{tag}_b_trans_global",
                      f"tvm_shuffle_wmma_sync_{tag}{tag}f32_trans", "tvm_shuffle_wmma_fill_f32",
                      "tvm_shuffle_wmma_store_f32_shared_dyn")


@functools.lru_cache(maxsize=None)
def register_intrinsics() -> None:
    """Register the wmma steps of :data:`DTYPES` with TVM, once (TVM registers fp16 only, and loads from shared)."""
    from tvm.s_tir import TensorIntrin

    from tvm_shuffle.tvm_compat import cuda_tensor_intrinsics

    cuda = cuda_tensor_intrinsics()
    accumulator = intrinsics(DTYPES[0])
    TensorIntrin.register(accumulator.fill, *cuda.get_wmma_fill_intrin(TILE, TILE, TILE, "float32"), override=True)
    TensorIntrin.register(accumulator.store, *cuda.get_wmma_store_intrin(TILE, TILE, TILE, "float32", "shared.dyn"),
                          override=True)
    for dtype in DTYPES:
        names = intrinsics(dtype)
        TensorIntrin.register(names.load_a, *cuda.get_wmma_load_intrin(TILE, TILE, TILE, dtype, "shared", False,
                                                                       False), override=True)
        TensorIntrin.register(names.load_b, *cuda.get_wmma_load_intrin(TILE, TILE, TILE, dtype, "global", True, True),
                              override=True)
        TensorIntrin.register(names.sync, *cuda.get_wmma_sync_intrin(TILE, TILE, TILE, dtype, "float32", True),
                              override=True)


# ---------------------------------------------------------------------------
# Which kernel


@dataclasses.dataclass
class Kernel:
    """The stages of a :func:`pointwise_conv2d` kernel, found by name (:func:`find`)."""

    weights: object
    data: object
    conv: object
    crop: object
    epilogue: list
    dtype: str


def find(sch: Schedule) -> Kernel | None:
    """The stages of a :func:`pointwise_conv2d` kernel, or None for any other kernel."""
    blocks = list(child_blocks(sch))
    names = [sch.get(b).name_hint for b in blocks]
    if names[:4] not in ([WEIGHTS, INPUT, CONV, CROP], [INPUT, WEIGHTS, CONV, CROP]):
        return None
    at = {name: blocks[i] for i, name in enumerate(names[:4])}
    dtype = str(sch.get(at[INPUT]).writes[0].source.dtype)
    return Kernel(at[WEIGHTS], at[INPUT], at[CONV], at[CROP], blocks[4:], dtype)


def has_tensor_cores(target, dtype: str) -> bool:
    """Whether the CUDA ``target`` (its ``arch``) has tensor cores that multiply ``dtype``."""
    return target_has_feature(target, MIN_ARCH[dtype])


# ---------------------------------------------------------------------------
# Launch shape


def warps_per_block(out_tiles: int) -> int:
    """Warps of a block, side by side along the output channels: the most, up to :data:`WARPS`, that divide them."""
    return max(w for w in range(1, WARPS + 1) if out_tiles % w == 0)


def channel_chunk(channels: int) -> int:
    """Input channels a block converts into shared memory at a time: the most (whole tiles, a divisor) in :data:`SHARED_BYTES`."""
    tiles = channels // TILE
    fit = SHARED_BYTES // (TILE * 2 * TILE)
    return TILE * max(t for t in range(1, min(tiles, fit) + 1) if tiles % t == 0)


# ---------------------------------------------------------------------------
# Schedule


class TensorCoreConv(dlight.ScheduleRule):
    """The fp16/bf16 1x1 convolutions (a block named ``conv2d_mma``) with their epilogue, on tensor cores."""

    def __init__(self, constants: GPUConstants = GPU):
        self.constants = constants

    def apply(self, func, target, tunable):  # noqa: ARG002 - one schedule, nothing tunable
        if "gpu" not in target.keys or not isinstance(func, tir.PrimFunc):
            return None
        sch = Schedule(func)
        kernel = find(sch)
        if kernel is None:
            return None
        if has_tensor_cores(target, kernel.dtype):
            register_intrinsics()
            schedule(sch, kernel, self.constants)
        else:
            schedule_storage_only(sch, kernel, self.constants)
        return sch


def _pack_weights(sch: Schedule, kernel: Kernel, threads: int) -> None:
    """The padded ``[O, K]`` weights, run once at build time; bound to threads where the build cannot fold it."""
    sch.annotate(kernel.weights, LAYOUT_REWRITE_PREPROC, True)
    _, inner = sch.split(sch.fuse(*sch.get_loops(kernel.weights)), [None, threads])
    sch.bind(sch.get_loops(kernel.weights)[0], "blockIdx.x")
    sch.bind(inner, "threadIdx.x")


def schedule(sch: Schedule, kernel: Kernel, const: GPUConstants = GPU, *, tensorize: bool = True) -> int:
    """Tile, bind, stage and (``tensorize``) tensorize ``kernel`` in ``sch``; returns the warps per block.

    ``tensorize=False`` leaves each 16 x 16 x 16 step as plain loops over
    the same fragments (what the CPU checks run serially).
    """
    names = intrinsics(kernel.dtype)
    crop = fold_epilogue(sch, kernel.crop, kernel.epilogue)
    _pack_weights(sch, kernel, const.threads_per_block)
    conv = kernel.conv
    n, p, o, k = sch.get_loops(conv)
    out_tiles = int(sch.get(o).extent) // TILE
    channels = int(sch.get(k).extent)
    warps = warps_per_block(out_tiles)
    p_block, p_tile = sch.split(p, [None, TILE])
    o_block, o_warp, o_tile = sch.split(o, [None, warps, TILE])
    k_chunk, k_step, k_tile = sch.split(k, [None, channel_chunk(channels) // TILE, TILE])
    sch.reorder(n, p_block, o_block, o_warp, k_chunk, k_step, p_tile, o_tile, k_tile)
    blocks = sch.fuse(n, p_block, o_block)
    sch.bind(blocks, "blockIdx.x")
    sch.bind(o_warp, "threadIdx.y")
    # The sums: a fragment per warp, stored to shared memory, cropped by the block's threads.
    accumulator = sch.cache_write(conv, 0, "wmma.accumulator")
    sch.reverse_compute_at(accumulator, o_warp)
    # The conv's own output buffer, between the store and the crop. Dynamic shared memory: TVM's storage
    # rewrite would give static fp32 sums the fp16 input tile's allocation, and the store's typed pointer
    # then fails to lower (planes of no whole number of tiles); dynamic allocations are merged by byte offset.
    sch.set_scope(accumulator, 0, "shared.dyn")
    sch.reverse_compute_at(crop, blocks)
    _bind_threads(sch, sch.fuse(*sch.get_loops(crop)[1:]), warps)
    # The input tile: converted by the block's threads into shared memory, a chunk of channels at a time.
    sch.set_scope(kernel.data, 0, "shared")
    sch.compute_at(kernel.data, k_chunk)
    *_, data_p, data_k = sch.get_loops(kernel.data)
    sch.reorder(data_k, data_p)  # neighbouring threads on neighbouring pixels of a channel: coalesced fp32 reads
    _bind_threads(sch, sch.fuse(data_k, data_p), warps)
    fragment_a = sch.cache_read(conv, 0, "wmma.matrix_a")
    fragment_b = sch.cache_read(conv, 1, "wmma.matrix_b")
    sch.compute_at(fragment_a, k_step)
    sch.compute_at(fragment_b, k_step)
    init = sch.decompose_reduction(conv, k_chunk)
    if tensorize:
        sch.tensorize(sch.get_loops(fragment_a)[-2], names.load_a)
        sch.tensorize(sch.get_loops(fragment_b)[-2], names.load_b)
        sch.tensorize(p_tile, names.sync)
        sch.tensorize(sch.get_loops(init)[-2], names.fill)
        sch.tensorize(sch.get_loops(accumulator)[-2], names.store)
    return warps


def _bind_threads(sch: Schedule, loop, warps: int) -> None:
    """``loop`` over the block's ``warps x 32`` threads (threadIdx.y, threadIdx.x), as many rounds as it takes."""
    _, warp, lane = sch.split(loop, [None, warps, WARP])
    sch.bind(warp, "threadIdx.y")
    sch.bind(lane, "threadIdx.x")


def schedule_storage_only(sch: Schedule, kernel: Kernel, const: GPUConstants = GPU) -> None:
    """One output per thread, the rounded input and weights widened to fp32 in registers (no tensor cores)."""
    crop = fold_epilogue(sch, kernel.crop, kernel.epilogue)
    _pack_weights(sch, kernel, const.threads_per_block)
    sch.compute_inline(kernel.data)
    blocks, threads = sch.split(sch.fuse(*sch.get_loops(crop)), [None, const.threads_per_block])
    sch.bind(blocks, "blockIdx.x")
    sch.bind(threads, "threadIdx.x")
    sch.set_scope(kernel.conv, 0, "local")
    sch.compute_at(kernel.conv, threads)
