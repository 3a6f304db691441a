"""``report --target arm`` over TVM's RPC tracker, against the qemu-emulated aarch64 device.

The tvm_shuffle row runs on the emulated board (cross-compiled, uploaded,
driven through the Relax VM over RPC) and is checked against PyTorch on this
host; the report labels the device as emulated, and the peers as not run
there. The emulator's timings mean nothing and are not checked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tvm_shuffle import report, targets
from tvm_shuffle.tuning import rpc

ARM = targets.get("arm")
KEY = "arm-emu"

pytestmark = [
    pytest.mark.arm,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which(ARM.cross_compiler) is None or shutil.which(ARM.emulator[0]) is None,
                       reason=f"needs {ARM.cross_compiler_package} and qemu-user"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def _reachable(tracker: rpc.Tracker) -> bool:
    try:
        rpc.check_reachable(tracker)
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def emulated_board(tmp_path_factory):
    logs = tmp_path_factory.mktemp("rpc")
    port = _free_port()
    tracker = rpc.Tracker("127.0.0.1", port, KEY, timeout=30)
    processes = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                   str(port), "--port-end", str(port + 1), "--silent"],
                                  stdout=(logs / "tracker.log").open("w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)]
    try:
        _wait(lambda: _reachable(tracker), "the tracker did not start", 60)
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "tvm_shuffle.tuning.emulated_device", "--tracker", tracker.address, "--key", KEY],
            stdout=(logs / "device.log").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True))
        _wait(lambda: rpc.registered_servers(tracker).get(KEY), "the emulated device did not register", 300)
        yield tracker
    finally:
        for process in reversed(processes):  # each in its own group, with the workers it started
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_report_on_the_emulated_arm_board(emulated_board, tmp_path):
    code = report.main(["--model", "shufflenet_v2_x0_5", "--input-shape", "1,3,32,32", "--target", "arm",
                        "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path), "--no-zoo-table",
                        "--peers", "tvm_shuffle-tuned,tvm_shuffle-untuned,pytorch,onnxruntime",
                        "--rpc-tracker", emulated_board.address, "--rpc-key", KEY,
                        "--repeat", "3", "--warmup", "1", "--numerics-inputs", "2", "--quiet"])
    assert code == 0
    (json_path,) = tmp_path.glob("*.json")
    assert json_path.stem == f"report_shufflenet_v2_x0_5_1x3x32x32_arm-rpi4-cortex-a72_rpc-{KEY}-emulated"
    data = json.loads(json_path.read_text())
    assert data["device"] == {"kind": "remote", "key": KEY, "tracker": emulated_board.address, "emulated": True,
                              "arch": "aarch64"}
    rows = {r["name"]: r for r in data["engines"]}
    board = rows["tvm_shuffle-untuned"]
    assert board["status"] == "ok", board["reason"]
    assert board["details"]["device"] == f"emulated device {KEY!r} via {emulated_board.address}"
    assert board["max_abs_err"] < 1e-3 and board["top1_agreement"] == 1.0
    assert rows["tvm_shuffle-tuned"]["status"] == "unavailable"
    assert "--target arm" in rows["tvm_shuffle-tuned"]["reason"] and "--rpc-key" in rows["tvm_shuffle-tuned"]["reason"]
    assert rows["pytorch"]["status"] == rows["onnxruntime"]["status"] == "not run"
    markdown = next(tmp_path.glob("*.md")).read_text()
    assert "EMULATED aarch64 device" in markdown and "timings say nothing about real hardware" in markdown
