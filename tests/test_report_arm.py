"""``report --target arm`` over TVM's RPC tracker, against the qemu-emulated aarch64 device.

The tvm_shuffle row runs on the emulated board (cross-compiled, uploaded,
driven through the Relax VM over RPC) and is checked against PyTorch on this
host; the report labels the device as emulated, and the peers as not run
there. The emulator's timings mean nothing and are not checked.
"""

from __future__ import annotations

import json

from conftest import EMULATED_ARM_KEY as KEY
from conftest import arm_marks
from tvm_shuffle import report

pytestmark = arm_marks()


def test_report_on_the_emulated_arm_board(emulated_arm_tracker, tmp_path):
    code = report.main(["--model", "shufflenet_v2_x0_5", "--input-shape", "1,3,32,32", "--target", "arm",
                        "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path), "--no-zoo-table",
                        "--peers", "tvm_shuffle-tuned,tvm_shuffle-untuned,pytorch,onnxruntime",
                        "--rpc-tracker", emulated_arm_tracker.address, "--rpc-key", KEY,
                        "--repeat", "3", "--warmup", "1", "--numerics-inputs", "2", "--quiet"])
    assert code == 0
    (json_path,) = tmp_path.glob("*.json")
    assert json_path.stem == f"report_shufflenet_v2_x0_5_1x3x32x32_arm-rpi4-cortex-a72_rpc-{KEY}-emulated"
    data = json.loads(json_path.read_text())
    assert data["device"] == {"kind": "remote", "key": KEY, "tracker": emulated_arm_tracker.address, "emulated": True,
                              "arch": "aarch64"}
    rows = {r["name"]: r for r in data["engines"]}
    board = rows["tvm_shuffle-untuned"]
    assert board["status"] == "ok", board["reason"]
    assert board["details"]["device"] == f"emulated device {KEY!r} via {emulated_arm_tracker.address}"
    assert board["max_abs_err"] < 1e-3 and board["top1_agreement"] == 1.0
    assert rows["tvm_shuffle-tuned"]["status"] == "unavailable"
    assert "--target arm" in rows["tvm_shuffle-tuned"]["reason"] and "--rpc-key" in rows["tvm_shuffle-tuned"]["reason"]
    assert rows["pytorch"]["status"] == rows["onnxruntime"]["status"] == "not run"
    markdown = next(tmp_path.glob("*.md")).read_text()
    assert "EMULATED aarch64 device" in markdown and "timings say nothing about real hardware" in markdown


def test_report_without_a_board_checks_the_generated_code(tmp_path):
    code = report.main(["--model", "shufflenet_v2_x0_5", "--input-shape", "1,3,32,32", "--target", "arm-rpi4",
                        "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path), "--no-zoo-table",
                        "--peers", "tvm_shuffle-untuned,pytorch", "--quiet"])
    assert code == 0
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert {r["status"] for r in data["engines"]} == {"not run"}
    static = data["static_check"]
    assert static["arm_target"]["name"] == "arm-rpi4" and "not a measurement" in static["method"]
    convs = [r for r in static["rows"] if "conv2d" in r["kernel"]]
    assert all(r["arm_found"] for r in convs)
    # Every convolution has its x86 twin but the stem's, which x86 fuses with the max-pool (schedules.stem).
    assert len(convs) > 1 and [r["x86_found"] for r in convs].count(False) == 1
    assert any(r["arm_vector_fma"] > 0 for r in convs)  # NEON FMAs, counted from the disassembly
    assert static["flagged"] == [r["kernel"] for r in static["rows"]
                                 if r["arm_inner_spills"] or r["arm_inner_scalar_fma"]]
    markdown = next(tmp_path.glob("*.md")).read_text()
    assert "## Static code check of the kernels (no device" in markdown and "| spills |" in markdown
    assert next(tmp_path.glob("*_static.csv")).read_text().startswith("kernel,")
    assert "Static code check" in next(tmp_path.glob("*.html")).read_text()
