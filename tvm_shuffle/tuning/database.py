"""Tuning records on disk: one MetaSchedule JSON database per (model, target).

Layout under the work directory (``./work`` by default)::

    work/<target>-<cpu or arch>/<model>-<input shape>-<shuffle mode>/
        database_workload.json       one line per task (structural hash, TIR)
        database_tuning_record.json  one line per measured candidate, appended as measured
        tuning_state.json            how many of the records were copied from other models
        logs/                        MetaSchedule's own logs

MetaSchedule's ``JSONDatabase`` appends and flushes a line per measured
candidate, so an interrupted or killed run keeps everything measured before
it. A kill in the middle of a write leaves a partial last line; that line is
dropped with a warning. Any other unreadable line is an error naming the
file: silently starting over would throw away hours of measurements.

Databases of other models for the same target live next to each other, so a
task (keyed by the structural hash of its TIR) that another model already
tuned starts from that model's records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence

import tvm_ffi

from tvm_shuffle.errors import UserError
from tvm_shuffle.targets import TargetSpec
from tvm_shuffle.tvm_compat import Schedule, Trace, ms, tvm

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
STATE = "tuning_state.json"
FAILED_RUN_SECONDS = 1e9  # MetaSchedule stores 1e10 s for a candidate that failed to build or run


def target_dir_name(spec: TargetSpec) -> str:
    """``x86-znver4``, ``arm-rpi4-cortex-a72``, ``cuda-sm_80``: records from one CPU do not tune another."""
    detail = spec.target.get("mcpu") or spec.target.get("arch")
    return _safe(f"{spec.name}-{detail}" if detail and str(detail) not in spec.name else spec.name)


def model_dir_name(name: str, input_shape: Sequence[int], shuffle: str) -> str:
    return _safe(f"{name}-{'x'.join(map(str, input_shape))}-{shuffle}")


def database_dir(work_dir: str | Path, spec: TargetSpec, name: str, input_shape: Sequence[int],
                 shuffle: str) -> Path:
    return Path(work_dir) / target_dir_name(spec) / model_dir_name(name, input_shape, shuffle)


def prepare_dir(directory: Path) -> Path:
    """Create ``directory`` and check that records can be written there."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"work directory {directory} is not writable: {err.strerror or err} "
                        "(pass --work-dir DIR)") from None
    return directory


def open_database(directory: Path) -> "ms.database.JSONDatabase":
    """The JSON database in ``directory`` (created if absent), after checking every line."""
    prepare_dir(directory)
    for name in (WORKLOADS, RECORDS):
        check_lines(directory / name)
    try:
        return ms.database.JSONDatabase(str(directory / WORKLOADS), str(directory / RECORDS), allow_missing=True)
    except Exception as err:  # TVM raises RuntimeError/ValueError with a C++ trace
        raise UserError(f"tuning database in {directory} is corrupt ({_last_line(err)}); "
                        f"fix or delete {directory / WORKLOADS} and {directory / RECORDS}") from None


def check_lines(path: Path) -> None:
    """Every line must be JSON; a partial last line (a killed write) is cut off with a warning."""
    if not path.exists():
        return
    data = path.read_bytes()
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError as err:
            torn_tail = number == len(lines) and not data.endswith(b"\n")
            if not torn_tail:
                raise UserError(f"tuning database file {path} is corrupt at line {number} ({err}); "
                                "fix or delete it (re-tuning starts from scratch)") from None
            path.write_bytes(data[: len(data) - len(line)])
            print(f"warning: dropped a partly written record at the end of {path} (interrupted run)",
                  file=sys.stderr)


def own_trials(directory: Path) -> int:
    """Candidates measured for this model: every record line, less those copied from other models."""
    path = directory / RECORDS
    lines = sum(1 for line in path.read_bytes().split(b"\n") if line.strip()) if path.exists() else 0
    return max(0, lines - _read_state(directory).get("shared_records", 0))


def digest(directory: Path) -> str:
    """Short content hash of the database files, for the manifest."""
    h = hashlib.sha256()
    for name in (WORKLOADS, RECORDS):
        path = directory / name
        h.update(path.read_bytes() if path.exists() else b"")
    return h.hexdigest()[:16]


def valid_records(db, mod: "tvm.IRModule") -> list:
    """Records of ``mod`` that ran, fastest first (failed builds/runs are left out)."""
    if not db.has_workload(mod):
        return []
    return [r for r in db.get_top_k(db.commit_workload(mod), 1 << 30) if _seconds(r) < FAILED_RUN_SECONDS]


def all_records(db, mod: "tvm.IRModule") -> list:
    """Every record of ``mod``, failed builds and runs included."""
    if not db.has_workload(mod):
        return []
    workload = db.commit_workload(mod)
    return [r for r in db.get_all_tuning_records() if r.workload.same_as(workload)]


def best_seconds(db, mod: "tvm.IRModule") -> float | None:
    records = valid_records(db, mod)
    return _seconds(records[0]) if records else None


@dataclasses.dataclass
class Shared:
    """What :func:`import_shared_records` took from other models' databases."""

    records: int = 0
    tasks: int = 0
    sources: tuple[str, ...] = ()


def import_shared_records(db, mods: Iterable["tvm.IRModule"], directory: Path) -> Shared:
    """Copy other models' records for identical tasks into ``db``.

    Looks at the sibling databases (same target directory). A record of a
    kernel ``db`` already has (same workload, same scheduled TIR) is not
    copied, so re-running is idempotent.
    """
    mods = list(mods)
    wanted = {str(kernel_hash(m)) for m in mods}
    shared = Shared()
    sources = []
    for sibling in sorted(p for p in directory.parent.iterdir() if p.is_dir() and p != directory):
        if not wanted & _workload_hashes(sibling / WORKLOADS):
            continue
        try:
            other = ms.database.JSONDatabase(str(sibling / WORKLOADS), str(sibling / RECORDS), allow_missing=False)
        except Exception as err:
            print(f"warning: skipping unreadable tuning database {sibling}: {_last_line(err)}", file=sys.stderr)
            continue
        copied_from_here = 0
        for mod in mods:
            theirs = valid_records(other, mod)
            if not theirs:
                continue
            workload = db.commit_workload(mod)
            ours = {candidate_hash(r) for r in all_records(db, mod)}
            fresh = [r for r in theirs if candidate_hash(r) not in ours]
            for record in fresh:
                db.commit_tuning_record(ms.database.TuningRecord(record.trace, workload, record.run_secs,
                                                                 record.target, record.args_info))
            copied_from_here += len(fresh)
            shared.tasks += bool(fresh)
        if copied_from_here:
            sources.append(sibling.name)
            shared.records += copied_from_here
    shared.sources = tuple(sources)
    if shared.records:
        state = _read_state(directory)
        state["shared_records"] = state.get("shared_records", 0) + shared.records
        _write_state(directory, state)
    return shared


def _read_state(directory: Path) -> dict:
    path = directory / STATE
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        int(state.get("shared_records", 0))
        return state
    except (ValueError, AttributeError, TypeError) as err:
        raise UserError(f"{path} is corrupt ({err}); delete it (trials will be recounted from the records)") from None


def _write_state(directory: Path, state: dict) -> None:
    tmp = directory / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    tmp.replace(directory / STATE)


def _workload_hashes(path: Path) -> set[str]:
    """Structural hashes in a workload file, read without TVM (first field of each line)."""
    try:
        with open(path, encoding="utf-8") as f:
            return {m.group(1) for line in f if (m := re.match(r'\["(\d+)"', line))}
    except OSError:
        return set()


def kernel_hash(mod: "tvm.IRModule") -> int:
    """MetaSchedule's key for a workload or a scheduled kernel (its structural hash)."""
    return tvm_ffi.structural_hash(mod)


def candidate_hash(record) -> int:
    """Hash of the scheduled kernel a record measured: what makes two candidates the same."""
    return scheduled_hash(record.workload.mod, record.trace)


def scheduled_hash(mod: "tvm.IRModule", trace) -> int:
    """Hash of ``mod`` scheduled by ``trace`` as the database stores it.

    The database writes a trace's booleans as 0 and 1, so the ``True`` that
    layout-rewrite blocks are annotated with (ours and MetaSchedule's
    ``RewriteLayout``) comes back as ``1``: hashed as proposed, such a
    candidate never matched its stored record, and a resumed run measured it
    again.
    """
    sch = Schedule(mod)
    Trace.apply_json_to_schedule(_as_stored(trace.as_json(remove_postproc=False)), sch)
    return kernel_hash(sch.mod)


def _as_stored(value):
    """A trace's JSON with its booleans and TVM numbers as the database writes them."""
    if isinstance(value, (list, tuple)):
        return [_as_stored(v) for v in value]
    if isinstance(value, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):
        value = value.value
    return int(value) if isinstance(value, bool) else value


def _seconds(record) -> float:
    secs = [float(s) for s in (record.run_secs or [])]
    return sum(secs) / len(secs) if secs else float("inf")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _last_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
