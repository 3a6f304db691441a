"""Default CUDA schedules: our depthwise rule, then ``tvm.s_tir.dlight``'s GPU rules, each allowed to decline.

dlight has no rule for depthwise convolutions (ShuffleNet's only spatial
convolutions after the stem, gathered or not): its ``GeneralReduction``
gives each output pixel a block of 256 threads that split its 9 taps, 247 of
them idle. :class:`DepthwiseConv` gives each output pixel one thread instead;
neighbouring threads compute neighbouring pixels of a plane, so their reads
and writes coalesce, and the padding and any gather (the shuffle's index
arithmetic, :mod:`.kernels`) are inlined into the reads as predicates. The
1x1 convolutions, gathered or not, go to dlight's ``Matmul``, which stages
the (gathered) input through shared memory.

Every GPU kernel needs a thread binding, so every kernel must get some rule.
dlight tries its rules in order, but a rule that cannot handle a kernel may
raise instead of returning None (in TVM 0.27 ``GEMV`` asserts on a depthwise
convolution of a 1x1 plane, as ShuffleNetV2 0.5x has at 32x32 input), and
that aborts the whole build. :class:`Declining` turns such a failure into
"not my kind", so the next rule (ultimately ``Fallback``) schedules it.
"""

from __future__ import annotations

from tvm_shuffle.schedules.analysis import DEBUG, conv_shape, inline_epilogue, iter_extents
from tvm_shuffle.schedules.constants import GPU, GPUConstants
from tvm_shuffle.tvm_compat import Schedule, dlight, tir


def _is_gpu(target) -> bool:
    return "gpu" in target.keys


class DepthwiseConv(dlight.ScheduleRule):
    """A depthwise NCHW convolution with its epilogue: one thread per output pixel, sums in registers."""

    def __init__(self, constants: GPUConstants = GPU):
        self.constants = constants

    def apply(self, func, target, tunable):  # noqa: ARG002 - one schedule, nothing tunable
        if not _is_gpu(target) or not isinstance(func, tir.PrimFunc):
            return None
        sch = Schedule(func)
        shape = conv_shape(sch)
        if shape is None or shape[3] != "depthwise":
            return None
        try:
            _direct(sch, *shape[:3], self.constants)
        except Exception:  # a primitive refused this function: leave it to the next rule
            if DEBUG:
                raise
            return None
        return sch


def _direct(sch: Schedule, conv, producers: list, epilogue: list, const: GPUConstants) -> None:
    for block in producers:
        sch.compute_inline(block)
    epilogue = inline_epilogue(sch, epilogue)
    n, c, y, x, *taps = sch.get_loops(conv)
    pixels = sch.fuse(n, c, y, x)
    total = 1
    for extent in iter_extents(sch, conv)[:4]:
        total *= extent
    blocks, threads = sch.split(pixels, [None, min(const.threads_per_block, total)])
    sch.bind(blocks, "blockIdx.x")
    sch.bind(threads, "threadIdx.x")
    for tap in taps:
        sch.unroll(tap)
    if epilogue is None:
        sch.reverse_compute_at(sch.cache_write(conv, 0, "local"), threads)
    else:
        sch.reverse_compute_at(epilogue, threads)
        sch.set_scope(conv, 0, "local")
    sch.annotate(threads, "pragma_auto_unroll_max_step", const.unroll_limit)
    sch.annotate(threads, "pragma_unroll_explicit", 1)
    sch.decompose_reduction(conv, taps[0])


class Declining(dlight.ScheduleRule):
    """``rule``, except that an exception means it does not apply."""

    def __init__(self, rule):
        self.rule = rule

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except Exception:
            if DEBUG:
                raise
            return None


def custom_rules() -> tuple:
    """Our GPU rules (what untuned builds use and tuning starts from, where they apply)."""
    return (DepthwiseConv(),)


def default_rules() -> tuple:
    """Ours, then dlight's GPU rules, most specific first; ``Fallback`` binds whatever is left."""
    gpu = dlight.gpu
    return (*custom_rules(),
            *(Declining(rule) for rule in (gpu.Matmul(), gpu.GEMV(), gpu.Reduction(), gpu.GeneralReduction())),
            gpu.Fallback())
