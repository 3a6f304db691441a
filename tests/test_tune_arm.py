"""``tune --target arm`` through TVM's RPC tracker, against an aarch64 device emulated with qemu.

A real tracker (``python -m tvm.exec.rpc_tracker``) and our emulated board
(``python -m tvm_shuffle.tuning.emulated_device``: the aarch64 TVM runtime
from the wheels, run by qemu-aarch64) on loopback. What is tested is the flow,
the cross-compiled artifact and its numerics; the emulated timings mean
nothing (the tuner says so). The tuned aarch64 library runs on the emulated
device over RPC and matches PyTorch within rtol=1e-4, atol=1e-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import EMULATED_ARM_KEY as KEY
from conftest import TINY_SHAPE, TinyShuffleUnit, arm_marks
from tvm_shuffle import tune as tune_cli
from tvm_shuffle.models import randomize_batchnorm
from tvm_shuffle.tuning import runner

pytestmark = arm_marks()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    module = randomize_batchnorm(TinyShuffleUnit()).eval()
    path = tmp_path_factory.mktemp("models") / "tiny.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(*TINY_SHAPE),)), str(path))
    return module, path


def test_a_key_without_devices_is_a_clear_error(emulated_arm_tracker, capsys):
    code = tune_cli.main(["--model", "shufflenet_v2_x0_5", "--target", "arm", "--rpc-tracker", emulated_arm_tracker.address,
                          "--rpc-key", "rpi5", "--rpc-timeout", "5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no device registered with key 'rpi5'" in err and f"registered keys: {KEY} (1)" in err


def test_tune_arm_on_the_emulated_board(emulated_arm_tracker, tiny, tmp_path, capsys):
    module, pt2 = tiny
    out = tmp_path / "out"
    code = tune_cli.main(["--torch", str(pt2), "--target", "arm", "--trials", "8", "--work-dir", str(tmp_path / "work"),
                          "--out", str(out), "--rpc-tracker", emulated_arm_tracker.address, "--rpc-key", KEY, "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"emulated device {KEY!r}" in captured.out
    assert "timings come from an emulator (qemu); they say nothing about the real board" in captured.out
    assert "8 of 8 in all" in captured.out and "(0 failed" in captured.out
    assert (out / "model.so").read_bytes()[18:20] == b"\xb7\x00"  # ELF e_machine EM_AARCH64

    x = np.random.default_rng(0).standard_normal(TINY_SHAPE).astype("float32")
    (y,), _ = runner.run_remote(emulated_arm_tracker, out / "model.so", x, repeat=1)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    with capsys.disabled():
        print("\n" + captured.out)
