"""What the user sees while tuning: one progress bar (or plain log lines with ``--quiet``).

The bar shows trials done / budget, elapsed time, ETA and the current best
end-to-end estimate, i.e. the sum over tasks of (calls per inference x best
measured latency). MetaSchedule's own chatter goes to log files in the work
directory (:mod:`tvm_shuffle.tuning.logs`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Sequence

from tvm_shuffle.errors import UserError
from tvm_shuffle.tvm_compat import derived_object, ms

# Consecutive batches in which every built candidate failed to run before we
# stop: one bad batch can be bad schedules, several in a row is a lost device.
MAX_FAILED_BATCHES = 3


class MeasurementsFailing(UserError):
    """The runner (local or a remote device) has stopped producing measurements."""


@dataclasses.dataclass
class TaskState:
    name: str
    weight: int
    best_seconds: float | None = None  # from the database, then from this run
    trials: int = 0  # this run


class Progress:
    """Book-keeping shared by the measure callback and the final summary."""

    def __init__(self, tasks: Sequence[TaskState], *, total: int, done: int, quiet: bool, stream=None):
        self.tasks = list(tasks)
        self.total = total
        self.done_before = done
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.measured = 0
        self.failed = 0
        self.failed_batches = 0
        self.last_error = ""
        self._last_log = 0.0
        self._bar = None
        if not quiet:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=min(done, total), unit="trial", file=self.stream,
                             dynamic_ncols=True, desc="tuning",
                             bar_format="{desc}: {n_fmt}/{total_fmt} trials |{bar}| [{elapsed}<{remaining}] {postfix}")
            self._bar.set_postfix_str(self.estimate_text())

    @property
    def trials(self) -> int:
        return self.measured + self.failed

    def estimate_seconds(self) -> tuple[float, int]:
        """Sum of weight x best latency over tasks with a measurement, and how many tasks that covers."""
        known = [t for t in self.tasks if t.best_seconds is not None]
        return sum(t.weight * t.best_seconds for t in known), len(known)

    def estimate_text(self) -> str:
        seconds, covered = self.estimate_seconds()
        if not covered:
            return "best e2e estimate: -"
        partial = "" if covered == len(self.tasks) else f" ({covered}/{len(self.tasks)} tasks)"
        return f"best e2e estimate {seconds * 1e3:.2f} ms{partial}"

    def record(self, task_id: int, latencies: Sequence[float | None], run_errors: Sequence[str]) -> None:
        """One joined batch: per candidate its mean latency (None: failed); ``run_errors`` of built ones."""
        task = self.tasks[task_id]
        good = [s for s in latencies if s is not None]
        task.trials += len(latencies)
        self.measured += len(good)
        self.failed += len(latencies) - len(good)
        if good and (task.best_seconds is None or min(good) < task.best_seconds):
            task.best_seconds = min(good)
        if run_errors and not good:
            self.failed_batches += 1
            self.last_error = run_errors[0]
        elif good:
            self.failed_batches = 0
        self._show(len(latencies))

    @property
    def failing(self) -> bool:
        """Several batches in a row without a single measurement: stop rather than burn the budget."""
        return self.failed_batches >= MAX_FAILED_BATCHES

    def failure(self) -> MeasurementsFailing:
        return MeasurementsFailing(f"the last {self.failed_batches} batches of candidates all failed to run "
                                   f"(last error: {self.last_error}); the records measured so far are kept")

    def _show(self, new: int) -> None:
        if self._bar is not None:
            self._bar.update(min(new, max(0, self.total - self._bar.n)))
            self._bar.set_postfix_str(self.estimate_text())
            return
        now = time.perf_counter()
        if now - self._last_log < 5 and self.done_before + self.trials < self.total:
            return
        self._last_log = now
        elapsed = now - self.start
        left = max(0, self.total - self.done_before - self.trials)
        eta = elapsed / self.trials * left if self.trials else 0.0
        print(f"tuning: {self.done_before + self.trials}/{self.total} trials, {_clock(elapsed)} elapsed, "
              f"ETA {_clock(eta)}, {self.estimate_text()}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@derived_object
class ProgressCallback(ms.measure_callback.PyMeasureCallback):
    """Feeds each joined batch to a :class:`Progress`."""

    def __init__(self, progress: Progress):
        super().__init__()
        self.progress = progress

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        latencies, run_errors = [], []
        for built, ran in zip(builder_results, runner_results):
            ok = ran.error_msg is None and ran.run_secs
            latencies.append(sum(float(s) for s in ran.run_secs) / len(ran.run_secs) if ok else None)
            if built.error_msg is None and ran.error_msg is not None:
                run_errors.append(_first_line(ran.error_msg))
        self.progress.record(int(task_id), latencies, run_errors)


def _first_line(message: str) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    # The runners prefix their own line ("RPCRunner: An exception occurred"); the cause follows.
    return " ".join(lines[:2])[:300] if lines else "unknown error"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"
