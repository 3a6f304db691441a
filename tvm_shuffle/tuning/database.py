"""Tuning records on disk: one MetaSchedule JSON database per (model, target).

Layout under the work directory (``./work`` by default)::

    work/<target>-<cpu or arch>/<model>-<input shape>-<shuffle mode>/
        database_workload.json       one line per task (structural hash, TIR)
        database_tuning_record.json  one line per measured candidate, appended as measured
        tuning_state.json            how many of the records were copied from other models
        tune.lock                    the lock of the tune writing here (:mod:`.lock`)
        *.json.damaged               lines set aside because they did not parse
        logs/                        MetaSchedule's own logs

The files are MetaSchedule's ``JSONDatabase`` format, line for line, but
MetaSchedule does not write them: its ``JSONDatabase`` appends a line with
``os << line << std::endl``, the line and its newline in separate writes (a
long line in several), so two processes appending to one file glue records
together, and a kill can stop in the middle of a line. A
:class:`RecordsDatabase` keeps the records in a ``MemoryDatabase``, which
answers MetaSchedule's queries, and appends each new line itself, whole, in
one write (:class:`~.record_files.LineAppender`), holding the directory's
lock (:class:`~.lock.RecordsLock`) so that it is the only writer. The text of
a line is still TVM's: a private ``JSONDatabase`` on scratch files turns each
workload and record into its line.

Readers (``report``, another model reusing these kernels) take no lock and
never wait for a tune: they keep the complete lines only, so they see whole
records. The writer, on open, moves the lines that do not parse (or refer to
a workload the file does not have) to ``<file>.damaged`` and keeps the rest;
a file with nothing readable is refused by name and left as it is.

Databases of other models for the same target live next to each other, so a
task (keyed by the structural hash of its TIR) that another model already
tuned starts from that model's records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import shutil
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import tvm_ffi

from tvm_shuffle.errors import UserError
from tvm_shuffle.targets import TargetSpec
from tvm_shuffle.tuning import lock as records_lock
from tvm_shuffle.tuning import record_files
from tvm_shuffle.tuning.lock import RecordsLock
from tvm_shuffle.tvm_compat import Schedule, Trace, derived_object, ms, tvm

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
STATE = "tuning_state.json"
FAILED_RUN_SECONDS = 1e9  # MetaSchedule stores 1e10 s for a candidate that failed to build or run

Log = Callable[[str], None]

# A UserError raised in a commit that MetaSchedule called (a full disk) crosses TVM's C++ frames: keep its type.
tvm_ffi.error.register_error("UserError", UserError)


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


def open_database(directory: Path, *, lock: RecordsLock | None = None, log: Log | None = None) -> "RecordsDatabase":
    """The records in ``directory`` (created if absent) as a MetaSchedule database.

    With ``lock`` (held on ``directory``: what a tune does) damaged lines are
    set aside first, ``log`` says how many, and every commit appends at once.
    Without it the database is the complete, readable lines as they are now,
    read without waiting for a tune that is writing them; each commit then
    takes the lock for that write (waiting for such a tune) and first loads
    what others wrote since.
    """
    directory = Path(directory)
    if lock is not None or not directory.is_dir():
        prepare_dir(directory)
    return RecordsDatabase(directory, lock=lock, log=log)


@dataclasses.dataclass(frozen=True)
class StoredRecord:
    """One measured candidate as the records file holds it, read without TVM."""

    workload: str  # the structural hash MetaSchedule keys its task by (first field of the workload line)
    run_secs: tuple[float, ...]

    @property
    def seconds(self) -> float:
        """Mean run time; infinite when the record has none."""
        return sum(self.run_secs) / len(self.run_secs) if self.run_secs else float("inf")

    @property
    def ran(self) -> bool:
        """Whether the candidate built and ran (MetaSchedule stores 1e10 s for one that did not)."""
        return self.seconds < FAILED_RUN_SECONDS


def read_records(directory: str | Path) -> list[StoredRecord]:
    """The readable records of ``directory``'s database in the order they were measured, without TVM.

    Safe while a tune writes the directory: only complete lines are read (a
    line being written is left out), and lines that do not parse or refer to
    a workload the file does not have are skipped.
    """
    workload_data, record_data = _read_pair(Path(directory))
    hashes = [_stored_hash(line) for line in record_files.split_complete(workload_data)[0]]
    records = []
    for line in record_files.split_complete(record_data)[0]:
        for value, _ in record_files.json_values(line) or ():
            try:
                index, (_trace, run_secs, *_rest) = value
                digest = hashes[index] if isinstance(index, int) and index >= 0 else None
                seconds = tuple(float(s) for s in run_secs or ())
            except (TypeError, ValueError, IndexError):
                continue
            if digest is not None:
                records.append(StoredRecord(digest, seconds))
    return records


def own_trials(directory: Path) -> int:
    """Candidates measured for this model: every complete record line, less those copied from other models."""
    return max(0, record_files.count_complete(directory / RECORDS) - _read_state(directory).get("shared_records", 0))


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

    Looks at the sibling databases (same target directory), read as a reader
    does: without their lock, complete lines only. A record of a kernel
    ``db`` already has (same workload, same scheduled TIR) is not copied, so
    re-running is idempotent.
    """
    mods = list(mods)
    wanted = {str(kernel_hash(m)) for m in mods}
    shared = Shared()
    sources = []
    for sibling in sorted(p for p in directory.parent.iterdir() if p.is_dir() and p != directory):
        if not wanted & _workload_hashes(sibling / WORKLOADS):
            continue
        try:
            other = _open_for_reading(sibling, _warn).memory
        except OSError as err:
            _warn(f"warning: skipping unreadable tuning database {sibling}: {err.strerror or err}")
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


@derived_object
class RecordsDatabase(ms.database.PyDatabase):
    """A records directory as a MetaSchedule database: queries from memory, each commit one whole appended line.

    ``set_aside`` counts the lines moved to the side files when it opened;
    ``write_error`` is the error of a failed append (a full disk), which a
    MetaSchedule callback would otherwise only report as a failed candidate.
    """

    def __init__(self, directory: Path, *, lock: RecordsLock | None = None, log: Log | None = None):
        super().__init__()
        self.directory = Path(directory)
        self.log = log or _warn
        self.set_aside = 0
        self.write_error: UserError | None = None
        self._lock = lock
        self._lines: _TVMLines | None = None
        self._appenders: dict[str, record_files.LineAppender] = {}
        self._load()

    # MetaSchedule's Database interface
    def has_workload(self, mod) -> bool:
        return self._memory.has_workload(mod)

    def commit_workload(self, mod):
        if self._memory.has_workload(mod):
            return self._memory.commit_workload(mod)
        with self._writing():
            return self._commit_workload(mod)

    def commit_tuning_record(self, record) -> None:
        with self._writing():
            workload = self._commit_workload(record.workload.mod)
            if not record.workload.same_as(workload):
                record = ms.database.TuningRecord(record.trace, workload, record.run_secs, record.target,
                                                  record.args_info)
            index = self._index.find(workload.mod)
            self._append(RECORDS, self._text().record(record, index))
            self._memory.commit_tuning_record(record)

    def get_top_k(self, workload, top_k: int) -> list:
        return self._memory.get_top_k(workload, top_k)

    def get_all_tuning_records(self) -> list:
        return self._memory.get_all_tuning_records()

    def __len__(self) -> int:
        return len(self._memory)

    # Writing
    def close(self) -> None:
        """Stop appending (later commits take the lock one write at a time); the records stay readable."""
        for appender in self._appenders.values():
            appender.close()
        self._appenders = {}
        self._lock = None

    def _load(self) -> None:
        if self._holds_lock():
            contents = _open_for_writing(self.directory, self.log)
            self.set_aside += contents.set_aside
            self._open_appenders()
        else:
            contents = _open_for_reading(self.directory, self.log)
        self._memory, self._index = contents.memory, contents.index
        self._sizes = _sizes(self.directory)
        self._clean = contents.clean

    def _holds_lock(self) -> bool:
        return self._lock is not None and self._lock.held

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the records lock for a write: the tune's own, or taken for this write alone."""
        if self._holds_lock():
            yield
            return
        self.close()  # appenders of an earlier lock may point at files a repair has replaced since
        with RecordsLock.acquire(self.directory, log=self.log) as held:
            self._lock = held
            try:
                if not self._clean or _sizes(self.directory) != self._sizes:
                    self._load()  # someone wrote since (or damage waits to be set aside): start from the files
                else:
                    self._open_appenders()
                yield
            finally:
                self._sizes = _sizes(self.directory)
                self.close()

    def _open_appenders(self) -> None:
        for name in (WORKLOADS, RECORDS):
            if name not in self._appenders:
                self._appenders[name] = record_files.LineAppender(self.directory / name)

    def _commit_workload(self, mod):
        workload = self._memory.commit_workload(mod)
        if self._index.find(mod) is None:
            self._append(WORKLOADS, self._text().workload(mod))
            self._index.add(mod)
        return workload

    def _append(self, name: str, line: bytes) -> None:
        try:
            self._appenders[name].append(line)
        except UserError as err:
            self.write_error = err
            raise

    def _text(self) -> "_TVMLines":
        if self._lines is None:
            self._lines = _TVMLines()
        return self._lines


class _WorkloadIndex:
    """Line numbers of the workloads in the workload file (records refer to them), by structure."""

    def __init__(self):
        self._by_hash: dict[int, list[tuple[object, int]]] = {}
        self.count = 0

    def add(self, mod) -> int:
        self._by_hash.setdefault(kernel_hash(mod), []).append((mod, self.count))
        self.count += 1
        return self.count - 1

    def find(self, mod) -> int | None:
        for known, index in self._by_hash.get(kernel_hash(mod), ()):
            if tvm_ffi.structural_equal(known, mod):
                return index
        return None


class _TVMLines:
    """TVM's own text for a workload or a record: a ``JSONDatabase`` on private scratch files.

    The scratch database only ever holds workloads the real file already
    has, so a new workload always yields its line; a record's line gets the
    workload's index in the real file.
    """

    def __init__(self):
        self.directory = Path(tempfile.mkdtemp(prefix="tvm_shuffle_lines_"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.directory), True)
        self._paths = {WORKLOADS: self.directory / WORKLOADS, RECORDS: self.directory / RECORDS}
        self._read = {WORKLOADS: 0, RECORDS: 0}
        self._db = ms.database.JSONDatabase(str(self._paths[WORKLOADS]), str(self._paths[RECORDS]),
                                            allow_missing=True)

    def workload(self, mod) -> bytes:
        self._db.commit_workload(mod)
        return self._new_line(WORKLOADS)

    def record(self, record, index: int) -> bytes:
        self._db.commit_workload(record.workload.mod)
        self._new_bytes(WORKLOADS)  # the workload's line, if new here: the real file has it already
        self._db.commit_tuning_record(record)
        return _with_index(self._new_line(RECORDS), index)

    def _new_bytes(self, name: str) -> bytes:
        with open(self._paths[name], "rb") as f:
            f.seek(self._read[name])
            data = f.read()
        self._read[name] += len(data)
        return data

    def _new_line(self, name: str) -> bytes:
        data = self._new_bytes(name)
        if data.count(b"\n") != 1 or not data.endswith(b"\n"):
            raise RuntimeError(f"MetaSchedule wrote {len(data.splitlines())} lines for one entry of {name}")
        return data[:-1]


@dataclasses.dataclass
class _Contents:
    """A database's readable lines parsed into memory, and the lines that were not readable."""

    memory: object = dataclasses.field(default_factory=lambda: ms.database.MemoryDatabase())
    index: _WorkloadIndex = dataclasses.field(default_factory=_WorkloadIndex)
    lines: dict = dataclasses.field(default_factory=lambda: {WORKLOADS: [], RECORDS: []})  # what each file should hold
    unreadable: dict = dataclasses.field(default_factory=lambda: {WORKLOADS: [], RECORDS: []})  # (number, bytes, why)
    complete: dict = dataclasses.field(default_factory=lambda: {WORKLOADS: 0, RECORDS: 0})  # non-blank whole lines
    torn: dict = dataclasses.field(default_factory=lambda: {WORKLOADS: False, RECORDS: False})
    clean: bool = True  # the files hold exactly ``lines``, each newline-terminated

    @property
    def set_aside(self) -> int:
        return sum(len(lines) for lines in self.unreadable.values())

    def keep(self, name: str, line: bytes, *, as_is: bool) -> None:
        self.lines[name].append(line)
        self.clean &= as_is

    def reject(self, name: str, number: int, line: bytes, why: str, *, terminated: bool) -> None:
        self.unreadable[name].append((number, line, why))
        self.torn[name] |= not terminated
        self.clean = False


def _parse(workload_data: bytes, record_data: bytes, *, final: bool) -> _Contents:
    """Both files' lines, parsed; ``final``: nobody is writing, so an unterminated last line is a dead writer's.

    Records refer to workloads by line number; the readable lines are
    renumbered as the rewritten workload file will hold them.
    """
    from tvm_shuffle import schedules

    # Records of our tensorized kernels name their intrinsics: unknown, a trace does not parse.
    schedules.register_intrinsics(record_data)
    contents = _Contents()
    workloads: list = []  # per workload line, numbered as records refer to them: its Workload, or None
    renumbered: dict[int, int] = {}
    for number, line, terminated in _numbered(workload_data, final, contents, WORKLOADS):
        try:
            workload = contents.memory.commit_workload(ms.database.Workload.from_json(json.loads(line)).mod)
        except Exception as err:  # JSON, base64 or TVM's own parser: any of them fails on a damaged line
            workloads.append(None)
            contents.reject(WORKLOADS, number, line, _reason(err), terminated=terminated)
            continue
        renumbered[len(workloads)] = contents.index.add(workload.mod)
        workloads.append(workload)
        contents.keep(WORKLOADS, line, as_is=terminated)
    for number, line, terminated in _numbered(record_data, final, contents, RECORDS):
        values = record_files.json_values(line)
        if values is None:
            contents.reject(RECORDS, number, line, _json_error(line), terminated=terminated)
            continue
        for value, text in values:  # several when two unlocked writers glued records onto one line
            try:
                index, record = _parse_record(value, workloads)
            except Exception as err:
                contents.reject(RECORDS, number, text, _reason(err), terminated=terminated)
                continue
            contents.memory.commit_tuning_record(record)
            new = renumbered[index]
            contents.keep(RECORDS, text if new == index else _with_index(text, new),
                          as_is=terminated and new == index and len(values) == 1 and text == line)
    return contents


def _numbered(data: bytes, final: bool, contents: _Contents, name: str) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line, newline-terminated) of the non-blank lines; blank lines make the file unclean."""
    lines, tail = record_files.split_complete(data)
    numbered = [(number, line, True) for number, line in enumerate(lines, start=1)]
    if tail.strip():
        contents.clean = False  # a line in flight, or a dead writer's: never append after it
        if final:
            numbered.append((len(lines) + 1, tail, False))
    for number, line, terminated in numbered:
        if not line.strip():
            contents.clean = False
            continue
        contents.complete[name] += terminated
        yield number, line, terminated


def _parse_record(value, workloads: list):
    if not (isinstance(value, list) and len(value) == 2):
        raise ValueError("not a [workload index, record] pair")
    index, body = value
    if type(index) is not int or not 0 <= index < len(workloads) or workloads[index] is None:
        raise ValueError(f"refers to workload {index}, which {WORKLOADS} does not have")
    return index, ms.database.TuningRecord.from_json(body, workloads[index])


def _open_for_writing(directory: Path, log: Log) -> _Contents:
    """Parse the database under the records lock, moving unreadable lines to the side files first."""
    data = [record_files.read_bytes(directory / name) for name in (WORKLOADS, RECORDS)]
    contents = _parse(*data, final=True)
    if contents.clean:
        return contents
    _refuse_unreadable(directory, contents)
    with records_lock.rewriting(directory, exclusive=True):
        for name in (WORKLOADS, RECORDS):
            if contents.unreadable[name]:
                record_files.set_aside(directory / name, [line for _, line, _ in contents.unreadable[name]])
        for name in (RECORDS, WORKLOADS):
            if (directory / name).exists() or contents.lines[name]:
                record_files.replace_file(directory / name, contents.lines[name])
    if contents.set_aside:
        log(_set_aside_summary(directory, contents))
    contents.clean = True
    return contents


def _open_for_reading(directory: Path, log: Log) -> _Contents:
    """Parse the complete lines as they are now, skipping (and saying so) the unreadable ones."""
    contents = _parse(*_read_pair(directory), final=False)
    if contents.set_aside:
        log(f"warning: skipped {contents.set_aside} unreadable line(s) of the tuning database in {directory} "
            "(the next tune of this model moves them to *.damaged)")
    return contents


def _read_pair(directory: Path) -> tuple[bytes, bytes]:
    """Both files as one consistent pair: no repair rewrites them in between.

    The records file is read first: a record's workload line is written
    before the record, so every record read has its workload in what follows.
    """
    with records_lock.rewriting(directory, exclusive=False):
        record_data = record_files.read_bytes(directory / RECORDS)
        workload_data = record_files.read_bytes(directory / WORKLOADS)
    return workload_data, record_data


def _refuse_unreadable(directory: Path, contents: _Contents) -> None:
    """A file with whole lines and not one readable is refused by name, and left as it is."""
    for name in (WORKLOADS, RECORDS):
        if contents.complete[name] and not contents.lines[name]:
            number, _, why = contents.unreadable[name][0]
            raise UserError(f"tuning database file {directory / name} is corrupt: none of its "
                            f"{contents.complete[name]} lines is readable (line {number}: {why}); it is left as "
                            "it is: fix or delete it (re-tuning starts from scratch)")


def _set_aside_summary(directory: Path, contents: _Contents) -> str:
    parts = []
    for name in (WORKLOADS, RECORDS):
        rejected = contents.unreadable[name]
        if not rejected:
            continue
        number, _, why = rejected[0]
        torn = " (its last line partly written: an interrupted write)" if contents.torn[name] else ""
        parts.append(f"{len(rejected)} of {name}{torn}, first at line {number}: {why}")
    sides = [name + record_files.DAMAGED_SUFFIX for name in (WORKLOADS, RECORDS) if contents.unreadable[name]]
    return (f"set aside {contents.set_aside} unreadable line(s) of the tuning database in {directory} "
            f"({'; '.join(parts)}), moved to {' and '.join(sides)}; resuming from the "
            f"{len(contents.lines[RECORDS])} records left")


def _sizes(directory: Path) -> tuple:
    """Identity and size of both files: what a writer compares to see whether someone else wrote."""
    out = []
    for name in (WORKLOADS, RECORDS):
        try:
            stat = (directory / name).stat()
            out.append((stat.st_ino, stat.st_size))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def _with_index(text: bytes, index: int) -> bytes:
    """A record line pointing at workload line ``index``."""
    return re.sub(rb"^\s*\[\s*-?\d+\s*,", b"[%d," % index, text, count=1)


def _stored_hash(line: bytes) -> str | None:
    try:
        value = json.loads(line)
        return value[0] if isinstance(value, list) and value and isinstance(value[0], str) else None
    except ValueError:
        return None


def _json_error(line: bytes) -> str:
    try:
        json.loads(line)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except ValueError as err:
        return str(err)
    return "not JSON"


def _reason(err: BaseException) -> str:
    return _last_line(err)[:200]


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
