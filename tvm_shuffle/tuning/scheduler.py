"""Task scheduler that writes every batch to the database as soon as it has run.

MetaSchedule's gradient-based scheduler first sends one batch of every task
to the runner and only then *joins* them, and joining is when the measure
callbacks commit records to the database. Killed in that first round (25-30
tasks for a ShuffleNet, minutes), a run loses everything it measured. This
is the same scheduler (``gradient_based.cc``: a round robin, then the task
whose weighted latency has improved fastest over the last ``window``
batches), except that it joins each batch right after it ran, so at most
the batch being measured is lost.

It is also where a run stops early: ``stop()`` is asked before each batch
(Ctrl-C, a device that stopped answering), and the scheduler then ends the
run the normal way, committing what has been measured. An exception raised
in a MetaSchedule callback is not a reliable way out: parts of its C++ code
catch errors as failed candidates and carry on (a KeyboardInterrupt too).
"""

from __future__ import annotations

import contextlib
import random
import signal
from typing import Callable, Iterator

from tvm_shuffle.tvm_compat import derived_object, ms

FAILED_MS = 1e9  # MetaSchedule's latency for a candidate that did not run


@derived_object
class CommittingGradientScheduler(ms.task_scheduler.PyTaskScheduler):
    """``GradientBased(alpha, window_size)`` that joins (commits) batches eagerly."""

    def __init__(self, *, stop: Callable[[], bool] = lambda: False, alpha: float = 0.2, window_size: int = 3,
                 seed: int | None = None):
        super().__init__()
        self.stop = stop
        self.alpha = alpha
        self.window_size = window_size
        self.rng = random.Random(seed)
        self.round_robin = 0
        self.best_ms: dict[int, float] = {}
        self.history: dict[int, list[float]] = {}

    def next_task_id(self) -> int:
        tasks = self._outer().tasks_  # the TVM object's state; self is its Python half
        for task_id, task in enumerate(tasks):
            if task.runner_futures is not None:
                self._join(task_id)
        if self.stop():
            return -1
        while self.round_robin < len(tasks):
            task_id = self.round_robin
            self.round_robin += 1
            if not tasks[task_id].is_terminated:
                return task_id
        alive = [i for i, task in enumerate(tasks) if not task.is_terminated]
        if not alive:
            return -1
        grads = [self._gradient(i, float(tasks[i].task_weight)) for i in alive]
        if max(grads) == min(grads):
            return self.rng.choice(alive)
        return alive[grads.index(max(grads))]

    def _join(self, task_id: int) -> None:
        results = self.join_running_task(task_id)
        latencies = [sum(float(s) for s in r.run_secs) / len(r.run_secs) * 1e3
                     for r in results if r.error_msg is None and r.run_secs]
        if latencies:
            self.best_ms[task_id] = min([self.best_ms.get(task_id, FAILED_MS), *latencies])
        if task_id in self.best_ms:
            self.history.setdefault(task_id, []).append(self.best_ms[task_id])

    def _gradient(self, task_id: int, weight: float) -> float:
        """Expected latency gain of one more batch: backward difference over the window, and best / batches."""
        history = self.history.get(task_id, [])
        n = len(history)
        if not n or history[-1] >= FAILED_MS:
            return -1e9  # no valid measurement yet: like upstream, chosen only at random
        best = history[-1]
        w = self.window_size
        g1 = (history[n - 1 - w] - best) / w if n >= 1 + w else 0.0
        g2 = best / n
        return (self.alpha * g1 + (1 - self.alpha) * g2) * weight


class Interrupt:
    """Ctrl-C while tuning: the first stops after the running batch, a second one kills the process."""

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    @contextlib.contextmanager
    def installed(self, console) -> Iterator["Interrupt"]:
        def handler(signum, frame):
            if self.requested:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.raise_signal(signal.SIGINT)
            self.requested = True
            print("\nstopping after the running batch (Ctrl-C again to quit at once)", file=console, flush=True)

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
