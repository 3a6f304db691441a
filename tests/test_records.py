"""Tuning records that survive two runs at once, damaged lines and a board that dies mid-run.

The fast tests work on real MetaSchedule records of the tiny model's kernels
(unscheduled traces, made-up run times), written by ``RecordsDatabase`` and
read back by MetaSchedule's own ``JSONDatabase``; they cover the lock, the
whole-line writes, setting damaged lines aside, the runner's view of a lost
device and the runtime's non-finite input check. The slow ones run the CLI:
two tunes on one records directory, and a tune whose emulated board is
killed in the middle of a batch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import TINY_SHAPE, TinyShuffleUnit, arm_marks, free_port, start_server, stop_servers, tracker_reachable, \
    wait_for
from tvm_shuffle.errors import UserError
from tvm_shuffle.tuning import database, lock, record_files, recording, rpc
from tvm_shuffle.tuning.lock import RecordsBusy, RecordsLock

ROOT = Path(__file__).resolve().parents[1]


# ---- real records -------------------------------------------------------------------------------

def make_kernels():
    """The tiny model's x86 tuning tasks and the target they are tuned for."""
    from tvm_shuffle import build, frontends, passes, targets
    from tvm_shuffle.tuning import tasks

    spec = targets.get("x86")
    target = tasks.tuning_target(spec, host_cores=1)
    imported = frontends.from_torch_module(TinyShuffleUnit().eval(), TINY_SHAPE)
    return tasks.extract(build.lower(passes.optimize(imported.mod), spec), target), target


@pytest.fixture(scope="module")
def kernels():
    return make_kernels()


def commit(db, kernels, count: int, *, start: int = 0, samples: int = 1) -> None:
    """``count`` records, one kernel after another, each with its own run time (``samples`` copies of it)."""
    from tvm_shuffle.tvm_compat import Schedule, ms

    task_list, target = kernels
    for i in range(start, start + count):
        task = task_list[i % len(task_list)]
        db.commit_tuning_record(ms.database.TuningRecord(
            Schedule(task.mod).trace, db.commit_workload(task.mod), [1e-6 * (i + 1)] * samples, target,
            ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])))


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def tvm_reads(directory: Path) -> int:
    """Records MetaSchedule's own JSONDatabase loads from the directory (it raises on any bad line)."""
    from tvm_shuffle.tvm_compat import ms

    db = ms.database.JSONDatabase(str(directory / database.WORKLOADS), str(directory / database.RECORDS),
                                  allow_missing=False)
    return len(db.get_all_tuning_records())


def open_locked(directory: Path, messages: list[str]):
    held = RecordsLock.acquire(directory, log=messages.append)
    return held, database.open_database(directory, lock=held, log=messages.append)


@pytest.fixture
def records(tmp_path, kernels) -> Path:
    """A records directory with 9 records over the tiny model's kernels."""
    directory = tmp_path / "records"
    commit(database.open_database(directory), kernels, 9)
    return directory


def test_records_are_whole_lines_that_metaschedule_reads(records):
    assert all(line.startswith(b"[") and line.endswith(b"]") for line in lines(records / database.RECORDS))
    assert tvm_reads(records) == 9
    stored = database.read_records(records)
    assert [s.run_secs for s in stored] == [(pytest.approx(1e-6 * (i + 1)),) for i in range(9)]
    hashes = [json.loads(line)[0] for line in lines(records / database.WORKLOADS)]
    assert [s.workload for s in stored] == [hashes[i % len(hashes)] for i in range(9)]
    assert all(s.ran for s in stored)


# ---- damage costs only the damaged lines ----------------------------------------------------------

def test_a_garbled_line_in_the_middle_is_set_aside_counted_and_the_rest_resumes(records, kernels):
    path = records / database.RECORDS
    original = lines(path)
    garbled = original[4][:40] + b"\x00\x00garbage"
    path.write_bytes(b"\n".join([*original[:4], garbled, *original[5:]]) + b"\n")

    messages: list[str] = []
    held, db = open_locked(records, messages)
    with held:
        assert len(db) == 8 and db.set_aside == 1
        (message,) = messages
        assert "set aside 1 unreadable line(s)" in message and "first at line 5" in message
        assert "resuming from the 8 records left" in message
        commit(db, kernels, 1, start=20)  # the run goes on from what is left
    assert (records / (database.RECORDS + ".damaged")).read_bytes() == garbled + b"\n"
    assert lines(path) == [*original[:4], *original[5:], lines(path)[-1]]
    assert tvm_reads(records) == 9
    assert database.own_trials(records) == 9


def test_records_two_unlocked_writers_glued_onto_one_line_are_both_kept(records):
    """MetaSchedule's JSONDatabase writes a line and its newline separately: two of them glue records together."""
    path = records / database.RECORDS
    original = lines(path)
    path.write_bytes(b"\n".join([*original[:2], original[2] + original[3], b"", *original[4:]]) + b"\n")
    assert len(database.read_records(records)) == 9  # a reader already sees both

    messages: list[str] = []
    held, db = open_locked(records, messages)
    with held:
        assert len(db) == 9 and db.set_aside == 0 and not messages
    assert lines(path) == original  # one record per line again
    assert not (records / (database.RECORDS + ".damaged")).exists()


def test_a_record_line_cut_short_by_a_killed_writer_is_set_aside(records):
    path = records / database.RECORDS
    data = path.read_bytes()
    torn = lines(path)[-1][:25]
    path.write_bytes(data + torn)

    messages: list[str] = []
    held, db = open_locked(records, messages)
    with held:
        assert len(db) == 9 and db.set_aside == 1
        assert "its last line partly written" in messages[0]
    assert path.read_bytes() == data
    assert (records / (database.RECORDS + ".damaged")).read_bytes() == torn + b"\n"


def test_a_damaged_workload_line_costs_its_records_only(records):
    """Records refer to workloads by line number: the others are renumbered and still match their kernels."""
    path = records / database.WORKLOADS
    workloads = lines(path)
    before = [(s.workload, s.run_secs) for s in database.read_records(records)]
    lost = [s for s in before if s[0] == json.loads(workloads[1])[0]]
    path.write_bytes(b"\n".join([workloads[0], workloads[1][:100], *workloads[2:]]) + b"\n")
    assert len(database.read_records(records)) == 9 - len(lost)  # readers skip them too

    messages: list[str] = []
    held, db = open_locked(records, messages)
    with held:
        assert db.set_aside == 1 + len(lost)
    assert [(s.workload, s.run_secs) for s in database.read_records(records)] == [s for s in before if s not in lost]
    assert tvm_reads(records) == 9 - len(lost)
    assert (records / (database.WORKLOADS + ".damaged")).read_bytes() == workloads[1][:100] + b"\n"


def test_a_file_with_nothing_readable_is_refused_by_name_and_left_alone(records):
    path = records / database.RECORDS
    garbage = b"".join(b"{not a record %d\n" % i for i in range(3))
    path.write_bytes(garbage)
    with RecordsLock.acquire(records) as held, pytest.raises(UserError) as error:
        database.open_database(records, lock=held)
    assert f"tuning database file {path} is corrupt: none of its 3 lines is readable" in str(error.value)
    assert "fix or delete it" in str(error.value)
    assert path.read_bytes() == garbage
    assert not (records / (database.RECORDS + ".damaged")).exists()


def test_a_failed_append_leaves_no_partial_line(records, kernels, monkeypatch):
    """A full disk in the middle of a line: the line is taken back and the error names the file."""
    import errno

    path = records / database.RECORDS
    before = path.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 200:
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", half_then_full)
    db = database.open_database(records)
    with pytest.raises(UserError, match=rf"cannot write a tuning record to {re.escape(str(path))}: No space left"):
        commit(db, kernels, 1, start=30)
    assert path.read_bytes() == before and len(db) == 9


# ---- readers during a tune ------------------------------------------------------------------------

def test_a_reader_sees_only_whole_records_and_changes_nothing(records):
    """A record in flight (its newline not written yet) is invisible to readers, who leave the file as it is."""
    path = records / database.RECORDS
    complete = path.read_bytes()
    new_line = lines(path)[0]
    path.write_bytes(complete + new_line[: len(new_line) // 2])  # what a reader can see during a write
    assert len(database.read_records(records)) == 9
    assert len(database.open_database(records)) == 9
    assert path.read_bytes() == complete + new_line[: len(new_line) // 2]
    with open(path, "ab") as f:
        f.write(new_line[len(new_line) // 2:] + b"\n")
    assert len(database.read_records(records)) == 10


WRITER = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import test_records as t
kernels = t.make_kernels()
db = t.database.open_database(Path(sys.argv[1]))
t.commit(db, kernels, int(sys.argv[2]), start=int(sys.argv[3]), samples=4000)
"""


def test_two_writers_and_a_reader_at_once_see_only_whole_records(tmp_path):
    """Two processes append ~100 KB records to one directory while this one reads it: no glued or torn line."""
    directory = tmp_path / "records"
    script = WRITER.format(tests=str(Path(__file__).parent))
    writers = [subprocess.Popen([sys.executable, "-c", script, str(directory), "12", str(start)],
                                stderr=subprocess.PIPE, cwd=ROOT) for start in (0, 100)]
    seen = []
    while any(w.poll() is None for w in writers):
        if (directory / database.RECORDS).exists():
            complete, _ = record_files.split_complete((directory / database.RECORDS).read_bytes())
            assert all(record_files.json_values(line) is not None for line in complete)
            seen.append(len(database.read_records(directory)))
        time.sleep(0.05)
    for writer in writers:
        assert writer.wait() == 0, writer.stderr.read().decode()[-3000:]
    assert seen == sorted(seen) and len(set(seen)) > 2  # it read while they wrote, and never lost a record
    assert [len(line) > 100_000 for line in lines(directory / database.RECORDS)] == [True] * 24
    assert tvm_reads(directory) == 24
    assert sorted(s.run_secs[0] for s in database.read_records(directory)) == pytest.approx(
        sorted(1e-6 * (i + 1) for i in [*range(12), *range(100, 112)]))


# ---- one writer per records directory -------------------------------------------------------------

HOLDER = """
import sys, time
from tvm_shuffle.tuning.lock import RecordsLock
held = RecordsLock.acquire(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def hold_lock(directory: Path) -> subprocess.Popen:
    directory.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, cwd=ROOT)
    assert holder.stdout.readline() == b"held\n"
    return holder


def test_a_second_writer_waits_for_the_first_says_who_and_no_wait_refuses(tmp_path):
    directory = tmp_path / "records"
    holder = hold_lock(directory)
    try:
        with pytest.raises(RecordsBusy, match=rf"being written by process {holder.pid} \(") as busy:
            RecordsLock.acquire(directory, wait=False)
        assert "\n" not in str(busy.value)
        messages: list[str] = []
        got = []
        waiter = threading.Thread(target=lambda: got.append(RecordsLock.acquire(directory, log=messages.append)))
        waiter.start()
        time.sleep(1.0)
        assert not got and len(messages) == 1 and f"waiting for process {holder.pid}" in messages[0]
    finally:
        holder.send_signal(signal.SIGKILL)  # the lock dies with its process: nothing to clean up
        holder.wait()
    waiter.join(30)
    assert got and got[0].held
    assert f"process {os.getpid()}" in (directory / lock.LOCK_FILE).read_text()
    got[0].release()


def test_one_process_never_waits_for_itself(tmp_path):
    with RecordsLock.acquire(tmp_path):
        with pytest.raises(RuntimeError, match="this process already holds the records lock"):
            RecordsLock.acquire(tmp_path)
    RecordsLock.acquire(tmp_path, wait=False).release()


def test_other_models_records_are_not_locked(tmp_path):
    holder = hold_lock(tmp_path / "x86-znver5" / "model_a")
    (tmp_path / "x86-znver5" / "model_b").mkdir()
    try:
        with RecordsLock.acquire(tmp_path / "x86-znver5" / "model_b", wait=False) as held:
            assert held.held
    finally:
        holder.kill()
        holder.wait()


def test_a_locked_directory_is_still_readable_without_waiting(records):
    holder = hold_lock(records)
    try:
        assert len(database.read_records(records)) == 9
        assert len(database.open_database(records)) == 9
    finally:
        holder.kill()
        holder.wait()


# ---- a device that goes away ----------------------------------------------------------------------

def runner_result(error: str | None) -> SimpleNamespace:
    return SimpleNamespace(error_msg=error)


BUILT, BUILD_FAILED = SimpleNamespace(error_msg=None), SimpleNamespace(error_msg="compile error")


@pytest.mark.parametrize("errors, answers, lost", [
    ([None, None], False, []),  # all measured: the device is not even asked
    (["RPCRunner: An exception occurred\nconnection reset", None], True, []),  # a candidate's own crash
    (["RPCRunner: An exception occurred\nconnection reset", None], False, [0]),  # the device went away
    ([None, f"RPCRunner: An exception occurred\n{rpc.DEVICE_GONE}: no answer", "x"], True, [1, 2]),
])
def test_failed_runs_of_a_vanished_device_are_not_measurements(errors, answers, lost):
    asked = []
    found = recording.unmeasured([BUILT] * len(errors), [runner_result(e) for e in errors],
                                 lambda: asked.append(1) or answers)
    assert found == lost
    assert len(asked) == (errors != [None, None] and not any(rpc.DEVICE_GONE in str(e) for e in errors))
    assert recording.unmeasured([BUILD_FAILED], [runner_result("compile error")], lambda: False) == []
    assert recording.unmeasured([BUILT], [runner_result("x")], None) == []


def test_session_requests_fail_at_once_after_one_found_no_device():
    """In a batch whose device died, one request waits the timeout and the others fail without waiting."""
    from tvm_shuffle.tvm_compat import ms

    config = ms.runner.RPCConfig(tracker_host="127.0.0.1", tracker_port=free_port(), tracker_key="gone",
                                 session_timeout_sec=2)
    durations = []
    for _ in range(2):
        start = time.monotonic()
        with pytest.raises(UserError, match=rpc.DEVICE_GONE):
            rpc.create_session(config)
        durations.append(time.monotonic() - start)
    assert durations[1] < 0.5


def test_a_request_that_timed_out_does_not_take_the_next_device(tmp_path):
    """Left queued at the tracker, it would take a board that comes back and hold it, unused, for a session."""
    from tvm import rpc as tvm_rpc

    from tvm_shuffle.tuning.emulated_device import Registration

    port = free_port()
    server = start_server("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end",
                          str(port + 1), "--silent", log=tmp_path / "tracker.log")
    try:
        tracker = rpc.Tracker("127.0.0.1", port, "board", timeout=2)
        wait_for(lambda: tracker_reachable(tracker), "the tracker did not start", 60)
        with pytest.raises(UserError, match="no answer within 2 s"):
            rpc.request_session(tracker)
        time.sleep(0.5)  # the tracker sees the request's connection close
        board = Registration(tracker, free_port())  # a board registers, as after a restart
        queue = tvm_rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"]["board"]
        assert queue == {"free": 1, "pending": 0}
        board.sock.close()
    finally:
        stop_servers([server])


def test_a_tracker_that_starts_late_is_waited_for():
    port = free_port()
    listener = socket.socket()

    def start_tracker_later():
        time.sleep(2)
        listener.bind(("127.0.0.1", port))
        listener.listen()

    threading.Thread(target=start_tracker_later, daemon=True).start()
    messages: list[str] = []
    try:
        rpc.wait_for_tracker(rpc.Tracker("127.0.0.1", port, "k", timeout=5), 30, log=messages.append)
    finally:
        listener.close()
    assert messages == [f"the RPC tracker at 127.0.0.1:{port} does not answer yet; retrying for up to 30 s"]
    with pytest.raises(UserError, match="cannot reach the RPC tracker"):
        rpc.wait_for_tracker(rpc.Tracker("127.0.0.1", free_port(), "k", timeout=5), 1.5, log=messages.append)


# ---- NaN in ----------------------------------------------------------------------------------------

def test_non_finite_inputs_are_named():
    from tvm_shuffle import runtime

    x = np.zeros((1, 3, 4, 4), "float32")
    runtime.check_finite(x)
    x[0, 1, 2, 3], x[0, 2, 0, 0] = np.nan, -np.inf
    with pytest.raises(UserError, match=r"input has 2 non-finite value\(s\).* \(nan\) at index \(0, 1, 2, 3\)"):
        runtime.check_finite(x)
    runtime.check_finite(np.array([1, 2], "int32"))


def test_a_compiled_model_refuses_nan_unless_asked_not_to(tmp_path):
    """The model's ReLU (LLVM maxnum) turns a NaN into a number, so the Python runtime checks its input."""
    import torch

    from tvm_shuffle import api, runtime

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU()).eval()
    bundle = api.compile(module, "x86", input_shape=(1, 3, 4, 4)).save(tmp_path / "out")
    x = np.ones((1, 3, 4, 4), "float32")
    x[0, 0, 1, 1] = np.nan
    with pytest.raises(UserError, match=r"input has 1 non-finite value\(s\).*index \(0, 0, 1, 1\)"):
        runtime.load(bundle)(x)
    (y,) = runtime.load(bundle, check_finite=False)(x)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert np.isnan(expected[0, :, 1, 1]).all() and np.isfinite(y).all()  # what the check is for


# ---- the CLI: two tunes at once, a board that dies ------------------------------------------------

@pytest.fixture(scope="module")
def tiny_pt2(tmp_path_factory) -> Path:
    import torch

    from tvm_shuffle.models import randomize_batchnorm

    torch.manual_seed(0)
    module = randomize_batchnorm(TinyShuffleUnit()).eval()
    path = tmp_path_factory.mktemp("models") / "tiny.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(*TINY_SHAPE),)), str(path))
    return path


def records_dir(work: Path) -> Path:
    (directory,) = work.glob("*/tiny-*")
    return directory


def measured_twice(directory: Path) -> int:
    """Records whose scheduled kernel another record of the same task already has."""
    import tvm_ffi

    from tvm_shuffle.tvm_compat import ms

    db = ms.database.JSONDatabase(str(directory / database.WORKLOADS), str(directory / database.RECORDS))
    seen, twice = set(), 0
    for record in db.get_all_tuning_records():
        key = (tvm_ffi.structural_hash(record.workload.mod),
               tvm_ffi.structural_hash(record.as_measure_candidate().sch.mod))
        twice += key in seen
        seen.add(key)
    return twice


def tune_x86(pt2: Path, work: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tvm_shuffle.tune", "--torch", str(pt2), "--target", "x86", "--trials", str(trials),
            "--work-dir", str(work), "--out", str(work.parent / f"out-{trials}"), "--quiet", *extra]


@pytest.mark.slow
def test_two_tunes_on_one_records_directory_take_turns(tiny_pt2, tmp_path):
    """The second tune waits for the first (paused while it holds the lock), then measures only what is left."""
    work = tmp_path / "work"
    logs = {name: tmp_path / f"{name}.err" for name in ("first", "second")}
    first = subprocess.Popen(tune_x86(tiny_pt2, work, 8), stdout=subprocess.DEVNULL,
                             stderr=logs["first"].open("w"), cwd=ROOT)
    second = None
    try:
        lock_file = lambda: next(work.glob(f"*/tiny-*/{lock.LOCK_FILE}"), None)  # noqa: E731
        wait_for(lambda: lock_file() and f"process {first.pid} " in lock_file().read_text(),
                 "the first tune did not take the records lock", 300)
        first.send_signal(signal.SIGSTOP)  # it holds the lock for as long as this test needs
        second = subprocess.Popen(tune_x86(tiny_pt2, work, 16), stdout=subprocess.DEVNULL,
                                  stderr=logs["second"].open("w"), cwd=ROOT)
        wait_for(lambda: "waiting for process" in logs["second"].read_text(), "the second tune did not wait", 300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=900) == 0, logs["first"].read_text()[-3000:]
    assert second.wait(timeout=900) == 0, logs["second"].read_text()[-3000:]

    waited = logs["second"].read_text()
    assert waited.count(f"waiting for process {first.pid} (") == 1
    assert "8 trials left of 16 (8 done before)" in waited
    directory = records_dir(work)
    assert database.own_trials(directory) == 16 and measured_twice(directory) == 0


def tiny_records_dir(work: Path) -> Path:
    from tvm_shuffle import targets

    return database.database_dir(work, targets.get("x86"), "tiny", TINY_SHAPE, "fused")


def test_a_tune_that_must_not_wait_stops_before_tuning(tiny_pt2, tmp_path):
    from tvm_shuffle import frontends, targets
    from tvm_shuffle.tuning import runner, session

    holder = hold_lock(tiny_records_dir(tmp_path / "work"))
    spec = targets.get("x86")
    try:
        with pytest.raises(RecordsBusy, match=f"being written by process {holder.pid} "):
            session.tune(frontends.from_pt2(tiny_pt2), spec, device=runner.local(spec), work_dir=tmp_path / "work",
                         trials=8, wait=False)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_no_wait_exits_2_with_one_line(tiny_pt2, tmp_path):
    work = tmp_path / "work"
    holder = hold_lock(tiny_records_dir(work))
    try:
        refused = subprocess.run(tune_x86(tiny_pt2, work, 8, "--no-wait"), capture_output=True, text=True,
                                 timeout=120, cwd=ROOT)
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 2
    (error,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert f"being written by process {holder.pid} (" in error and "--no-wait" in error


@pytest.fixture
def board(tmp_path):
    """A tracker and an emulated aarch64 board of this test's own, started as the README does (no wait between)."""
    from conftest import EMULATED_ARM_KEY

    logs = tmp_path / "rpc"
    logs.mkdir()
    port = free_port()
    tracker = rpc.Tracker("127.0.0.1", port, EMULATED_ARM_KEY, timeout=30)
    processes = [start_server("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end",
                              str(port + 1), "--silent", log=logs / "tracker.log")]

    def start_device() -> subprocess.Popen:
        log = logs / f"device-{len(processes)}.log"
        device = start_server("tvm_shuffle.tuning.emulated_device", "--tracker", tracker.address, "--key",
                              EMULATED_ARM_KEY, log=log)
        processes.append(device)
        wait_for(lambda: tracker_reachable(tracker) and rpc.registered_servers(tracker).get(EMULATED_ARM_KEY),
                 f"the emulated device did not register: {log.read_text()[-2000:]}", 300)
        device.log = log
        return device

    def kill(device: subprocess.Popen) -> None:
        os.killpg(device.pid, signal.SIGKILL)  # the board dies: its server and the session it is serving
        device.wait()
        processes.remove(device)

    yield SimpleNamespace(tracker=tracker, start_device=start_device, kill=kill)
    stop_servers(processes)


def marked(marks):
    """Apply a list of marks (conftest.arm_marks) to one test."""
    def apply(test):
        for mark in marks:
            test = mark(test)
        return test
    return apply


@marked(arm_marks())
def test_a_board_that_dies_mid_batch_stops_the_run_and_the_same_command_resumes(board, tiny_pt2, tmp_path, capsys):
    """Killed while it measures a batch: nothing of that batch is recorded as a failure, the run stops after
    --rpc-timeout saying how to resume, and once a board is back the same command finishes the budget with no
    candidate measured twice."""
    from tvm_shuffle import tune as tune_cli

    work, budget, timeout = tmp_path / "work", 16, 15
    command = ["--torch", str(tiny_pt2), "--target", "arm", "--trials", str(budget), "--work-dir", str(work),
               "--out", str(tmp_path / "out"), "--rpc-tracker", board.tracker.address, "--rpc-key",
               board.tracker.key, "--rpc-timeout", str(timeout), "--quiet"]
    device = board.start_device()
    killed: dict = {}

    def kill_mid_batch():
        # A batch is under way when the board has served more sessions (one per candidate, plus the tune's
        # first check) than there are records: they are written when the batch is over.
        while True:
            done = len(database.read_records(records_dir(work))) if list(work.glob("*/tiny-*")) else 0
            sessions = device.log.read_text().count("emulated device: session of")
            if done and sessions > done + 1:
                break
            time.sleep(0.2)
        board.kill(device)
        killed.update(records=done, at=time.monotonic())

    watcher = threading.Thread(target=kill_mid_batch, daemon=True)
    watcher.start()
    assert tune_cli.main(command) == 2
    stopped = time.monotonic()
    err = capsys.readouterr().err
    assert killed, err[-3000:]
    assert "stopped answering during a batch" in err and "run the same command to resume" in err
    assert stopped - killed["at"] < timeout + 45  # one --rpc-timeout, not one per candidate of the batch
    directory = records_dir(work)
    kept = database.read_records(directory)
    assert killed["records"] <= len(kept) < budget
    assert all(record.ran for record in kept)  # the lost batch left no failed records behind
    with capsys.disabled():
        print(f"\nboard killed with {killed['records']} records written, run stopped "
              f"{stopped - killed['at']:.0f} s later with {len(kept)} kept: "
              f"{next(line for line in err.splitlines() if line.startswith('error:'))}")

    board.start_device()
    assert tune_cli.main(command) == 0, capsys.readouterr().err[-3000:]
    assert database.own_trials(directory) == budget
    assert measured_twice(directory) == 0
