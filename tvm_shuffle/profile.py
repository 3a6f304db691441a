"""Per-kernel profile of a tvm_shuffle library: time, FLOPs, bytes, and how close each kernel gets to the peak.

TVM 0.27's Relax VM has no profiler any more (``VirtualMachine(...,
profile=True)`` is gone), but it calls an *instrument* hook before and after
every call instruction. :func:`time_calls` times each call from that hook
(wall clock), over several runs of the whole model, and takes per-call
medians: kernels are timed in their real sequence, with the caches as the
model leaves them. The hook costs about a microsecond per call; that is
measured on the VM's cheapest builtin and taken off every call.

FLOPs come from TVM's own estimate on each fused TIR kernel
(``estimate_tir_flops``), bytes moved from the sizes of the kernel's buffers
(each input read once, each output written once: a lower bound). Kernels
without FLOPs that only move data (concat, split, transpose, reshape, the
channel shuffle) are classified as ``data movement``: that is where
ShuffleNet's shuffles, splits and concats show up when they are not fused
away (``--shuffle stock``).
"""

from __future__ import annotations

import collections
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

# Names TVM's legalization gives kernels that only move data (fused names join them with "_").
DATA_MOVEMENT_OPS = ("concatenate", "split", "transpose", "reshape", "strided_slice", "take", "squeeze",
                     "expand_dims", "layout_transform", "copy", "gather", "shuffle")
COMPUTE = "compute"
DATA_MOVEMENT = "data movement"
RUNTIME = "VM runtime"  # allocation, shape checks, tuple building: the VM's own builtins
DEFAULT_RUNS = 20
# TVM's SplitLayoutRewritePreproc renames a kernel whose weight packing it splits off
# (build.weight_packing_passes): "fused_conv2d4_add4_relu3" runs as "fused_conv2d4_add4_relu3_prepacked".
PACKED_SUFFIX = "_prepacked"


@dataclasses.dataclass(frozen=True)
class KernelCost:
    flops: float
    bytes: int
    category: str


@dataclasses.dataclass
class KernelRow:
    """One kernel (or the VM's builtins, together) per inference."""

    name: str
    category: str
    calls: int
    us: float  # per inference: calls x median per call
    flops: float
    bytes: int
    share: float = 0.0

    @property
    def gflops(self) -> float | None:
        return self.flops / self.us / 1e3 if self.us > 0 and self.flops else None

    @property
    def gbps(self) -> float | None:
        return self.bytes / self.us / 1e3 if self.us > 0 and self.bytes else None


def buffer_bytes(func) -> int:
    """Bytes of a PrimFunc's parameters (TVM 0.27 PrimFunc parameters are buffers)."""
    from tvm_shuffle.tvm_compat import tvm

    total = 0
    for buffer in func.params:
        elements = 1
        for dim in getattr(buffer, "shape", ()):
            elements *= int(dim)
        total += elements * tvm.DataType(str(buffer.dtype)).bits // 8
    return total


def classify(name: str, flops: float) -> str:
    """``data movement`` for copy-only kernels (no FLOPs, a data-movement op in the name), else ``compute``."""
    return DATA_MOVEMENT if flops == 0 and any(op in name for op in DATA_MOVEMENT_OPS) else COMPUTE


def kernel_costs(lowered) -> dict[str, KernelCost]:
    """FLOPs, bytes and category of every TIR kernel in a lowered module (:func:`tvm_shuffle.build.lower`)."""
    from tvm_shuffle.tvm_compat import estimate_tir_flops, tir, tvm

    costs = {}
    for gv, func in lowered.functions_items():
        if not isinstance(func, tir.PrimFunc):
            continue
        try:
            flops = float(estimate_tir_flops(tvm.IRModule({"main": func})))
        except Exception:  # the estimator rejects some loop forms; bytes still say something
            flops = 0.0
        costs[gv.name_hint] = KernelCost(flops, buffer_bytes(func), classify(gv.name_hint, flops))
    return costs


def time_calls(library: str | Path, x: np.ndarray, *, runs: int = DEFAULT_RUNS) -> dict[str, list[float]]:
    """Seconds of every call the VM makes while running ``main`` on ``x``, keyed by callee, per run.

    Returns {symbol: [seconds of call 1 in run 1, call 2 in run 1, ..., call 1 in run 2, ...]}.
    One untimed run goes first (allocation, first touch).
    """
    from tvm_shuffle.tvm_compat import relax, tvm

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    tensor = tvm.runtime.tensor(x)
    vm["main"](tensor)
    times: dict[str, list[float]] = collections.defaultdict(list)
    started: list[float] = []

    def instrument(func, symbol, before, ret, *args):
        if before:
            started.append(time.perf_counter())
        else:
            times[str(symbol)].append(time.perf_counter() - started.pop())
        return 0  # VMInstrumentReturnKind.NO_OP: run the call

    vm.set_instrument(instrument)
    for _ in range(runs):
        vm["main"](tensor)
    return dict(times)


def kernel_name(symbol: str) -> str:
    """The lowered kernel's name for a symbol the library calls."""
    return symbol.removesuffix(PACKED_SUFFIX)


def hook_overhead(times: Mapping[str, Sequence[float]], costs: Mapping[str, KernelCost]) -> float:
    """Seconds the hook adds to every call: the median time of the VM's cheapest builtin (which does ~nothing)."""
    builtins = [statistics.median(seconds) for symbol, seconds in times.items()
                if kernel_name(symbol) not in costs and seconds]
    return min(builtins, default=0.0)


def calls_per_run(seconds: Sequence[float], runs: int) -> int:
    """How often a callee ran per inference, from its :func:`time_calls` samples over ``runs`` runs."""
    return max(1, len(seconds) // runs)


def summarize(times: Mapping[str, Sequence[float]], costs: Mapping[str, KernelCost], runs: int) -> list[KernelRow]:
    """Per-inference rows, slowest first; VM builtins are folded into one ``VM runtime`` row.

    The hook's own cost (:func:`hook_overhead`) is taken off every call.
    """
    rows = []
    runtime_us, runtime_calls = 0.0, 0
    overhead = hook_overhead(times, costs)
    for symbol, seconds in times.items():
        calls = calls_per_run(seconds, runs)
        per_inference = max(0.0, statistics.median(seconds) - overhead) * calls * 1e6
        symbol = kernel_name(symbol)
        cost = costs.get(symbol)
        if cost is None:
            runtime_us += per_inference
            runtime_calls += calls
            continue
        rows.append(KernelRow(symbol, cost.category, calls, per_inference, cost.flops * calls, cost.bytes * calls))
    if runtime_calls:
        rows.append(KernelRow("VM builtins (alloc, shape checks, tuples)", RUNTIME, runtime_calls, runtime_us, 0, 0))
    total = sum(r.us for r in rows) or 1.0
    for row in rows:
        row.share = row.us / total
    return sorted(rows, key=lambda r: -r.us)


def category_shares(rows: Sequence[KernelRow]) -> dict[str, float]:
    """Share of the profiled time per category (compute, data movement, VM runtime)."""
    shares: dict[str, float] = collections.defaultdict(float)
    for row in rows:
        shares[row.category] += row.share
    return {c: shares.get(c, 0.0) for c in (COMPUTE, DATA_MOVEMENT, RUNTIME)}


def profile(library: str | Path, lowered, x: np.ndarray, *, runs: int = DEFAULT_RUNS) -> list[KernelRow]:
    """Profile ``library`` (a local CPU ``model.so``) built from ``lowered``, on input ``x``."""
    return summarize(time_calls(library, x, runs=runs), kernel_costs(lowered), runs)


__all__ = ["KernelRow", "KernelCost", "DATA_MOVEMENT_OPS", "COMPUTE", "DATA_MOVEMENT", "RUNTIME", "classify",
           "kernel_costs", "kernel_name", "buffer_bytes", "time_calls", "calls_per_run", "hook_overhead", "summarize",
           "category_shares", "profile"]
