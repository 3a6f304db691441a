"""``tune --target arm`` through TVM's RPC tracker, against an aarch64 device emulated with qemu.

A real tracker (``python -m tvm.exec.rpc_tracker``) and our emulated board
(``python -m tvm_shuffle.tuning.emulated_device``: the aarch64 TVM runtime
from the wheels, run by qemu-aarch64) on loopback. What is tested is the flow,
the cross-compiled artifact and its numerics; the emulated timings mean
nothing (the tuner says so). The tuned aarch64 library runs on the emulated
device over RPC and matches PyTorch within rtol=1e-4, atol=1e-5.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_SHAPE, TinyShuffleUnit
from tvm_shuffle import targets
from tvm_shuffle import tune as tune_cli
from tvm_shuffle.models import randomize_batchnorm
from tvm_shuffle.tuning import rpc, runner

ARM = targets.get("arm")
KEY = "arm-emu"

pytestmark = [
    pytest.mark.arm,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which(ARM.cross_compiler) is None or shutil.which(ARM.emulator[0]) is None,
                       reason=f"needs {ARM.cross_compiler_package} and qemu-user"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*argv: str, log: Path) -> subprocess.Popen:
    """A server in its own process group: the tracker forks its worker, which must go down with it."""
    return subprocess.Popen([sys.executable, "-m", *argv], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    """A tracker with one emulated aarch64 device registered under KEY."""
    logs = tmp_path_factory.mktemp("rpc")
    port = free_port()
    processes = [start("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end",
                       str(port + 1), "--silent", log=logs / "tracker.log")]
    try:
        address = rpc.Tracker("127.0.0.1", port, KEY, timeout=10)
        wait_for(lambda: _reachable(address), "the tracker did not start")
        processes.append(start("tvm_shuffle.tuning.emulated_device", "--tracker", address.address, "--key", KEY,
                               log=logs / "device.log"))
        wait_for(lambda: rpc.registered_servers(address).get(KEY), "the emulated device did not register", 300)
        yield address
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _reachable(tracker: rpc.Tracker) -> bool:
    try:
        rpc.check_reachable(tracker)
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    module = randomize_batchnorm(TinyShuffleUnit()).eval()
    path = tmp_path_factory.mktemp("models") / "tiny.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(*TINY_SHAPE),)), str(path))
    return module, path


def test_a_key_without_devices_is_a_clear_error(tracker, capsys):
    code = tune_cli.main(["--model", "shufflenet_v2_x0_5", "--target", "arm", "--rpc-tracker", tracker.address,
                          "--rpc-key", "rpi5", "--rpc-timeout", "5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no device registered with key 'rpi5'" in err and f"registered keys: {KEY} (1)" in err


def test_tune_arm_on_the_emulated_board(tracker, tiny, tmp_path, capsys):
    module, pt2 = tiny
    out = tmp_path / "out"
    code = tune_cli.main(["--torch", str(pt2), "--target", "arm", "--trials", "8", "--work-dir", str(tmp_path / "work"),
                          "--out", str(out), "--rpc-tracker", tracker.address, "--rpc-key", KEY, "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"emulated device {KEY!r}" in captured.out
    assert "timings come from an emulator (qemu); they say nothing about the real board" in captured.out
    assert "8 of 8 in all" in captured.out and "(0 failed" in captured.out
    assert (out / "model.so").read_bytes()[18:20] == b"\xb7\x00"  # ELF e_machine EM_AARCH64

    x = np.random.default_rng(0).standard_normal(TINY_SHAPE).astype("float32")
    (y,), _ = runner.run_remote(tracker, out / "model.so", x, repeat=1)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    with capsys.disabled():
        print("\n" + captured.out)
