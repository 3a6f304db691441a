"""``python -m tvm_shuffle.tune``: bad input and the tuning database, without tuning.

Every case here fails (or checks files) before MetaSchedule starts, so the
file runs in seconds; tests/test_tune_x86.py tunes for real.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import free_port
from tvm_shuffle import host, targets
from tvm_shuffle import tune as tune_cli
from tvm_shuffle.errors import UserError
from tvm_shuffle.tuning import database, in_model, rpc, runner, search
from tvm_shuffle.tuning.lock import RecordsLock

MODEL = ["--model", "shufflenet_v2_x0_5", "--input-shape", "1,3,32,32"]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = tune_cli.main(list(argv))
    return code, capsys.readouterr().err


def test_unknown_target_lists_the_valid_ones(capsys):
    code, err = run_cli(capsys, *MODEL, "--target", "riscv")
    assert code == 2
    assert "unknown target 'riscv'" in err and "arm-rpi4" in err and "cuda-sm_80" in err and "x86-avx512" in err


@pytest.mark.parametrize("target", ["arm", "arm-graviton3"])
def test_arm_without_a_device_says_how_to_attach_one_or_build_untuned(capsys, target):
    if host.arch() == "aarch64":
        pytest.skip("an aarch64 host tunes ARM locally")
    code, err = run_cli(capsys, *MODEL, "--target", target)
    assert code == 2
    assert err.count("error:") == 1
    assert "python -m tvm.exec.rpc_tracker" in err
    assert "python -m tvm.exec.rpc_server --tracker" in err
    assert f"--rpc-tracker THIS_HOST:{rpc.DEFAULT_PORT} --rpc-key" in err
    assert f"python -m tvm_shuffle.compile --target {targets.get(target).name} --model shufflenet_v2_x0_5" in err


def test_cuda_without_a_gpu_needs_a_tracker(capsys):
    if runner.runs_here(targets.get("cuda")):
        pytest.skip("this machine has a GPU")
    code, err = run_cli(capsys, *MODEL, "--target", "cuda")
    assert code == 2
    assert "an NVIDIA GPU" in err and "--rpc-tracker" in err and "tvm_shuffle.compile --target cuda" in err


def test_missing_cross_compiler_names_the_package(capsys, tmp_path):
    board = {**targets.get("arm").to_dict(), "name": "my-board", "cross_compiler": "aarch64-nonexistent-g++",
             "cross_compiler_package": "g++-aarch64-nonexistent"}
    path = tmp_path / "board.json"
    path.write_text(json.dumps(board))
    code, err = run_cli(capsys, *MODEL, "--target-file", str(path), "--rpc-tracker", "127.0.0.1:1", "--rpc-key", "k")
    assert code == 2
    assert "aarch64-nonexistent-g++" in err and "apt-get install g++-aarch64-nonexistent" in err


def test_unreachable_tracker_fails_fast(capsys):
    port = free_port()  # nothing listens there
    code, err = run_cli(capsys, *MODEL, "--target", "arm", "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "rpi4",
                        "--rpc-timeout", "3")
    assert code == 2
    assert f"cannot reach the RPC tracker at 127.0.0.1:{port}" in err and "python -m tvm.exec.rpc_tracker" in err


@pytest.mark.parametrize("argv, message", [
    (["--rpc-tracker", "127.0.0.1:9190"], "needs --rpc-key"),
    (["--rpc-tracker", "host:port", "--rpc-key", "k"], "is not HOST:PORT"),
])
def test_bad_tracker_flags(capsys, argv, message):
    code, err = run_cli(capsys, *MODEL, "--target", "arm", *argv)
    assert code == 2 and message in err


def test_unwritable_work_dir(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = run_cli(capsys, *MODEL, "--target", "x86", "--work-dir", str(blocker / "work"))
    assert code == 2
    assert f"work directory {blocker / 'work'} is not writable" in err


def test_negative_trials_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        tune_cli.main([*MODEL, "--target", "x86", "--trials", "-1"])
    assert exit_info.value.code == 2
    assert "--trials must be >= 0" in capsys.readouterr().err


def test_help_explains_budget_and_boards(capsys):
    with pytest.raises(SystemExit):
        tune_cli.main(["--help"])
    text = capsys.readouterr().out
    assert f"x86: {targets.get('x86').default_trials} trials" in text
    assert "python -m tvm.exec.rpc_server --tracker" in text and "--rpc-key" in text


# ---- the database files -----------------------------------------------------------------------

def write_lines(path, lines: list[str], *, final_newline: bool = True) -> None:
    path.write_text("\n".join(lines) + ("\n" if final_newline else ""))


def test_a_records_file_with_no_readable_line_is_refused_by_name(tmp_path):
    """Its records refer to a workload file that is gone: nothing can be kept, so nothing is touched.

    A file with some readable lines keeps them and sets the rest aside (tests/test_records.py).
    """
    write_lines(tmp_path / database.RECORDS, ['[0, [[], [1e-05]]]', "garbage{", '[0, [[], [2e-05]]]'])
    with RecordsLock.acquire(tmp_path) as held, \
            pytest.raises(UserError, match=rf"{database.RECORDS} is corrupt: none of its 3 lines is readable"):
        database.open_database(tmp_path, lock=held)
    assert "garbage{" in (tmp_path / database.RECORDS).read_text()  # left as it was: nothing is thrown away


def test_structurally_invalid_database_is_an_error_naming_the_files(tmp_path):
    write_lines(tmp_path / database.WORKLOADS, ['["123", "not base64 of a module"]'])
    write_lines(tmp_path / database.RECORDS, ['[0, [[], [1e-05]]]'])
    with RecordsLock.acquire(tmp_path) as held, \
            pytest.raises(UserError, match=r"tuning database file .*database_workload.json is corrupt"):
        database.open_database(tmp_path, lock=held)


def test_corrupt_state_file_is_an_error(tmp_path):
    (tmp_path / database.STATE).write_text("{not json")
    with pytest.raises(UserError, match=database.STATE):
        database.own_trials(tmp_path)


def test_database_directories_name_target_model_shape_and_mode():
    spec = targets.get("arm")
    directory = database.database_dir("work", spec, "my model", (1, 3, 224, 224), "fused")
    assert directory.parts == ("work", "arm-rpi4-cortex-a72", "my_model-1x3x224x224-fused")
    assert database.target_dir_name(targets.get("cuda-sm_80")) == "cuda-sm_80"


# ---- progress ---------------------------------------------------------------------------------

def test_progress_estimate_and_stop_when_the_device_stops_answering():
    import io

    from tvm_shuffle.tuning.progress import MAX_FAILED_BATCHES, Progress, TaskState

    stream = io.StringIO()
    progress = Progress([TaskState("conv", weight=3), TaskState("pool", weight=1, best_seconds=2e-6)],
                        total=20, done=4, quiet=True, stream=stream)
    assert progress.estimate_text() == "best e2e estimate 0.00 ms (1/2 tasks)"
    progress.record(0, [1e-5, None, 2e-5], run_errors=["RPCRunner: timeout"])
    assert progress.estimate_seconds() == (pytest.approx(3 * 1e-5 + 2e-6), 2)
    assert (progress.measured, progress.failed) == (2, 1)
    assert "7/20 trials" in stream.getvalue()  # 4 earlier + 3 now, logged in --quiet mode

    for _ in range(MAX_FAILED_BATCHES):
        assert not progress.failing
        progress.record(1, [None, None], run_errors=["RPCRunner: no free device"] * 2)
    assert progress.failing
    assert "RPCRunner: no free device" in str(progress.failure())
    assert "records measured so far are kept" in str(progress.failure())


def test_search_population_follows_the_batch():
    assert [search.population_size(n) for n in (1, 8, 16, 32, 64, 200)] == [128, 128, 128, 256, 512, 512]


def test_tensor_intrinsics_import_with_pytorch_loaded():
    """The quick import (no module lookup per stack frame) registers the intrinsics TVMScript parses and restores inspect."""
    check = ("import inspect, torch\n"
             "from tvm_shuffle import tvm_compat\n"
             "stack = inspect.stack\n"
             "tvm_compat.import_tensor_intrinsics()\n"
             "assert inspect.stack is stack\n"
             "from tvm.s_tir import TensorIntrin\n"
             "for name in ('dot_16x4_avx512', 'dot_4x4_i8i8s32_neon', 'wmma_sync_16x16x16_f16f16f32'):\n"
             "    assert TensorIntrin.get(name) is not None, name\n")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


# ---- the in-model check -------------------------------------------------------------------------

def test_only_kernels_slower_beyond_the_margin_keep_their_default_schedule():
    tuned = {"conv_a": 120.0, "conv_b": 104.0, "conv_c": 50.0, "vm.builtin.alloc_tensor": 90.0}
    default = {"conv_a": 100.0, "conv_b": 100.0, "conv_c": 80.0, "vm.builtin.alloc_tensor": 10.0}
    verdicts = in_model.slower_when_tuned(tuned, default, ["conv_a", "conv_b", "conv_c", "conv_missing"], margin=0.05)
    assert verdicts == [in_model.Verdict("conv_a", 120.0, 100.0)]  # b is within the margin; builtins are no kernels


def test_an_in_model_choice_applies_only_to_the_records_it_was_made_for(tmp_path):
    write_lines(tmp_path / database.RECORDS, ['[0, [[], [1e-05]]]'])
    (tmp_path / in_model.CHOICE).write_text(json.dumps({
        "records_digest": database.digest(tmp_path), "default_schedule": [{"kernel": "k", "workload": "42"}]}))
    assert in_model.excluded_workloads(tmp_path) == {"42"}
    write_lines(tmp_path / database.RECORDS, ['[0, [[], [1e-05]]]', '[0, [[], [2e-05]]]'])  # tuned further
    assert in_model.excluded_workloads(tmp_path) == set()


def test_a_corrupt_in_model_choice_is_an_error_naming_the_file(tmp_path):
    (tmp_path / in_model.CHOICE).write_text("{not json")
    with pytest.raises(UserError, match=in_model.CHOICE):
        in_model.excluded_workloads(tmp_path)


def test_a_compile_past_the_timeout_is_a_failed_build_and_the_batch_goes_on(monkeypatch):
    """LLVM stuck on one candidate: that candidate fails, the others build, its late artifact is removed, and the
    process waits for it at exit."""
    import os
    import threading

    from tvm_shuffle.tuning import builder
    from tvm_shuffle.tvm_compat import ms, te, tir, tvm

    a = te.placeholder((8,), name="a")
    double = te.create_prim_func([a, te.compute((8,), lambda i: a[i] * 2.0, name="b")])
    stuck, late = threading.Event(), []
    real_export = builder.export_candidate

    def compile_candidate(mod, target):  # TVM's plain build: the real step imports tensor intrinsics (~60 s)
        if mod.same_as(inputs[0].mod):
            stuck.wait(10)  # released once the batch has given up on it
        return tir.build(mod, target=target)

    def export_candidate(rt_mod, compiler):
        late.append(real_export(rt_mod, compiler))
        return late[-1]

    monkeypatch.setattr(builder, "compile_candidate", compile_candidate)
    monkeypatch.setattr(builder, "export_candidate", export_candidate)
    target = tvm.target.Target("llvm")
    inputs = [ms.builder.BuilderInput(tvm.IRModule({"main": double.with_attr("global_symbol", "main")}), target)
              for _ in range(3)]
    tir.build(inputs[1].mod, target=target)  # the first compile in a process is the slow one
    build = builder.InProcessBuilder(threads=2, timeout_s=1.0)
    results = build.build(inputs)
    assert "ran past 1 s" in results[0].error_msg
    assert all(r.error_msg is None and os.path.exists(r.artifact_path) for r in results[1:])
    assert build.stats.abandoned == 1
    built = len(late)
    threading.Timer(0.5, stuck.set).start()
    builder.finish_abandoned_compiles()  # what the process runs at exit: returns once the late compile is done
    assert len(late) == built + 1 and not os.path.exists(os.path.dirname(late[-1]))


def test_a_candidate_and_its_stored_record_have_the_same_key(tmp_path):
    """The resume key of a candidate that packs its weights (annotated ``True``) matches its record read back (``1``).

    Without that a resumed run did not see the candidate as measured and measured it again.
    """
    import torch

    from tvm_shuffle import build, frontends, passes, schedules
    from tvm_shuffle.tuning import tasks
    from tvm_shuffle.tvm_compat import ms

    spec = targets.get("x86-avx512")
    target = tasks.tuning_target(spec, host_cores=1)
    module = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 1), torch.nn.ReLU()).eval()
    lowered = build.lower(passes.optimize(frontends.from_torch_module(module, (1, 16, 7, 7)).mod), spec)
    (task,) = tasks.extract(lowered, target)
    candidate = schedules.default_candidates(task.mod, target)[0]
    assert "layout_rewrite_preproc" in str(candidate.sch.trace)
    db = database.open_database(tmp_path)
    db.commit_tuning_record(ms.database.TuningRecord(candidate.sch.trace, db.commit_workload(task.mod), [1e-3],
                                                     target, candidate.args_info))
    (stored,) = database.all_records(database.open_database(tmp_path), task.mod)
    assert database.candidate_hash(stored) == database.scheduled_hash(task.mod, candidate.sch.trace)
