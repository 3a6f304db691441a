"""Where candidates are measured: this machine, or a device behind TVM's RPC tracker.

The local runner is MetaSchedule's ``LocalRunner``: unlike its builder it
keeps one worker process for the whole run (TVM is imported once, ~3 s), so
it has no per-batch start-up cost. Remote devices use ``RPCRunner`` with a
session request that times out (:mod:`tvm_shuffle.tuning.rpc`).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from pathlib import Path

import numpy as np

from tvm_shuffle import host
from tvm_shuffle.errors import UserError
from tvm_shuffle.targets import TargetSpec
from tvm_shuffle.tuning import measurement, rpc
from tvm_shuffle.tvm_compat import TVM_VERSION, ms

LOCAL_TIMEOUT_S = 30  # per candidate; the slowest ShuffleNet kernels run in milliseconds


@dataclasses.dataclass(frozen=True)
class Device:
    runner: object  # ms.runner.Runner
    description: str
    remote: bool
    emulated: bool = False
    tracker: rpc.Tracker | None = None


def runs_here(spec: TargetSpec) -> bool:
    """Can this machine execute the spec's code (same CPU architecture, or the GPU is here)?"""
    if spec.family == "cuda":
        from tvm_shuffle import cuda_codegen

        return cuda_codegen.local_gpu()
    return spec.runtime_arch == host.arch()


def local(spec: TargetSpec) -> Device:
    kind = "GPU" if spec.family == "cuda" else "CPU"
    # The runner's worker processes size TVM's thread pool from this: candidates are
    # measured with the threads tvm_shuffle.runtime runs the library with, not TVM's
    # default (half the logical CPUs on x86, one core on a VM without hyper-threading).
    os.environ.setdefault(host.THREADS_VARIABLE, str(host.physical_cores()))
    runner = ms.runner.LocalRunner(timeout_sec=LOCAL_TIMEOUT_S, evaluator_config=measurement.EVALUATOR,
                                   f_alloc_argument=measurement.local_inputs,
                                   f_run_evaluator=measurement.local_fastest)
    return Device(runner, f"this machine's {kind}", remote=False)


def remote(spec: TargetSpec, tracker: rpc.Tracker) -> Device:
    """An ``RPCRunner`` for the devices under ``tracker.key``, after checking one answers."""
    found = rpc.probe(tracker, "cuda" if spec.family == "cuda" else "cpu")
    config = ms.runner.RPCConfig(tracker_host=tracker.host, tracker_port=tracker.port, tracker_key=tracker.key,
                                 session_timeout_sec=int(tracker.timeout))
    runner = ms.runner.RPCRunner(rpc_config=config, evaluator_config=measurement.EVALUATOR,
                                 f_create_session=rpc.create_session, f_alloc_argument=measurement.remote_inputs,
                                 f_run_evaluator=measurement.remote_fastest, max_workers=found.servers)
    plural = "s" if found.servers > 1 else ""
    what = "emulated device" if found.emulated else "device"
    return Device(runner, f"{found.servers} {what}{plural} {tracker.key!r} via {tracker.address}", remote=True,
                  emulated=found.emulated, tracker=tracker)


def run_remote(tracker: rpc.Tracker, library: Path, x: np.ndarray, *, gpu: bool = False,
               repeat: int = 10) -> tuple[list[np.ndarray], float]:
    """Run an exported model on a device over RPC: its outputs for ``x`` and the median seconds per call."""
    from tvm_shuffle.tuning.remote import RemoteModel

    model = RemoteModel(tracker, library, gpu=gpu)
    try:
        return model(x), statistics.median(model.times(x, warmup=0, repeat=repeat))
    finally:
        model.close()


def no_device_error(spec: TargetSpec, model_flags: str) -> UserError:
    """The one error for a target this machine cannot run, saying how to attach a board or skip tuning."""
    key = spec.name.removeprefix("arm-").removeprefix("cuda-") or spec.name
    what = "an NVIDIA GPU" if spec.family == "cuda" else f"an {spec.runtime_arch} device ({spec.description})"
    return UserError(
        f"tuning --target {spec.name} measures candidates on {what}, and this {host.arch()} machine "
        f"has none. Attach one through TVM's RPC tracker:\n"
        f"  here:       python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {rpc.DEFAULT_PORT}\n"
        f"  on the device (pip install apache-tvm=={TVM_VERSION}):\n"
        f"              python -m tvm.exec.rpc_server --tracker THIS_HOST:{rpc.DEFAULT_PORT} --key {key}\n"
        f"  then:       python -m tvm_shuffle.tune --target {spec.name} {model_flags} "
        f"--rpc-tracker THIS_HOST:{rpc.DEFAULT_PORT} --rpc-key {key}\n"
        f"Or build without tuning: python -m tvm_shuffle.compile --target {spec.name} {model_flags} --out DIR")
