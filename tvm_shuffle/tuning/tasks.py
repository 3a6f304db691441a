"""Tuning tasks: the fused TIR kernels of a lowered model, and their tuning contexts.

The tasks come from :func:`tvm_shuffle.build.lower`, the same passes the
build runs before it applies the database, so every tuned kernel is found
again at build time (by structural hash).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Sequence

from tvm_shuffle import tvm_compat
from tvm_shuffle.targets import TargetSpec
from tvm_shuffle.tvm_compat import derived_object, estimate_tir_flops, ms, tvm

# Rough roofline weight of one byte moved against one FLOP on the CPUs we
# target (tens of GFLOP/s vs. a few to tens of GB/s for these kernels), so
# the channel-shuffle copies, which have no FLOPs, are not ranked last.
FLOPS_PER_BYTE = 5.0


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    mod: "tvm.IRModule"  # one PrimFunc named "main": the workload MetaSchedule keys records by
    weight: int  # calls per inference
    flops: float
    bytes: int

    @property
    def cost(self) -> float:
        """Relative share of an inference, for ordering (not a time)."""
        return self.weight * (self.flops + FLOPS_PER_BYTE * self.bytes)


def tuning_target(spec: TargetSpec, *, host_cores: int) -> "tvm.target.Target":
    """The spec's target, plus the ``num-cores`` MetaSchedule's CPU rules require.

    The presets leave threads to ``TVM_NUM_THREADS`` at run time; for tuning a
    host target we use this machine's physical cores.
    """
    target = dict(spec.target)
    if target.get("kind") == "llvm" and "num-cores" not in target:
        target["num-cores"] = host_cores
    from tvm_shuffle import tvm_compat

    return tvm_compat.make_target(target, spec.host)


def extract(lowered: "tvm.IRModule", target: "tvm.target.Target") -> list[Task]:
    """The model's distinct kernels, most expensive first."""
    tasks = []
    for extracted in ms.relax_integration.extract_tasks(lowered, target):
        mod = extracted.dispatched[0]
        tasks.append(Task(name=extracted.task_name, mod=mod, weight=int(extracted.weight),
                          flops=float(estimate_tir_flops(mod)), bytes=_buffer_bytes(mod)))
    return sorted(tasks, key=lambda t: -t.cost)


def trials_per_batch(budget: int, n_tasks: int) -> int:
    """Candidates per task per batch.

    MetaSchedule's gradient scheduler first gives every task one batch, then
    spends the rest on the tasks whose latency improves fastest; this sizes
    that first round at about half the budget. Each batch costs a fixed
    evolutionary-search time whatever its size, so batches have at least 8.
    """
    return max(8, min(64, math.ceil(budget / max(1, 2 * n_tasks))))


def contexts(tasks: Sequence[Task], target, loggers: Sequence[logging.Logger], strategies: Sequence,
             *, threads: int, seed: int | None = None) -> list:
    """One ``TuneContext`` per task with the default CPU/GPU design space and the given strategies."""
    tvm_compat.import_tensor_intrinsics()  # before TuneContext imports them, ~25x slower with PyTorch loaded
    seeds = ms.utils.fork_seed(seed, n=len(tasks))
    return [ms.TuneContext(mod=task.mod, target=target, space_generator=_design_space(task.mod, target),
                           search_strategy=strategy, task_name=task.name, logger=logger,
                           rand_state=rand_state, num_threads=threads)
            for task, logger, strategy, rand_state in zip(tasks, loggers, strategies, seeds)]


def _design_space(mod, target):
    """MetaSchedule's design space for ``target``, with its ``RewriteLayout`` guarded (:class:`KeepPackedLayout`).

    The postprocessors are the ones MetaSchedule itself picks for the target
    (its CPU features add ``RewriteTensorize``, for one): a context built to
    ask for them, then dropped.
    """
    chosen = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply").space_generator.postprocs
    postprocs = [KeepPackedLayout(p) if isinstance(p, ms.postproc.RewriteLayout) else p for p in chosen]
    return ms.space_generator.PostOrderApply(postprocs=postprocs)


@derived_object
class KeepPackedLayout(ms.postproc.PyPostproc):
    """``RewriteLayout``, except on a schedule that already packs its weights (our 1x1 defaults).

    Such a schedule reads its weights through a layout-rewrite block of its
    own that changes their rank (``[O, K, 1, 1]`` to ``[O/t, K, 1, 1, t]``).
    ``RewriteLayout`` takes that block for a cache read and applies the 5-D
    layout it suggests to the block's 4-D input, which fails an internal
    check that MetaSchedule does not catch: the evolutionary search, which
    replays our measured defaults, would stop the whole tuning run. (It
    suggests a layout only when the tiles divide the weights evenly, as the
    7x7 convolutions' tiles of 8 channels do.) The packing is already the
    one the schedule's tiles read, so there is nothing left to rewrite.
    """

    def __init__(self, inner) -> None:
        self.inner = inner

    def _initialize_with_tune_context(self, context) -> None:
        self.inner._initialize_with_tune_context(context)

    def apply(self, sch) -> bool:
        if _packs_weights(sch):
            return True
        return self.inner.apply(sch)

    def clone(self):
        return KeepPackedLayout(self.inner.clone())


def _packs_weights(sch) -> bool:
    from tvm_shuffle.schedules.analysis import child_blocks
    from tvm_shuffle.schedules.cpu import LAYOUT_REWRITE_PREPROC

    return any(LAYOUT_REWRITE_PREPROC in sch.get(block).annotations for block in child_blocks(sch))


def _buffer_bytes(mod: "tvm.IRModule") -> int:
    """Bytes of the kernel's arguments (TVM 0.27 PrimFunc parameters are buffers)."""
    total = 0
    for buffer in mod["main"].params:
        elements = 1
        for dim in getattr(buffer, "shape", ()):
            elements *= int(dim)
        total += elements * tvm.DataType(str(buffer.dtype)).bits // 8
    return total
