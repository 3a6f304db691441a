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
from tvm_shuffle.tvm_compat import estimate_tir_flops, ms, tvm

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
    return [ms.TuneContext(mod=task.mod, target=target, space_generator="post-order-apply",
                           search_strategy=strategy, task_name=task.name, logger=logger,
                           rand_state=rand_state, num_threads=threads)
            for task, logger, strategy, rand_state in zip(tasks, loggers, strategies, seeds)]


def _buffer_bytes(mod: "tvm.IRModule") -> int:
    """Bytes of the kernel's arguments (TVM 0.27 PrimFunc parameters are buffers)."""
    total = 0
    for buffer in mod["main"].params:
        elements = 1
        for dim in getattr(buffer, "shape", ()):
            elements *= int(dim)
        total += elements * tvm.DataType(str(buffer.dtype)).bits // 8
    return total
