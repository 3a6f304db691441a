"""Keep a tuned kernel only where it is faster *in the model* than its default schedule.

MetaSchedule times each candidate alone: the same inputs again and again,
weights hot in cache. In the model a kernel reads what the previous kernel
just wrote, and weights that other kernels have evicted since the last
inference. Past a few hundred trials that difference picks candidates that
win alone and lose in the model (the tuning curves in
``benchmarks/results/tune_x86_*.md`` show both sums).

So after tuning, the tuned and the untuned library are profiled kernel by
kernel in the model (:func:`tvm_shuffle.profile.time_calls`, rounds
alternating between the two), and every kernel whose tuned schedule is
slower there than its default schedule by more than :data:`MARGIN` is built
with the default schedule. The choice is saved next to the records
(``in_model.json``), tied to their digest, so every later build from the
same records (``report``, the benchmarks) makes it too; the records
themselves are untouched, and more tuning makes the choice stale.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from tvm_shuffle import profile
from tvm_shuffle.errors import UserError
from tvm_shuffle.runtime import random_input
from tvm_shuffle.tuning import database

CHOICE = "in_model.json"
MARGIN = 0.05  # per-kernel medians of alternating rounds still move a few percent on a shared machine
ROUNDS = 4
RUNS = 10


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A kernel whose tuned schedule lost to its default one in the model (microseconds per inference)."""

    kernel: str
    tuned_us: float
    default_us: float


def per_kernel_us(libraries: Sequence[str | Path], x: np.ndarray, *, rounds: int = ROUNDS,
                  runs: int = RUNS) -> list[dict[str, float]]:
    """Median microseconds per inference of every callee, per library, from rounds alternating between them."""
    samples = [collections.defaultdict(list) for _ in libraries]
    for _ in range(rounds):
        for library, acc in zip(libraries, samples):
            for symbol, seconds in profile.time_calls(library, x, runs=runs).items():
                # by kernel: a default schedule's kernel may run under its weight-packed name
                acc[profile.kernel_name(symbol)].append(
                    statistics.median(seconds) * profile.calls_per_run(seconds, runs) * 1e6)
    return [{symbol: statistics.median(us) for symbol, us in acc.items()} for acc in samples]


def slower_when_tuned(tuned: Mapping[str, float], default: Mapping[str, float], kernels: Iterable[str],
                      margin: float = MARGIN) -> list[Verdict]:
    """The ``kernels`` whose tuned time exceeds the default one by more than ``margin``, biggest loss first."""
    lost = [Verdict(k, tuned[k], default[k]) for k in kernels
            if k in tuned and k in default and tuned[k] > default[k] * (1 + margin)]
    return sorted(lost, key=lambda v: v.default_us - v.tuned_us)


def workload_key(mod) -> str:
    """What a choice names a workload by: the structural hash of its TIR (stable across processes)."""
    import tvm_ffi

    return str(tvm_ffi.structural_hash(mod))


def save(directory: Path, verdicts: Sequence[Verdict], workloads: Mapping[str, object]) -> Path:
    """Write the choice for the records in ``directory``; ``workloads`` maps kernel names to task modules."""
    path = directory / CHOICE
    path.write_text(json.dumps({
        "records_digest": database.digest(directory),
        "default_schedule": [{**dataclasses.asdict(v), "workload": workload_key(workloads[v.kernel])}
                             for v in verdicts],
    }, indent=1) + "\n")
    return path


def excluded_workloads(directory: Path) -> set[str]:
    """Workloads to build with their default schedule; empty when there is no choice or the records changed since."""
    path = directory / CHOICE
    if not path.exists():
        return set()
    try:
        choice = json.loads(path.read_text())
        if choice["records_digest"] != database.digest(directory):
            return set()
        return {entry["workload"] for entry in choice["default_schedule"]}
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"corrupt in-model choice {path} ({error}); delete it to build from every record") from error


def build_database(directory: Path, db=None):
    """The records in ``directory`` as a build should use them: without the workloads the model check excluded."""
    from tvm_shuffle.tvm_compat import ms

    db = db if db is not None else database.open_database(directory)
    excluded = excluded_workloads(directory)
    if not excluded:
        return db
    kept = ms.database.MemoryDatabase()
    for record in db.get_all_tuning_records():
        mod = record.workload.mod
        if workload_key(mod) in excluded:
            continue
        kept.commit_tuning_record(ms.database.TuningRecord(
            record.trace, kept.commit_workload(mod), record.run_secs, record.target, record.args_info))
    return kept


def check(tuned: Path, untuned: Path, workloads: Mapping[str, object], x: np.ndarray,
          directory: Path) -> list[Verdict]:
    """Profile both libraries in the model; save and return the kernels whose default schedule was faster.

    ``workloads`` maps each tuning task's name, which is its kernel's symbol
    in the library, to its module.
    """
    tuned_us, default_us = per_kernel_us([tuned / "model.so", untuned / "model.so"], x)
    verdicts = slower_when_tuned(tuned_us, default_us, workloads)
    save(directory, verdicts, workloads)
    return verdicts


def runs_here(spec, device) -> bool:
    """Whether the model check can run: the library runs on this machine's CPU (not a board, not a GPU)."""
    return not device.remote and spec.family != "cuda"


def build_from_records(imported, spec, directory: Path, *, shuffle: str, precision: str = "fp32",
                       calibration=None):
    """The model built with the records in ``directory``, as the model check left them (:func:`build_database`)."""
    from tvm_shuffle import build

    return build.compile_imported(imported, spec, shuffle=shuffle, database=build_database(directory),
                                  database_digest=database.digest(directory), precision=precision,
                                  calibration=calibration)


def build_checked(imported, spec, outcome, *, shuffle: str, device,
                  precision: str = "fp32", calibration=None) -> tuple[object, object, object, list | None]:
    """The tuned, MetaSchedule's pick and the untuned build (:class:`tvm_shuffle.build.Built`), after the model check.

    Returns (tuned, pick, untuned, the kernels that kept their default
    schedule, or None when the check could not run here; then tuned is the
    pick). The check profiles
    MetaSchedule's pick and the untuned build, each exported to a fresh
    temporary directory: a process that has loaded a library cannot load
    another one written to the same path (the dynamic loader hands back the
    first).
    """
    from tvm_shuffle import build

    same = {"shuffle": shuffle, "precision": precision, "calibration": calibration}
    untuned = build.compile_imported(imported, spec, **same)
    pick = build.compile_imported(imported, spec, database=outcome.database, database_digest=outcome.digest, **same)
    if not runs_here(spec, device):
        return pick, pick, untuned, None
    with tempfile.TemporaryDirectory(prefix="tvm_shuffle_check_") as scratch:
        pick_dir = build.write(pick, Path(scratch) / "pick")
        untuned_dir = build.write(untuned, Path(scratch) / "untuned")
        x = random_input(imported.input_shape, imported.input_dtype)
        verdicts = check(pick_dir, untuned_dir, outcome.workloads, x, outcome.directory)
    if not verdicts:
        return pick, pick, untuned, verdicts
    tuned = build.compile_imported(imported, spec, database=build_database(outcome.directory, outcome.database),
                                   database_digest=outcome.digest, **same)
    return tuned, pick, untuned, verdicts


__all__ = ["CHOICE", "MARGIN", "Verdict", "per_kernel_us", "slower_when_tuned", "workload_key", "save",
           "excluded_workloads", "build_database", "build_from_records", "check", "runs_here", "build_checked"]
