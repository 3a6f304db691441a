"""Shared fixtures: tiny networks with every construct the pipeline handles.

The tiny models keep the fast tests fast; the zoo models (tests/test_zoo.py)
exercise the real networks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tvm_shuffle.models import MODELS, channel_shuffle, randomize_batchnorm

TINY_SHAPE = (1, 3, 16, 16)


def zoo_at_full_size() -> list[str]:
    """The zoo models test_zoo compiles at their own input size: all v2 widths, v1 at 1.0x per group count.

    test_shuffle checks the others at 1x3x32x32, so each zoo model is built
    and checked against PyTorch once (a build is most of a test's time).
    """
    return [name for name, spec in MODELS.items() if spec.family == "v2" or spec.width == 1.0]


class TinyShuffleUnit(torch.nn.Module):
    """conv(+bias)+BN, chunk, a branch with conv(no bias)+BN, cat, shuffle: both BN-fold forms."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1, bias=True)
        self.stem_bn = torch.nn.BatchNorm2d(16)
        self.branch = torch.nn.Conv2d(8, 8, 1, bias=False)
        self.branch_bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        a, b = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat([a, torch.relu(self.branch_bn(self.branch(b)))], 1), 2)
        return self.head(x.mean((2, 3)))


@pytest.fixture
def tiny_module() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(TinyShuffleUnit()).eval()


@pytest.fixture
def tiny_input() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(TINY_SHAPE).astype("float32")


@pytest.fixture
def tiny_onnx(tmp_path, tiny_module):
    """The tiny model as ONNX, as torch.onnx.export(dynamo=True) writes it."""
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_module, (torch.randn(*TINY_SHAPE),), str(path), dynamo=True, verbose=False)
    return path


@pytest.fixture
def tiny_onnx_classic(tmp_path, tiny_module):
    """The classic TorchScript exporter at opset 11 (constant-shape Reshape->Transpose->Reshape)."""
    path = tmp_path / "tiny_classic.onnx"
    torch.onnx.export(tiny_module, (torch.randn(*TINY_SHAPE),), str(path), dynamo=False, opset_version=11,
                      input_names=["image"], output_names=["logits"])
    return path


EMULATED_ARM_KEY = "arm-emu"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, what: str, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def start_server(*argv: str, log):
    """``python -m argv`` in its own process group: the tracker forks its worker, which must go down with it."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", *argv], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_servers(processes) -> None:
    import os
    import signal

    for process in reversed(processes):  # each in its own group, with the workers it started
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def tracker_reachable(tracker) -> bool:
    from tvm_shuffle.tuning import rpc

    try:
        rpc.check_reachable(tracker)
        return True
    except Exception:
        return False


def arm_marks() -> list:
    """Marks for a module that runs aarch64 code: slow, arm, and skipped (naming the packages) without them."""
    import shutil

    from tvm_shuffle import targets

    arm = targets.get("arm")
    missing = shutil.which(arm.cross_compiler) is None or shutil.which(arm.emulator[0]) is None
    return [pytest.mark.arm, pytest.mark.slow,
            pytest.mark.skipif(missing, reason=f"needs {arm.cross_compiler_package} and qemu-user")]


@pytest.fixture(scope="session")
def emulated_arm_tracker(tmp_path_factory):
    """A loopback RPC tracker with one qemu-emulated aarch64 device registered under EMULATED_ARM_KEY.

    Session-scoped: the device takes a while to start, and the tune and report tests share it.
    """
    from tvm_shuffle.tuning import rpc

    logs = tmp_path_factory.mktemp("rpc")
    port = free_port()
    processes = [start_server("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end",
                        str(port + 1), "--silent", log=logs / "tracker.log")]
    try:
        tracker = rpc.Tracker("127.0.0.1", port, EMULATED_ARM_KEY, timeout=30)
        wait_for(lambda: tracker_reachable(tracker), "the tracker did not start", 60)
        processes.append(start_server("tvm_shuffle.tuning.emulated_device", "--tracker", tracker.address,
                                "--key", EMULATED_ARM_KEY, log=logs / "device.log"))
        wait_for(lambda: rpc.registered_servers(tracker).get(EMULATED_ARM_KEY),
                 "the emulated device did not register", 300)
        yield tracker
    finally:
        stop_servers(processes)
