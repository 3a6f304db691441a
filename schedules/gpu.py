"""Default CUDA schedules: ``tvm.s_tir.dlight``'s GPU rules, each allowed to decline.

Every GPU kernel needs a thread binding, so every kernel must get some rule.
dlight tries its rules in order, but a rule that cannot handle a kernel may
raise instead of returning None (in TVM 0.27 ``GEMV`` asserts on a depthwise
convolution of a 1x1 plane, as ShuffleNetV2 0.5x has at 32x32 input), and
that aborts the whole build. :class:`Declining` turns such a failure into
"not my kind", so the next rule (ultimately ``Fallback``) schedules it.
"""

from __future__ import annotations

from tvm_shuffle.schedules.cpu import DEBUG
from tvm_shuffle.tvm_compat import dlight


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


def default_rules() -> tuple:
    """dlight's GPU rules, most specific first; ``Fallback`` binds whatever is left."""
    gpu = dlight.gpu
    return (*(Declining(rule) for rule in (gpu.Matmul(), gpu.GEMV(), gpu.Reduction(), gpu.GeneralReduction())),
            gpu.Fallback())
