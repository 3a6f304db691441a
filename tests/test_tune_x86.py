"""Tuning on this machine, end to end, with tiny budgets on the tiny model (1x3x16x16).

What is checked: the tuned library matches PyTorch, the budget counts every
run, a re-run measures nothing twice, Ctrl-C (SIGINT) and SIGKILL keep every
committed record and the next run resumes, and records of identical kernels
are reused by another model. Tolerance against PyTorch: rtol=1e-4,
atol=1e-5 (float32 sums in a different order).

The first MetaSchedule run in a process spends ~30 s importing TVM's tensor
intrinsics; the fixtures share one process for that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_SHAPE, TinyShuffleUnit
from tvm_shuffle import runtime
from tvm_shuffle import tune as tune_cli
from tvm_shuffle.models import randomize_batchnorm
from tvm_shuffle.tuning import database, in_model

pytestmark = pytest.mark.slow

TRIALS = 16


@pytest.fixture(scope="module")
def tiny_module() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(TinyShuffleUnit()).eval()


@pytest.fixture(scope="module")
def tiny_pt2(tmp_path_factory, tiny_module) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.pt2"
    torch.export.save(torch.export.export(tiny_module, (torch.randn(*TINY_SHAPE),)), str(path))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("work")


def tune(model: Path, work: Path, out: Path, trials: int, *extra: str) -> int:
    return tune_cli.main(["--torch", str(model), "--target", "x86", "--trials", str(trials), "--work-dir", str(work),
                          "--out", str(out), "--quiet", *extra])


def records_dir(work: Path, name: str = "tiny") -> Path:
    (directory,) = work.glob(f"x86-*/{name}-*")
    return directory


def record_lines(directory: Path) -> int:
    path = directory / database.RECORDS
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def measured_twice(directory: Path) -> int:
    """Records whose scheduled kernel (structural hash) another record of the same task already has."""
    import tvm_ffi

    from tvm_shuffle.tvm_compat import ms

    db = ms.database.JSONDatabase(str(directory / database.WORKLOADS), str(directory / database.RECORDS))
    seen, twice = set(), 0
    for record in db.get_all_tuning_records():
        key = (tvm_ffi.structural_hash(record.workload.mod), tvm_ffi.structural_hash(record.as_measure_candidate().sch.mod))
        twice += key in seen
        seen.add(key)
    return twice


@pytest.fixture(scope="module")
def tuned(tiny_pt2, work, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    assert tune(tiny_pt2, work, out, TRIALS) == 0
    return out


def test_tuned_library_matches_pytorch(tuned, work, tiny_module):
    x = np.random.default_rng(0).standard_normal(TINY_SHAPE).astype("float32")
    (y,) = runtime.load(tuned)(x)
    with torch.no_grad():
        expected = tiny_module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)

    directory = records_dir(work)
    manifest = json.loads((tuned / "manifest.json").read_text())
    assert manifest["tuned"] and manifest["tuning_database_digest"] == database.digest(directory)
    assert record_lines(directory) == TRIALS  # the budget is exact, not "at least"
    assert (directory / "logs" / "tuning.log").stat().st_size > 0  # MetaSchedule's chatter went to files


def test_summary_reports_trials_builder_overhead_and_latencies(tuned, tiny_pt2, work, tmp_path, capsys):
    assert tune(tiny_pt2, work, tmp_path / "out", TRIALS) == 0
    captured = capsys.readouterr()
    assert "nothing to tune" in captured.err  # the same command again: the budget is spent
    assert f"{TRIALS} of {TRIALS} in all" in captured.out
    assert "end-to-end median latency: untuned" in captured.out and "-> tuned" in captured.out
    assert "in-model check:" in captured.out and (records_dir(work) / in_model.CHOICE).is_file()
    with capsys.disabled():
        print("\n" + captured.out)


def test_a_kernel_the_model_check_sends_back_builds_with_its_default_schedule(tuned, tiny_pt2, work, tmp_path,
                                                                             tiny_module):
    """The build drops exactly that kernel's records, keeps every other tuned kernel, and stays exact."""
    from tvm_shuffle import build, frontends, passes, targets
    from tvm_shuffle.tuning import tasks

    directory = tmp_path / "records"
    shutil.copytree(records_dir(work), directory)
    spec = targets.get("x86")
    imported = frontends.import_model(tiny_pt2)
    task_list = tasks.extract(build.lower(passes.optimize(imported.mod), spec), spec.tvm_target())
    db = database.open_database(directory)
    tuned_tasks = [t for t in task_list if database.valid_records(db, t.mod)]
    assert len(tuned_tasks) >= 2
    back = tuned_tasks[0]
    in_model.save(directory, [in_model.Verdict(back.name, 2.0, 1.0)], {t.name: t.mod for t in task_list})
    kept = in_model.build_database(directory)
    assert not kept.has_workload(back.mod)
    assert all(kept.has_workload(t.mod) for t in tuned_tasks[1:])
    out = build.write(build.compile_imported(imported, spec, database=kept), tmp_path / "out")
    x = np.random.default_rng(0).standard_normal(TINY_SHAPE).astype("float32")
    with torch.no_grad():
        expected = tiny_module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runtime.load(out)(x)[0], expected, rtol=1e-4, atol=1e-5)


def test_more_trials_resume_without_measuring_anything_twice(tuned, tiny_pt2, work, tmp_path, capsys):
    assert tune(tiny_pt2, work, tmp_path / "out", TRIALS + 8) == 0
    out = capsys.readouterr().out
    directory = records_dir(work)
    assert record_lines(directory) == TRIALS + 8
    assert measured_twice(directory) == 0
    builder_line = next(line for line in out.splitlines() if line.startswith("builder:"))
    with capsys.disabled():
        print(f"\nin-process builder on this machine: {builder_line}")


def test_records_of_identical_kernels_are_reused_by_another_model(tuned, tiny_pt2, work, tmp_path, capsys):
    twin = tmp_path / "tiny_twin.pt2"  # the same network under another name: every kernel is identical
    shutil.copy(tiny_pt2, twin)
    assert tune(twin, work, tmp_path / "out", 0) == 0
    err = capsys.readouterr().err
    assert "reused" in err and "tiny-1x3x16x16-fused" in err
    twin_dir = records_dir(work, "tiny_twin")
    assert record_lines(twin_dir) > 0 and database.own_trials(twin_dir) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tuning_database_digest"] == database.digest(twin_dir)
    # Importing again copies nothing new.
    assert tune(twin, work, tmp_path / "out", 0) == 0
    assert "reused" not in capsys.readouterr().err


def test_ctrl_c_stops_after_the_batch_and_keeps_the_records(tiny_pt2, tmp_path, capfd):
    work = tmp_path / "work"

    def interrupt_once_records_exist():
        while not list(work.glob(f"x86-*/tiny-*/{database.RECORDS}")) or record_lines(records_dir(work)) < 4:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_records_exist, daemon=True).start()
    assert tune(tiny_pt2, work, tmp_path / "out", 64) == 130
    err = capfd.readouterr().err  # the progress stream writes to file descriptor 2 itself
    assert "stopping after the running batch" in err and "run the same command again to resume" in err
    kept = record_lines(records_dir(work))
    assert 4 <= kept < 64
    assert not (tmp_path / "out").exists()  # interrupted: no half-tuned library


def test_killed_run_keeps_its_records_and_the_next_run_resumes(tiny_pt2, tmp_path):
    work, budget = tmp_path / "work", 16
    command = [sys.executable, "-m", "tvm_shuffle.tune", "--torch", str(tiny_pt2), "--target", "x86", "--trials",
               str(budget), "--work-dir", str(work), "--out", str(tmp_path / "out"), "--quiet"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        if list(work.glob(f"x86-*/tiny-*/{database.RECORDS}")) and record_lines(records_dir(work)) >= 4:
            break
        time.sleep(0.5)
    assert child.poll() is None, f"tuning ended before it could be killed: {child.stderr.read().decode()[-2000:]}"
    child.send_signal(signal.SIGKILL)
    child.wait()
    directory = records_dir(work)
    kept = len(database.read_records(directory))  # whole records; a line the kill cut short is set aside on resume
    assert 4 <= kept < budget

    assert tune(tiny_pt2, work, tmp_path / "out", budget) == 0
    assert database.own_trials(directory) == budget  # only the remainder was measured
    assert measured_twice(directory) == 0


def test_search_never_sends_a_candidate_twice(tiny_pt2, tmp_path):
    """The same random search run twice proposes the same candidates: the second run measures none of them."""
    from tvm_shuffle import build, frontends, passes, targets, tvm_compat
    from tvm_shuffle.tuning import builder, runner, search, tasks
    from tvm_shuffle.tvm_compat import ms

    spec = targets.get("x86")
    target = tasks.tuning_target(spec, host_cores=1)
    lowered = build.lower(passes.optimize(frontends.from_pt2(tiny_pt2).mod), spec)
    task = next(t for t in tasks.extract(lowered, target) if t.name == "mean")
    db = database.open_database(tmp_path)
    local = runner.local(spec).runner
    skipped = []
    tvm_compat.import_tensor_intrinsics()  # what tasks.contexts does: TuneContext's own import is slow
    for _ in range(2):
        strategy = search.ResumingSearch(search.Budget(8), inner=ms.search_strategy.ReplayTrace())
        context = ms.TuneContext(mod=task.mod, target=target, space_generator="post-order-apply",
                                 search_strategy=strategy, task_name=task.name, num_threads=1, rand_state=7)
        ms.tune_tasks(tasks=[context], task_weights=[1.0], work_dir=str(tmp_path), max_trials_global=8,
                      num_trials_per_iter=4, builder=builder.InProcessBuilder(threads=1), runner=local, database=db)
        skipped.append(strategy.skipped)
    assert skipped[1] > 0  # the repeats were proposed again, and dropped
    assert measured_twice(tmp_path) == 0


def test_search_goes_on_past_seeds_that_pack_their_weights(tmp_path):
    """A 1x1 conv on a 7x7 plane whose channels the default tiles divide: the search replays the seeds and goes on.

    Each seed (one per tile of ``padded_tiles``) packs its weights itself;
    MetaSchedule's ``RewriteLayout``, run on them when the evolutionary search
    picks its population from the database, failed an internal check that
    stopped the whole tuning run (ShuffleNetV2 1.0x, 52 trials in).
    """
    module = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 1), torch.nn.ReLU()).eval()
    model = tmp_path / "pointwise_7x7.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(1, 16, 7, 7),)), str(model))
    budget = 3 + 8  # the seeds, then a batch of the search
    assert tune(model, tmp_path / "work", tmp_path / "out", budget) == 0
    assert database.own_trials(records_dir(tmp_path / "work", "pointwise_7x7")) == budget
    out = runtime.load(tmp_path / "out")(np.ones((1, 16, 7, 7), "float32"))[0]
    np.testing.assert_allclose(out, module(torch.ones(1, 16, 7, 7)).detach().numpy(), rtol=1e-4, atol=1e-5)
