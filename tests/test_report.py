"""``python -m tvm_shuffle.report``: real reports on a small zoo model, every file checked against the JSON.

One report (shufflenet_v2_x0_5 at 1x3x64x64, a few repetitions) is shared by
most tests: tvm_shuffle tuned (from a seeded tuning database) and untuned,
PyTorch eager, ONNX Runtime, OpenVINO, ncnn, plus a registry entry whose
module does not exist. torch.compile (~1 min of compiling) runs in the slow
all-engines test. The HTML page is rendered by headless Chromium.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port, start_server, stop_servers, tracker_reachable, wait_for
from tvm_shuffle import host, machine, peers, profile, report, report_render, targets

MODEL = ["--model", "shufflenet_v2_x0_5", "--input-shape", "1,3,64,64"]
QUICK = ["--repeat", "8", "--warmup", "2", "--numerics-inputs", "3", "--quiet"]
FAST_PEERS = "tvm_shuffle-tuned,tvm_shuffle-untuned,pytorch,onnxruntime,openvino,ncnn,missing-engine"
MISSING = peers.Engine("missing-engine", "Missing engine", ("tvm_shuffle_no_such_module",), "no-such-engine",
                       ("no-such-engine",), lambda w: pytest.fail("a missing engine must not be prepared"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def seed_database(work_dir: Path, *, seconds=(2e-4, 1e-4)):
    """A real MetaSchedule database for MODEL: every kernel's unscheduled trace, once per entry of ``seconds``.

    Building from it exercises the whole tuned path (database -> build ->
    library) without minutes of tuning; the made-up run times give a tuning
    curve whose values are known. Returns the total calls per inference.
    """
    from tvm_shuffle import build, frontends, passes
    from tvm_shuffle.tuning import database, tasks
    from tvm_shuffle.tvm_compat import Schedule, ms

    spec = targets.get("x86")
    imported = frontends.import_model("shufflenet_v2_x0_5", input_shape=(1, 3, 64, 64))
    db = database.open_database(database.database_dir(work_dir, spec, imported.name, imported.input_shape, "fused"))
    target = tasks.tuning_target(spec, host_cores=2)
    task_list = tasks.extract(build.lower(passes.optimize(imported.mod), spec), target)
    for run_seconds in seconds:
        for task in task_list:
            db.commit_tuning_record(ms.database.TuningRecord(
                Schedule(task.mod).trace, db.commit_workload(task.mod), [run_seconds], target,
                ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])))
    return sum(t.weight for t in task_list), len(task_list)


@pytest.fixture(scope="module")
def fast_report(tmp_path_factory):
    """One real report with every fast engine, a seeded tuning database and a not-installed engine."""
    work = tmp_path_factory.mktemp("work")
    calls, kernels = seed_database(work)
    out = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(peers.ENGINES, MISSING.name, MISSING)
        code = report.main([*MODEL, "--target", "x86", "--work-dir", str(work), "--out", str(out),
                            "--peers", FAST_PEERS, *QUICK])
    assert code == 0
    (json_path,) = out.glob("*.json")
    return {"out": out, "data": json.loads(json_path.read_text()), "stem": json_path.stem, "calls": calls,
            "kernels": kernels}


def engines(data) -> dict[str, dict]:
    return {row["name"]: row for row in data["engines"]}


# ---------------------------------------------------------------------------
# The shared report


def test_files_are_named_after_model_shape_target_and_machine(fast_report):
    stem = fast_report["stem"]
    host = machine.describe()
    assert stem == f"report_shufflenet_v2_x0_5_1x3x64x64_x86-{targets.get('x86').target['mcpu']}_{machine.tag(host)}"
    names = sorted(p.name for p in fast_report["out"].iterdir())
    assert names == sorted(f"{stem}{suffix}" for suffix in (".json", "_engines.csv", "_kernels.csv", "_tuning.csv",
                                                            "_models.csv", ".md", ".html"))


def test_every_engine_has_a_row_with_status_and_version(fast_report):
    rows = engines(fast_report["data"])
    assert list(rows) == FAST_PEERS.split(",")
    for name in ("tvm_shuffle-tuned", "tvm_shuffle-untuned", "pytorch", "onnxruntime", "openvino", "ncnn"):
        row = rows[name]
        assert row["status"] == "ok", (name, row["reason"])
        assert row["min_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert row["std_ms"] >= 0 and len(row["samples_ms"]) == 8 and len(row["rounds_ms"]) == 5
        assert re.search(r"\d", row["version"]), row["version"]
    assert rows["tvm_shuffle-tuned"]["details"]["trials"] == 2 * fast_report["kernels"]
    assert rows["tvm_shuffle-untuned"]["details"]["tvm_threads"] == fast_report["data"]["setup"]["threads"]
    # Weights as stored: the fp32 library's constants are the ONNX file's weights with BatchNorm folded in.
    sizes = {name: rows[name]["weight_bytes"] for name in ("tvm_shuffle-untuned", "pytorch", "onnxruntime", "ncnn")}
    assert all(size > 0 for size in sizes.values()), sizes
    assert 0.8 * sizes["onnxruntime"] <= sizes["tvm_shuffle-untuned"] <= sizes["pytorch"], sizes


def test_a_missing_engine_is_listed_as_not_installed(fast_report):
    row = engines(fast_report["data"])["missing-engine"]
    assert row["status"] == "not installed"
    assert row["reason"] == "not installed (pip install no-such-engine)"
    assert row["median_ms"] is None


def test_numerics_against_pytorch(fast_report):
    data = fast_report["data"]
    assert data["setup"]["reference"] == "pytorch" and data["setup"]["numerics_inputs"] == 3
    for row in data["engines"]:
        if row["status"] == "ok":
            assert row["max_abs_err"] < 1e-3, row["name"]
            assert row["top1_agreement"] == 1.0, row["name"]


def test_speedups_are_ratios_of_medians_for_every_pair(fast_report):
    data = fast_report["data"]
    ok = [r for r in data["engines"] if r["status"] == "ok"]
    assert set(data["speedups"]) == {r["name"] for r in ok}
    for a in ok:
        for b in ok:
            if a is not b:
                assert data["speedups"][a["name"]][b["name"]] == pytest.approx(b["median_ms"] / a["median_ms"])


def test_engine_csv_matches_the_json(fast_report):
    with open(fast_report["out"] / f"{fast_report['stem']}_engines.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    data = fast_report["data"]
    assert [r["name"] for r in rows] == [r["name"] for r in data["engines"]]
    for csv_row, row in zip(rows, data["engines"]):
        assert csv_row["status"] == row["status"] and csv_row["reason"] == row["reason"]
        if row["status"] == "ok":
            assert float(csv_row["median_ms"]) == pytest.approx(row["median_ms"])
            assert float(csv_row["max_abs_err"]) == pytest.approx(row["max_abs_err"])
            for other, ratio in data["speedups"][row["name"]].items():
                assert float(csv_row[f"speedup_vs_{other}"]) == pytest.approx(ratio)
        else:
            assert csv_row["median_ms"] == ""


def test_markdown_has_every_row_and_number(fast_report):
    text = (fast_report["out"] / f"{fast_report['stem']}.md").read_text()
    data = fast_report["data"]
    for row in data["engines"]:
        assert row["label"] in text and row["version"] in text
        if row["status"] == "ok":
            assert report_render.fmt_ms(row["median_ms"]) in text
        else:
            assert row["reason"] in text
    assert data["command"] in text
    assert data["machine"]["cpu"] in text and " ".join(data["machine"]["isa"]) in text
    assert "5 interleaved rounds" in text
    ok = [r for r in data["engines"] if r["status"] == "ok"]
    low, high = data["speedup_ranges"][ok[0]["name"]][ok[1]["name"]]
    assert f"({low:.2f}-{high:.2f})" in text


def test_kernel_profile(fast_report):
    prof = fast_report["data"]["profile"]
    assert prof["engine"] == "tvm_shuffle-tuned"
    kernels = [r for r in prof["rows"] if r["category"] != profile.RUNTIME]
    assert len(kernels) == fast_report["kernels"]
    assert sum(r["calls"] for r in kernels) == fast_report["calls"]
    assert sum(r["share"] for r in prof["rows"]) == pytest.approx(1.0)
    assert sum(prof["shares"].values()) == pytest.approx(1.0)
    convs = [r for r in kernels if "conv2d" in r["kernel"]]
    assert convs and all(r["flops"] > 0 and r["bytes"] > 0 for r in convs)
    assert any(r["gflops"] and r["pct_peak_flops"] for r in convs)
    assert fast_report["data"]["model"]["tvm_flops"] == pytest.approx(sum(r["flops"] for r in kernels))
    with open(fast_report["out"] / f"{fast_report['stem']}_kernels.csv", newline="") as f:
        assert [r["kernel"] for r in csv.DictReader(f)] == [r["kernel"] for r in prof["rows"]]


def test_tuning_curve_from_the_database(fast_report):
    tuning = fast_report["data"]["tuning"]
    kernels, calls = fast_report["kernels"], fast_report["calls"]
    assert tuning["trials"] == 2 * kernels and tuning["tasks"] == kernels
    # Complete once every kernel has its first record (2e-4 s); each second-round record lowers one kernel.
    assert tuning["points"][0] == [kernels, pytest.approx(calls * 0.2)]
    assert tuning["points"][-1] == [2 * kernels, pytest.approx(calls * 0.1)]
    assert tuning["tuned_ms"] == engines(fast_report["data"])["tvm_shuffle-tuned"]["median_ms"]


def test_model_table_beside_the_papers(fast_report):
    from tvm_shuffle import models

    data = fast_report["data"]
    assert [r["name"] for r in data["models"]] == list(models.MODELS)
    assert data["model"]["paper_macs"] == models.MODELS["shufflenet_v2_x0_5"].paper_macs
    assert data["model"]["macs"] == pytest.approx(data["model"]["paper_macs"], rel=0.05)


def test_machine_and_setup_are_recorded(fast_report):
    data = fast_report["data"]
    m = data["machine"]
    assert m["physical_cores"] >= 1 and m["threads"] == data["setup"]["threads"] == m["physical_cores"]
    assert m["peaks"]["gflops"] > 0 and m["peaks"]["gbps"] > 0
    assert data["device"] == {"kind": "local", "arch": m["arch"], "emulated": False}
    assert data["setup"]["repeat"] == 8 and data["setup"]["warmup"] == 2 and data["setup"]["rounds"] == 5
    assert data["command"].startswith("python -m tvm_shuffle.report --model shufflenet_v2_x0_5")


# ---------------------------------------------------------------------------
# The HTML page in a real browser


def render(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """Chromium's DOM of ``page`` after layout, and its console messages.

    A copy of the page gets a probe script (the page itself has none) that
    records JavaScript errors and the rendered size of every chart into the
    DOM; Chromium's console log goes to stderr.
    """
    probe = """<script>
window.onerror = function (message) { document.body.setAttribute("data-error", String(message)); };
window.addEventListener("load", function () {
  document.querySelectorAll("svg").forEach(function (svg) {
    var box = svg.getBoundingClientRect();
    svg.setAttribute("data-rendered", Math.round(box.width) + "x" + Math.round(box.height));
  });
});
</script>"""
    probed = tmp_path / page.name
    text = page.read_text(encoding="utf-8")
    probed.write_text(text.replace("<head>", "<head>" + probe, 1), encoding="utf-8")
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=2000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)")
def test_html_renders_in_chromium_with_charts_and_no_console_errors(fast_report, tmp_path):
    page = fast_report["out"] / f"{fast_report['stem']}.html"
    dom, console = render(page, tmp_path)
    assert console == []
    assert not re.search(r"<body[^>]*data-error=", dom)
    charts = re.findall(r'<figure class="chart" id="(chart-[a-z]+)"', dom)
    assert charts == ["chart-latency", "chart-shares", "chart-kernels", "chart-tuning"]
    sizes = re.findall(r'data-rendered="(\d+)x(\d+)"', dom)
    assert len(sizes) == 4 and all(int(w) > 100 and int(h) > 20 for w, h in sizes)
    for row in fast_report["data"]["engines"]:
        assert row["label"] in dom


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_the_render_check_catches_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head><title>x</title></head><body>"
                    "<script>console.error('boom'); missing_function();</script></body></html>")
    dom, console = render(page, tmp_path)
    assert re.search(r"<body[^>]*data-error=", dom) and any("boom" in line for line in console)


# ---------------------------------------------------------------------------
# Bad input and missing pieces


def test_no_database_points_to_the_tune_command(tmp_path, capsys):
    code = report.main([*MODEL, "--target", "x86", "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path),
                        "--peers", "tvm_shuffle-tuned", "--no-zoo-table", *QUICK])
    assert code == 0
    (row,) = json.loads(next(tmp_path.glob("*.json")).read_text())["engines"]
    assert row["status"] == "unavailable"
    assert "no tuning database" in row["reason"]
    assert (f"python -m tvm_shuffle.tune --target x86 --model shufflenet_v2_x0_5 --input-shape 1,3,64,64 "
            f"--work-dir {tmp_path / 'work'}") in row["reason"]
    assert not (tmp_path / "work").exists()  # looking for a database must not create one
    assert "no tuning database" in next(tmp_path.glob("*.md")).read_text()


@pytest.mark.parametrize("argv, message", [
    (["--model", "shufflenet_v9", "--target", "x86"], "unknown model 'shufflenet_v9'"),
    (["--model", "shufflenet_v2_x0_5", "--target", "x87"], "unknown target 'x87'"),
    (["--model", "shufflenet_v2_x0_5", "--target", "x86", "--peers", "tensorrt"], "unknown engine 'tensorrt'"),
    (["--onnx", "/nonexistent.onnx", "--target", "x86"], "ONNX model not found"),
    (["--model", "shufflenet_v2_x0_5", "--target", "cuda"], "attach one with --rpc-tracker"),
])
def test_bad_input_is_one_clear_error(tmp_path, capsys, argv, message):
    assert report.main([*argv, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_usage_errors(capsys):
    for argv, message in ((["--repeat", "0"], "--repeat must be at least 1"),
                          (["--rpc-key", "rpi4"], "--rpc-key needs --rpc-tracker")):
        with pytest.raises(SystemExit):
            report.main([*MODEL, "--target", "x86", "--out", "x", *argv])
        assert message in capsys.readouterr().err


def test_onnx_input_is_checked_against_onnx_runtime(tiny_onnx, tmp_path):
    """No PyTorch module behind an ONNX file: the PyTorch rows say so, ONNX Runtime is the reference."""
    code = report.main(["--onnx", str(tiny_onnx), "--target", "x86", "--out", str(tmp_path / "out"),
                        "--work-dir", str(tmp_path / "work"), "--no-zoo-table",
                        "--peers", "tvm_shuffle-untuned,pytorch,onnxruntime,ncnn", *QUICK])
    assert code == 0
    data = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    rows = engines(data)
    assert data["setup"]["reference"] == "onnxruntime"
    assert rows["pytorch"]["status"] == "unavailable" and "came as an ONNX file" in rows["pytorch"]["reason"]
    for name in ("tvm_shuffle-untuned", "ncnn"):  # ncnn through pnnx's ONNX importer
        assert rows[name]["status"] == "ok", rows[name]["reason"]
        assert rows[name]["max_abs_err"] < 1e-4 and rows[name]["top1_agreement"] == 1.0
    assert data["model"]["source"] == "onnx" and data["model"]["macs"] is None


def test_a_peer_that_cannot_run_the_model_says_why(tmp_path):
    """ncnn takes one image at a time: a batch of 2 is its cell's reason, not a crash."""
    from tvm_shuffle import frontends

    imported = frontends.Imported(mod=None, name="m", source="onnx", input_name="x", input_shape=(2, 3, 8, 8))
    workload = peers.Workload(name="m", imported=imported, spec=targets.get("x86"), threads=1, scratch=tmp_path,
                              work_dir=tmp_path)
    inputs = report.random_inputs((2, 3, 8, 8), "float32", 1)
    row, session = report.open_engine(peers.ENGINES["ncnn"], workload, inputs, None)
    assert row["status"] == "unavailable" and "batch is 2" in row["reason"] and session is None
    row, session = report.open_engine(peers.ENGINES["pytorch"], workload, inputs, None)
    assert row["status"] == "unavailable" and "came as an ONNX file" in row["reason"] and session is None


# ---------------------------------------------------------------------------
# Pure pieces


def test_round_sizes_split_the_runs_evenly():
    assert report.round_sizes(50, 5) == [10] * 5
    assert report.round_sizes(8, 5) == [2, 2, 2, 1, 1]
    assert report.round_sizes(3, 5) == [1, 1, 1]


def test_engines_are_timed_in_interleaved_rounds():
    """Every round times every engine once, in order; one that fails while timing is marked, the others go on."""
    calls = []

    def session(name, fail_in_round=None):
        def time(x, warmup, repeat):
            calls.append((name, warmup, repeat))
            if sum(c[0] == name for c in calls) == fail_in_round:
                raise RuntimeError("device lost")
            return [0.001 * (1 + len(calls))] * repeat
        return peers.Session(run=lambda x: x, time=time)

    engines = [peers.ENGINES[n] for n in ("tvm_shuffle-untuned", "onnxruntime", "ncnn", "pytorch")]
    rows = [report._row(e, "ok") for e in engines[:3]] + [report._row(engines[3], "unavailable", "no module")]
    sessions = [session("a"), session("b", fail_in_round=2), session("c"), None]
    report.time_interleaved(rows, sessions, np.zeros(1), warmup=3, repeat=7, rounds=3)
    assert calls == [("a", 3, 3), ("b", 3, 3), ("c", 3, 3), ("a", 3, 2), ("b", 3, 2), ("c", 3, 2),
                     ("a", 3, 2), ("c", 3, 2)]
    a, b, c, unavailable = rows
    assert len(a["samples_ms"]) == 7 and len(a["rounds_ms"]) == 3 and a["median_ms"] is not None
    assert b["status"] == "failed" and "device lost" in b["reason"]
    assert unavailable["status"] == "unavailable" and unavailable["median_ms"] is None
    ranges = report.speedup_ranges(rows)
    assert set(ranges) == {"tvm_shuffle-untuned", "ncnn"}
    low, high = ranges["tvm_shuffle-untuned"]["ncnn"]
    assert low <= high and low == pytest.approx(min(tc / ta for ta, tc in zip(a["rounds_ms"], c["rounds_ms"])))


def test_latency_stats_and_numerics():
    stats = report.latency_stats([0.001, 0.002, 0.003, 0.004, 0.010])
    assert stats["median_ms"] == pytest.approx(3.0) and stats["min_ms"] == pytest.approx(1.0)
    assert stats["p90_ms"] == pytest.approx(7.6)
    ref = [np.array([[0.0, 1.0, 0.5]]), np.array([[2.0, 0.0, 0.0]])]
    got = report.numerics([np.array([[0.0, 1.1, 0.5]]), np.array([[0.0, 0.5, 0.0]])], ref)
    assert got["max_abs_err"] == pytest.approx(2.0) and got["top1_agreement"] == 0.5
    assert report.numerics([np.zeros(4)], ref)["numerics_note"].startswith("output shape")


def test_kernel_classification():
    assert profile.classify("fused_concatenate_reshape_transpose_reshape1_split", 0) == profile.DATA_MOVEMENT
    assert profile.classify("fused_strided_slice2", 0) == profile.DATA_MOVEMENT
    assert profile.classify("fused_conv2d_gathered3_add3", 1e6) == profile.COMPUTE
    assert profile.classify("max_pool2d", 0) == profile.COMPUTE


def test_profile_summary_takes_off_the_hook_overhead():
    costs = {"conv": profile.KernelCost(2e6, 4000, profile.COMPUTE),
             "shuffle": profile.KernelCost(0, 8000, profile.DATA_MOVEMENT)}
    # a kernel whose weights the build packed runs under another name: it is still the lowered "conv"
    times = {"conv" + profile.PACKED_SUFFIX: [11e-6, 11e-6, 11e-6, 11e-6], "shuffle": [6e-6, 6e-6],
             "vm.builtin.null_value": [1e-6] * 6}
    rows = profile.summarize(times, costs, runs=2)
    by_name = {r.name: r for r in rows}
    assert by_name["conv"].calls == 2 and by_name["conv"].us == pytest.approx(20.0)
    assert by_name["shuffle"].us == pytest.approx(5.0)
    assert by_name["conv"].gflops == pytest.approx(4e6 / 20e-6 / 1e9)
    assert profile.category_shares(rows)[profile.DATA_MOVEMENT] == pytest.approx(5 / 25)


def test_file_stem_names_every_non_default_setting():
    assert report.file_stem("shufflenet_v2_x1_0", (1, 3, 224, 224), "x86-znver4", "amd-epyc-2c") == \
        "report_shufflenet_v2_x1_0_x86-znver4_amd-epyc-2c"
    assert report.file_stem("m", (1, 3, 64, 64), "arm-rpi4-cortex-a72", "rpc-rpi4", shuffle="stock", threads="4t") == \
        "report_m_1x3x64x64_arm-rpi4-cortex-a72_stock_rpc-rpi4_4t"


def test_machine_tag_and_isa():
    assert machine.tag({"cpu": "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "physical_cores": 8}) == \
        "intel-xeon-platinum-8375c-8c"
    assert machine.tag({"cpu": "AMD EPYC 9R14 96-Core Processor", "physical_cores": 2}) == "amd-epyc-9r14-2c"
    assert machine.isa({"avx2", "fma", "avx512f", "foo"}) == ["avx2", "fma", "avx512f"]
    assert machine.theoretical_gflops(2, 2500.0, {"avx512f"}) == pytest.approx(2 * 2.5 * 16 * 2 * 2)


# ---------------------------------------------------------------------------
# Slow: every engine, and a device behind TVM's RPC tracker


@pytest.mark.slow
def test_all_engines(tmp_path):
    """All seven engines in one run, torch.compile included; each runs or says why."""
    code = report.main([*MODEL, "--target", "x86", "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path),
                        "--no-zoo-table", *QUICK])
    assert code == 0
    rows = engines(json.loads(next(tmp_path.glob("*.json")).read_text()))
    assert list(rows) == list(peers.ENGINES)
    assert rows["tvm_shuffle-tuned"]["status"] == "unavailable"
    for name in ("tvm_shuffle-untuned", "pytorch", "torch.compile", "onnxruntime", "openvino", "ncnn"):
        assert rows[name]["status"] in ("ok", "not installed"), (name, rows[name]["reason"])
    assert rows["torch.compile"]["status"] == "ok" and rows["torch.compile"]["max_abs_err"] < 1e-3


@pytest.fixture
def x86_rpc_device(tmp_path):
    """TVM's own tracker and RPC server on loopback: this machine as a remote device."""
    from tvm_shuffle.tuning import rpc

    port = free_port()
    processes = [start_server("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end",
                              str(port + 1), "--silent", log=tmp_path / "tracker.log")]
    tracker = rpc.Tracker("127.0.0.1", port, "x86-loopback", timeout=20)
    try:
        wait_for(lambda: tracker_reachable(tracker), "the tracker did not start", 60)
        processes.append(start_server("tvm.exec.rpc_server", "--tracker", tracker.address, "--key", tracker.key,
                                      "--host", "127.0.0.1", "--no-fork", log=tmp_path / "server.log"))
        wait_for(lambda: rpc.registered_servers(tracker).get(tracker.key), "the RPC server did not register", 60)
        yield tracker
    finally:
        stop_servers(processes)


@pytest.mark.slow
def test_remote_device_over_the_rpc_tracker(x86_rpc_device, tmp_path):
    code = report.main([*MODEL, "--target", "x86", "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path),
                        "--peers", "tvm_shuffle-untuned,pytorch,onnxruntime", "--no-zoo-table", "--threads", "1",
                        "--rpc-tracker", x86_rpc_device.address, "--rpc-key", x86_rpc_device.key, *QUICK])
    assert code == 0
    (json_path,) = tmp_path.glob("*.json")
    # the stem names the thread count only where it differs from the host's cores (CI may have one)
    one_thread = "" if host.physical_cores() == 1 else "_1t"
    assert json_path.stem.endswith(f"_rpc-x86-loopback{one_thread}")
    data = json.loads(json_path.read_text())
    assert data["device"] == {"kind": "remote", "key": "x86-loopback", "tracker": x86_rpc_device.address,
                              "emulated": False, "arch": "x86_64"}
    rows = engines(data)
    remote = rows["tvm_shuffle-untuned"]
    assert remote["status"] == "ok", remote["reason"]
    assert remote["details"]["device"] == f"device 'x86-loopback' via {x86_rpc_device.address}"
    assert remote["details"]["tvm_threads"] == 1
    assert remote["max_abs_err"] < 1e-3 and remote["top1_agreement"] == 1.0  # checked against PyTorch on this host
    for name in ("pytorch", "onnxruntime"):
        assert rows[name]["status"] == "not run" and "runs on this host only" in rows[name]["reason"]
    assert "taken on this host only" in data["profile"]["note"]
    assert "device 'x86-loopback'" in next(tmp_path.glob("*.md")).read_text()
