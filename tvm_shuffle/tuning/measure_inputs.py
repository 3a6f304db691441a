"""Kernel inputs for measuring a candidate: random floats, zeros for integer tensors.

MetaSchedule fills every argument of a kernel with random data. A gather
(``take``, as the fused channel shuffles use) reads its float input at the
positions its integer argument holds, and random integers point far out of
bounds: the runner process crashes and every candidate of that task fails.
Zero is a valid index for any gather; it makes the measured gather somewhat
friendlier to the cache than the real permutation, which is the price.

These run in the runners' worker processes (MetaSchedule imports them there
by module path).
"""

from __future__ import annotations

import numpy as np

from tvm_shuffle.tvm_compat import tvm

RANDOM_FILL = "tvm.contrib.random.random_fill_for_measure"


def _filler(random_fill):
    def fill(tensor) -> None:
        if str(tensor.dtype).startswith(("float", "bfloat")):
            random_fill(tensor)
        else:
            tensor.copyfrom(np.zeros([int(d) for d in tensor.shape], dtype=str(tensor.dtype)))

    return fill


def local(device, args_info, alloc_repeat: int):
    """``f_alloc_argument`` for MetaSchedule's ``LocalRunner``."""
    from tvm_shuffle.tvm_compat import ms

    fill = _filler(tvm.get_global_func(RANDOM_FILL))
    return ms.runner.utils.alloc_argument_common(fill, device, args_info, alloc_repeat)


def remote(session, device, args_info, alloc_repeat: int):
    """``f_alloc_argument`` for MetaSchedule's ``RPCRunner`` (the filler runs on the device)."""
    from tvm_shuffle.tvm_compat import ms

    fill = _filler(session.get_function(RANDOM_FILL))
    return ms.runner.utils.alloc_argument_common(fill, device, args_info, alloc_repeat)
