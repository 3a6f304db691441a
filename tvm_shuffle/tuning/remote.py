"""A built model on a device behind TVM's RPC tracker: upload, run, time, release.

The Relax VM is driven with ``set_input`` / ``invoke_stateful`` /
``get_outputs`` (a VM function cannot take tensors across RPC directly) and
timed by TVM's ``time_evaluator`` on the device itself, so the network's
round trip is not counted. The device is held until the session object is
collected, and the VM's objects refer to each other: :meth:`RemoteModel.close`
releases them explicitly, or the board would stay busy until the session
times out.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np

from tvm_shuffle.tuning import rpc
from tvm_shuffle.tvm_compat import relax, tvm


class RemoteModel:
    """``library`` (an exported ``model.so``) loaded on a device that ``tracker`` hands out."""

    def __init__(self, tracker: rpc.Tracker, library: Path, *, gpu: bool = False, name: str | None = None):
        self.session = rpc.request_session(tracker)
        name = name or library.name
        self.session.upload(str(library), name)
        self.device = self.session.cuda(0) if gpu else self.session.cpu(0)
        self.vm = relax.VirtualMachine(self.session.load_module(name), self.device)

    def set_threads(self, threads: int | None) -> int | str:
        """Resize the device's TVM thread pool (None: leave its default)."""
        from tvm_shuffle.runtime import set_tvm_threads

        return set_tvm_threads(self.session.get_function, threads)

    def _set_input(self, x: np.ndarray) -> None:
        self.vm.set_input("main", tvm.runtime.tensor(x, self.device))

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self._set_input(x)
        self.vm.invoke_stateful("main")
        result = self.vm.get_outputs("main")
        return [o.numpy() for o in (result if isinstance(result, (tuple, list)) else [result])]

    def times(self, x: np.ndarray, *, warmup: int, repeat: int) -> list[float]:
        """Seconds per call on the device, ``repeat`` calls after ``warmup`` untimed ones."""
        self._set_input(x)
        for _ in range(warmup):
            self.vm.invoke_stateful("main")
        evaluator = self.vm.time_evaluator("invoke_stateful", self.device, number=1, repeat=repeat)
        return [float(s) for s in evaluator("main").results]

    def close(self) -> None:
        self.vm = self.device = self.session = None
        gc.collect()


__all__ = ["RemoteModel"]
