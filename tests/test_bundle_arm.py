"""The ARM bundle: cross-compiled model, aarch64 runtime from the aarch64 wheels,
the example app cross-built by the bundle's own CMakeLists and run under
qemu-aarch64; its outputs match the x86 bundle's.

Tolerance: atol=1e-5, rtol=1e-4 between aarch64 (NEON) and x86 (AVX-512)
kernels, which sum in different orders; differences seen are ~1e-7.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tvm_shuffle import compile as compile_cli
from tvm_shuffle import bundle_format, runtime, targets
from tvm_shuffle.errors import UserError

from test_bundle import build_app, elf_arch, run_clean

ARM = targets.get("arm")
QEMU = shutil.which(ARM.emulator[0])

pytestmark = [
    pytest.mark.arm,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which(ARM.cross_compiler) is None or QEMU is None or shutil.which("cmake") is None,
                       reason=f"needs {ARM.cross_compiler_package}, qemu-user and cmake"),
]
SHAPE = "1,3,64,64"


def compile_bundle(target: str, out) -> None:
    assert compile_cli.main(["--model", "shufflenet_v2_x0_5", "--input-shape", SHAPE, "--target", target,
                             "--out", str(out)]) == 0


def test_arm_bundle_runs_under_qemu_and_matches_x86(tmp_path):
    compile_bundle("arm", tmp_path / "arm")
    _, manifest = bundle_format.read_manifest(tmp_path / "arm")
    assert manifest["target"]["arch"] == "aarch64"
    for lib in ("lib/libtvm_runtime.so", "lib/libtvm_ffi.so", "model.so"):
        assert elf_arch(tmp_path / "arm" / lib) == "aarch64", lib

    app = build_app(tmp_path / "arm", tmp_path / "build-arm")  # no flags: the toolchain file is picked up
    assert elf_arch(app) == "aarch64"
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype("float32")
    x.tofile(tmp_path / "x.bin")
    done = run_clean(QEMU, *ARM.emulator[1:], app, tmp_path / "arm", tmp_path / "x.bin", "--repeat", 5,
                     "--dump", tmp_path / "y_arm.bin")
    assert done.returncode == 0, done.stderr
    print("emulated (qemu-aarch64):", done.stdout)

    compile_bundle("x86", tmp_path / "x86")
    (expected,) = runtime.load(tmp_path / "x86")(x)
    np.testing.assert_allclose(np.fromfile(tmp_path / "y_arm.bin", "float32"), expected.ravel(), atol=1e-5, rtol=1e-4)

    # The ARM bundle on this x86 machine: a clear error from Python (the C++ side is in test_bundle.py).
    with pytest.raises(UserError, match=r"was built for aarch64 \(arm-rpi4\); this machine is x86_64"):
        runtime.load(tmp_path / "arm")
