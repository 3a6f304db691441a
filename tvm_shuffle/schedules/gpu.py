"""Default CUDA schedules: our convolution rule, then ``tvm.s_tir.dlight``'s GPU rules, each allowed to decline.

ShuffleNet at batch 1 is many small convolutions, and dlight's rules leave
most of a GPU idle on them. dlight has no depthwise rule: ``GeneralReduction``
gives each output pixel a block of 256 threads that split its 9 taps, 247
of them idle. Its ``Matmul`` takes the 1x1 convolutions in tiles so large that
ShuffleNetV2 1.0x's convolutions after stage 2 launch 8 to 32 blocks, on GPUs
with 40 to 132 SMs. :class:`DirectConv` gives each thread one output pixel
of one (depthwise) or a few (1x1) output channels instead: neighbouring
threads compute neighbouring pixels, so their reads and writes coalesce,
and the padding and any gather (the shuffle's index arithmetic,
:mod:`.kernels`) are inlined into the reads as predicates. The stem conv,
the pooling and the classifier stay with dlight.

Every GPU kernel needs a thread binding, so every kernel must get some rule;
``Fallback`` binds whatever the others leave. dlight's ``GEMV`` and
``Reduction`` take some convolutions for their own kind and then fail an
assertion (in TVM 0.27: ``GEMV`` on a depthwise convolution of a 1x1 plane,
``Reduction`` on a 1x1 convolution that reads through a gather), which would
abort the build: :class:`NotForConvolutions` offers them only kernels that
:func:`.analysis.conv_shape` does not find to be a convolution.
"""

from __future__ import annotations

from tvm_shuffle.schedules.analysis import conv_shape, inline_epilogue, iter_extents
from tvm_shuffle.schedules.constants import GPU, GPUConstants
from tvm_shuffle.schedules.int8_gpu import Int8GPU
from tvm_shuffle.schedules.tensorcore import TensorCoreConv
from tvm_shuffle.tvm_compat import Schedule, dlight, tir


def _is_gpu(target) -> bool:
    return "gpu" in target.keys


class DirectConv(dlight.ScheduleRule):
    """Depthwise and 1x1 NCHW convolutions with their epilogue: each thread owns a few outputs, sums in registers."""

    def __init__(self, constants: GPUConstants = GPU):
        self.constants = constants

    def apply(self, func, target, tunable):  # noqa: ARG002 - one schedule, nothing tunable
        if not _is_gpu(target) or not isinstance(func, tir.PrimFunc):
            return None
        sch = Schedule(func)
        shape = conv_shape(sch)
        if shape is None or shape.kind not in ("depthwise", "pointwise"):
            return None
        _direct(sch, *shape, self.constants)
        return sch


def channels_per_thread(channels: int, pixels: int, const: GPUConstants) -> int:
    """Output channels each thread of a 1x1 convolution sums (reusing each input load for all of them).

    The most, up to ``const.channels_per_thread``, that divide ``channels``
    and still leave ``const.min_blocks`` blocks; else 1: at batch 1 filling
    the GPU matters more than reuse.
    """
    for count in range(const.channels_per_thread, 1, -1):
        if channels % count == 0 and channels // count * pixels >= const.min_blocks * const.threads_per_block:
            return count
    return 1


def _direct(sch: Schedule, conv, producers: list, epilogue: list, kind: str, const: GPUConstants) -> None:
    for block in producers:
        sch.compute_inline(block)
    epilogue = inline_epilogue(sch, epilogue)
    n, c, y, x, *reduce = sch.get_loops(conv)
    extents = iter_extents(sch, conv)
    per_thread = 1 if kind == "depthwise" else channels_per_thread(extents[1], extents[2] * extents[3], const)
    c_out, c_in = sch.split(c, [None, per_thread])
    sch.reorder(n, c_out, y, x, *reduce, c_in)
    outputs = sch.fuse(n, c_out, y, x)
    total = extents[0] * extents[1] // per_thread * extents[2] * extents[3]
    blocks, threads = sch.split(outputs, [None, min(const.threads_per_block, total)])
    sch.bind(blocks, "blockIdx.x")
    sch.bind(threads, "threadIdx.x")
    for loop in [*reduce, c_in]:
        if int(sch.get(loop).extent) <= const.unroll_limit // 4:  # taps and channel tiles, not the input channels
            sch.unroll(loop)
    if epilogue is None:
        sch.reverse_compute_at(sch.cache_write(conv, 0, "local"), threads)
    else:
        sch.reverse_compute_at(epilogue, threads)
        sch.set_scope(conv, 0, "local")
    sch.annotate(threads, "pragma_auto_unroll_max_step", const.unroll_limit)
    sch.annotate(threads, "pragma_unroll_explicit", 1)
    sch.decompose_reduction(conv, reduce[0])


class NotForConvolutions(dlight.ScheduleRule):
    """``rule`` for every kernel but a convolution (which it would misread; see the module docstring)."""

    def __init__(self, rule):
        self.rule = rule

    def apply(self, func, target, tunable):
        if isinstance(func, tir.PrimFunc) and conv_shape(Schedule(func)) is not None:
            return None
        return self.rule.apply(func, target, tunable)


def custom_rules() -> tuple:
    """Our GPU rules (what untuned builds use and tuning starts from, where they apply).

    int8 kernels: :mod:`.int8_gpu`; fp16 and bf16 1x1 convolutions: :mod:`.tensorcore`.
    """
    return (Int8GPU(), TensorCoreConv(), DirectConv())


def default_rules() -> tuple:
    """Ours, then dlight's GPU rules, most specific first; ``Fallback`` binds whatever is left."""
    gpu = dlight.gpu
    return (*custom_rules(), gpu.Matmul(), NotForConvolutions(gpu.GEMV()), NotForConvolutions(gpu.Reduction()),
            gpu.GeneralReduction(), gpu.Fallback())
