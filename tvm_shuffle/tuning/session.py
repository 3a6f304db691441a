"""One tuning run: tasks -> MetaSchedule (XGBoost cost model) -> records in the model's database.

:func:`tune` is what :func:`tvm_shuffle.api.tune` calls before it builds
the tuned library (:func:`tvm_shuffle.tuning.in_model.build_checked`); the
records it leaves are what ``tvm_shuffle.compile(..., work_dir=...)`` builds from.

The budget counts every candidate measured for this model and target so
far, so re-running the same command after an interruption measures only
what is left (and never a candidate twice, :mod:`tvm_shuffle.tuning.search`).

A reduced precision (``precision="bf16"`` or ``"int8"``) tunes the kernels
of the model optimized in that precision (``passes.optimize(...,
precision=..., calibration=...)``): its tasks are the bf16 or int8 kernels,
the first candidates of each are our default schedules (the precision's
rule among the CPU rules) and their tile alternatives, and its records live
in a directory of their own (:func:`records_variant`), so records of
different precisions never mix. An int8 kernel's quantization constants are
part of its workload: records apply to builds calibrated the same way.

One tune at a time writes a records directory (:mod:`tvm_shuffle.tuning.lock`):
a second one on the same model and target waits for the first, then resumes
from its records; runs on other models or targets go on side by side.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from tvm_shuffle import build, host, passes, schedules, targets
from tvm_shuffle.frontends import Imported
from tvm_shuffle.targets import TargetSpec
from tvm_shuffle.tuning import database, logs, recording, rpc, tasks
from tvm_shuffle.tuning.builder import BuildStats, InProcessBuilder, finish_abandoned_compiles
from tvm_shuffle.tuning.lock import RecordsLock
from tvm_shuffle.tuning.progress import Progress, ProgressCallback, TaskState
from tvm_shuffle.tuning.runner import Device
from tvm_shuffle.tuning.scheduler import CommittingGradientScheduler, Interrupt
from tvm_shuffle.tuning.search import Budget, ResumingSearch, unscheduled_candidate
from tvm_shuffle.tvm_compat import ms

DEFAULT_WORK_DIR = "work"


@dataclasses.dataclass
class Outcome:
    """What a run did; ``database`` holds every record so far (this run's and earlier ones)."""

    directory: Path
    database: object  # ms.database.JSONDatabase
    tasks: list[TaskState]
    budget: int
    done_before: int
    measured: int = 0
    failed: int = 0
    skipped: int = 0  # candidates the search proposed again and we did not re-measure
    shared: database.Shared = dataclasses.field(default_factory=database.Shared)
    seconds: float = 0.0
    builder: BuildStats = dataclasses.field(default_factory=BuildStats)
    interrupted: bool = False
    workloads: dict = dataclasses.field(default_factory=dict)  # task name (= kernel symbol) -> its TIR module

    @property
    def digest(self) -> str:
        return database.digest(self.directory)

    @property
    def estimate_seconds(self) -> float | None:
        """MetaSchedule's end-to-end estimate: sum of weight x best latency (None if a task has none)."""
        if any(t.best_seconds is None for t in self.tasks):
            return None
        return sum(t.weight * t.best_seconds for t in self.tasks)


def records_variant(shuffle: str, precision: str = "fp32") -> str:
    """The part of a records directory's name that says how the model was optimized (``fused``, ``fused-bf16``)."""
    return shuffle if precision == "fp32" else f"{shuffle}-{precision}"


def tune(imported: Imported, spec: TargetSpec, *, device: Device, work_dir: str | Path = DEFAULT_WORK_DIR,
         trials: int | None = None, shuffle: str = "fused", quiet: bool = False, seed: int | None = None,
         wait: bool = True, log=None, precision: str = "fp32", calibration=None) -> Outcome:
    """Tune ``imported`` for ``spec`` on ``device`` until ``trials`` candidates (all runs together) are measured.

    Ctrl-C stops tuning after the running batch and returns with
    ``interrupted`` set; every record measured so far is on disk. A device
    that stops producing measurements raises :class:`MeasurementsFailing`;
    a remote device that disappears during a batch raises
    :class:`~tvm_shuffle.tuning.recording.DeviceLost` (what it did not
    measure is not recorded). While another tune writes the same records
    this one waits for it, or with ``wait=False`` raises
    :class:`~tvm_shuffle.tuning.lock.RecordsBusy`.
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    directory = database.prepare_dir(database.database_dir(work_dir, spec, imported.name, imported.input_shape,
                                                           records_variant(shuffle, precision)))
    with RecordsLock.acquire(directory, wait=wait, log=log) as held:
        outcome = _tune_holding(held, imported, spec, device=device, trials=trials, shuffle=shuffle, quiet=quiet,
                                seed=seed, log=log, precision=precision, calibration=calibration)
        outcome.database.close()  # still answers queries; a later commit takes the lock for itself
    return outcome


def _tune_holding(held: RecordsLock, imported: Imported, spec: TargetSpec, *, device: Device, trials: int | None,
                  shuffle: str, quiet: bool, seed: int | None, log, precision: str = "fp32",
                  calibration=None) -> Outcome:
    """:func:`tune`, holding the lock on the records directory."""
    if spec.family == "cuda":
        from tvm_shuffle import cuda_codegen

        cuda_codegen.enable_device_code()  # candidates must hold kernels the GPU machine can load
    directory = held.directory
    db = database.open_database(directory, lock=held, log=log)
    cores = host.physical_cores()
    target = tasks.tuning_target(spec, host_cores=cores)
    optimized = passes.optimize(imported.mod, shuffle=shuffle, precision=precision, calibration=calibration,
                                tensor_cores=spec.family == "cuda")
    task_list = tasks.extract(build.lower(optimized, spec), target)
    shared = database.import_shared_records(db, [t.mod for t in task_list], directory)
    if shared.records:
        log(f"reused {shared.records} records of {shared.tasks} identical task(s) from {', '.join(shared.sources)}")
    # MetaSchedule's first round visits tasks in order: after an interruption,
    # the tasks without records come first.
    best = {t.name: database.best_seconds(db, t.mod) for t in task_list}
    task_list.sort(key=lambda t: best[t.name] is not None)
    states = [TaskState(t.name, t.weight, best[t.name]) for t in task_list]
    budget = spec.default_trials if trials is None else trials
    done = database.own_trials(directory)
    outcome = Outcome(directory, db, states, budget, done, shared=shared,
                      workloads={t.name: t.mod for t in task_list})
    if done >= budget or not task_list:
        log(f"{done} trials already measured for this model (budget {budget}): nothing to tune; "
            "pass a larger --trials to tune further" if task_list else "the model has no kernels to tune")
        return outcome

    per_batch = tasks.trials_per_batch(budget - done, len(task_list))
    log(f"tuning {len(task_list)} tasks on {device.description}: {budget - done} trials left of {budget} "
        f"({done} done before), {per_batch} per batch; records in {directory}")
    builder = InProcessBuilder(targets.require_cross_compiler(spec), threads=cores)
    left = Budget(budget - done)
    strategies = [ResumingSearch(left, _default_candidates(t, target, spec), per_batch=per_batch) for t in task_list]
    start = time.perf_counter()
    with logs.to_files(directory / "logs", [t.name for t in task_list]) as loggers, \
            logs.native_stderr_to(directory / "logs" / "native.log") as console, \
            Interrupt().installed(console) as interrupt:
        progress = Progress(states, total=budget, done=done, quiet=quiet, stream=console)
        # MetaSchedule's callbacks (records, cost model) and the progress bar see only what was measured.
        recorder = recording.RecordMeasurements(
            [*ms.measure_callback.MeasureCallback.create("default"), ProgressCallback(progress)],
            device_answers=_device_check(device))
        try:
            contexts = tasks.contexts(task_list, target, loggers, strategies, threads=cores, seed=seed)
            ms.tune_tasks(
                tasks=contexts, task_weights=[float(t.weight) for t in task_list], work_dir=str(directory),
                max_trials_global=budget - done, max_trials_per_task=max(spec.trials_per_task, per_batch),
                num_trials_per_iter=per_batch, builder=builder, runner=device.runner, database=db,
                cost_model=ms.cost_model.XGBModel(num_tuning_cores=cores, adaptive_training=True),
                measure_callbacks=[recorder],
                task_scheduler=CommittingGradientScheduler(
                    stop=lambda: interrupt() or progress.failing or recorder.device_lost, seed=seed))
        except Exception:
            if db.write_error is not None:  # raised inside a MetaSchedule callback: say it as written
                raise db.write_error from None
            raise
        finally:
            progress.close()
    outcome.interrupted = interrupt.requested
    if recorder.device_lost:
        raise recording.device_lost_error(device.tracker, recorder.not_measured, database.own_trials(directory),
                                          directory)
    if progress.failing:
        raise progress.failure()
    outcome.seconds = time.perf_counter() - start
    outcome.measured, outcome.failed = progress.measured, progress.failed
    outcome.skipped = sum(s.skipped for s in strategies)
    outcome.builder = builder.stats
    # What follows times kernels and models on this CPU: an abandoned compile would take a core from it
    # (an ONNX Runtime baseline measured 8.84 ms during one, 5.98 ms before).
    finish_abandoned_compiles()
    return outcome


def _device_check(device: Device):
    """For a remote device, whether it still takes a session (asked after a batch with failed runs)."""
    if not device.remote or device.tracker is None:
        return None
    return lambda: rpc.device_answers(device.tracker)


def _default_candidates(task: tasks.Task, target, spec: TargetSpec) -> list:
    """What the untuned build runs for this kernel, to measure first.

    Where no rule of ours applies, a CPU kernel's untuned build is TVM's
    unscheduled loop nest; a GPU kernel's is dlight's, which MetaSchedule's
    own design space covers (an unscheduled one cannot run: no thread binding).
    """
    ours = schedules.default_candidates(task.mod, target)
    if spec.family == "cuda":
        return ours
    return ours or [unscheduled_candidate(task.mod)]

