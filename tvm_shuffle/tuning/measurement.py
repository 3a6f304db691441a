"""How a candidate is measured: its inputs, and one robust number per candidate.

Inputs: MetaSchedule fills every argument of a kernel with random data. A
gather (``take``, as the fused channel shuffles use) reads its float input at
the positions its integer argument holds, and random integers point far out
of bounds: the runner process crashes and every candidate of that task
fails. Zero is a valid index for any gather; it makes the measured gather
somewhat friendlier to the cache than the real permutation.

Timing: MetaSchedule keeps the mean of one long repeat. On a machine shared
with other work, a candidate timed while another process held a core looks
slower than it is, and a worse one timed in a quiet moment wins. Here each
candidate runs :data:`EVALUATOR`'s ``repeat`` short repeats and keeps the
fastest: other load only ever adds time.

These functions run in the runners' worker processes (MetaSchedule imports
them there by module path).
"""

from __future__ import annotations

import numpy as np

from tvm_shuffle.tvm_compat import ms, tvm

RANDOM_FILL = "tvm.contrib.random.random_fill_for_measure"
# Same time per candidate as MetaSchedule's default (1 repeat of >= 100 ms), in 5 samples.
EVALUATOR = ms.runner.EvaluatorConfig(number=1, repeat=5, min_repeat_ms=20, enable_cpu_cache_flush=False)


def _filler(random_fill):
    def fill(tensor) -> None:
        if str(tensor.dtype).startswith(("float", "bfloat")):
            random_fill(tensor)
        else:
            tensor.copyfrom(np.zeros([int(d) for d in tensor.shape], dtype=str(tensor.dtype)))

    return fill


def local_inputs(device, args_info, alloc_repeat: int):
    """``f_alloc_argument`` for MetaSchedule's ``LocalRunner``."""
    fill = _filler(tvm.get_global_func(RANDOM_FILL))
    return ms.runner.utils.alloc_argument_common(fill, device, args_info, alloc_repeat)


def remote_inputs(session, device, args_info, alloc_repeat: int):
    """``f_alloc_argument`` for MetaSchedule's ``RPCRunner`` (the filler runs on the device)."""
    fill = _filler(session.get_function(RANDOM_FILL))
    return ms.runner.utils.alloc_argument_common(fill, device, args_info, alloc_repeat)


def local_fastest(rt_mod, device, evaluator_config, repeated_args) -> list[float]:
    """``f_run_evaluator`` for ``LocalRunner``: the fastest repeat, as a one-element list."""
    return [min(ms.runner.utils.run_evaluator_common(rt_mod, device, evaluator_config, repeated_args))]


def remote_fastest(session, rt_mod, device, evaluator_config, repeated_args) -> list[float]:
    """``f_run_evaluator`` for ``RPCRunner``."""
    return local_fastest(rt_mod, device, evaluator_config, repeated_args)
