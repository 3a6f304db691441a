"""Shared fixtures: tiny networks with every construct the pipeline handles.

The tiny models keep the fast tests fast; the zoo models (tests/test_zoo.py)
exercise the real networks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tvm_shuffle.models import MODELS, channel_shuffle, randomize_batchnorm


def cpu_has(flag: str) -> bool:
    """Whether this CPU lists ``flag`` in /proc/cpuinfo (``avx512_vnni``, ``avx512_bf16``)."""
    try:
        return flag in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def runs_natively(flag: str):
    """Skip a test whose native kernel needs ``flag`` on a CPU without it (the code it checks cannot run there)."""
    return pytest.mark.skipif(not cpu_has(flag), reason=f"this CPU has no {flag} (the native kernel cannot run here)")

TINY_SHAPE = (1, 3, 16, 16)


def zoo_at_full_size() -> list[str]:
    """The zoo models test_zoo compiles at their own input size: all v2 widths, v1 at 1.0x per group count.

    test_fusion checks the others at 1x3x32x32, so each zoo model is built
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


# ---------------------------------------------------------------------------
# Small Relax graphs and checks shared by test_detect, test_fusion,
# test_cpu_schedules, test_gpu_schedules and test_seeds: every form of channel
# shuffle the frontends produce, ShuffleNet units built from them, and the
# comparison of a build with TVM's unscheduled lowering. Weights are random but
# fixed. TVM is imported inside the functions, so collecting other tests does
# not load it.

# Fusion permutes weights and sums the same products in another order, and the
# schedules reassociate sums: results move by ~1e-7.
TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
# 24 channels: 2, 3, 4, 6, 8 and 12 groups all divide them.
N, C, H, W = UNIT_SHAPE = (1, 24, 6, 6)


def weights(shape) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape)


def random_input(shape=UNIT_SHAPE) -> np.ndarray:
    return np.random.default_rng(1).standard_normal(shape).astype("float32")


def conv_layer(x, out_channels, *, kernel=1, groups=1, stride=1, bias=True, relu=False):
    """A Relax conv2d (same padding) of ``x``, plus bias and ReLU when asked."""
    from tvm_shuffle.tvm_compat import relax

    in_channels = int(x.ty.shape.values[1])
    fan_in = in_channels // groups * kernel * kernel  # keeps activations near 1 through many layers
    w = relax.const((weights((out_channels, in_channels // groups, kernel, kernel)) / np.sqrt(fan_in)).astype("float32"))
    y = relax.op.nn.conv2d(x, w, strides=stride, padding=kernel // 2, groups=groups)
    if bias:
        y = relax.op.add(y, relax.const(weights((1, out_channels, 1, 1)).astype("float32")))
    return relax.op.nn.relu(y) if relu else y


def relax_graph(body, shape=UNIT_SHAPE):
    """An IRModule with ``main(x)`` returning ``body(bb, x)``; ``body`` emits with ``bb`` and returns the output."""
    from tvm_shuffle.tvm_compat import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def shuffle_5d(bb, x, groups):
    """torch.export and ONNX: reshape (N, g, C/g, H, W) -> swap -> reshape."""
    from tvm_shuffle.tvm_compat import relax

    n, c, h, w = (int(d) for d in x.ty.shape.values)
    y = bb.emit(relax.op.reshape(x, (n, groups, c // groups, h, w)))
    y = bb.emit(relax.op.permute_dims(y, [0, 2, 1, 3, 4]))
    return bb.emit(relax.op.reshape(y, (n, c, h, w)))


def shuffle2(bb, x):
    """The 2-group shuffle of ShuffleNet v2, in its 5-D form."""
    return shuffle_5d(bb, x, 2)


def shuffle_4d(bb, x, groups):
    """ONNX's 4-D form: spatial dims flattened, reshape (N, g, C/g, H*W) -> swap -> reshape."""
    from tvm_shuffle.tvm_compat import relax

    n, c, h, w = (int(d) for d in x.ty.shape.values)
    y = bb.emit(relax.op.reshape(x, (n, groups, c // groups, h * w)))
    y = bb.emit(relax.op.permute_dims(y, [0, 2, 1, 3]))
    return bb.emit(relax.op.reshape(y, (n, c, h, w)))


def even_odd(bb, x):
    """The authors' v2 release: reshape(b*c//2, 2, h*w).permute(1, 0, 2).reshape(2, -1, c//2, h, w); x[0], x[1]."""
    from tvm_shuffle.tvm_compat import relax

    n, c, h, w = (int(d) for d in x.ty.shape.values)
    y = bb.emit(relax.op.reshape(x, (n * c // 2, 2, h * w)))
    y = bb.emit(relax.op.permute_dims(y, [1, 0, 2]))
    y = bb.emit(relax.op.reshape(y, (2, n, c // 2, h, w)))
    return (bb.emit(relax.op.take(y, relax.const(0, "int64"), axis=0)),
            bb.emit(relax.op.take(y, relax.const(1, "int64"), axis=0)))


def halves_split(bb, x):
    """torch.export's ``chunk(2, dim=1)``."""
    from tvm_shuffle.tvm_compat import relax

    parts = bb.emit(relax.op.split(x, 2, axis=1))
    return bb.emit(relax.TupleGetItem(parts, 0)), bb.emit(relax.TupleGetItem(parts, 1))


def halves_slice(bb, x):
    """The classic ONNX exporter's Slice pair."""
    from tvm_shuffle.tvm_compat import relax

    c = int(x.ty.shape.values[1])
    return (bb.emit(relax.op.strided_slice(x, axes=[1], begin=[0], end=[c // 2])),
            bb.emit(relax.op.strided_slice(x, axes=[1], begin=[c // 2], end=[c])))


def v2_units(shuffle=shuffle2, halves=halves_split, units=3, shape=UNIT_SHAPE):
    """Stem, then ShuffleNet v2 stride-1 units: split, branch on one half, concat, shuffle; a head conv."""
    from tvm_shuffle.tvm_compat import relax

    def body(bb, x):
        x = bb.emit(conv_layer(x, C, relu=True))
        for _ in range(units):
            keep, branch = halves(bb, x)
            y = bb.emit(conv_layer(branch, C // 2, relu=True))
            y = bb.emit(conv_layer(y, C // 2, kernel=3, groups=C // 2))
            y = bb.emit(conv_layer(y, C // 2, relu=True))
            x = shuffle(bb, bb.emit(relax.op.concat([keep, y], axis=1)))
        return bb.emit(conv_layer(x, 8))

    return relax_graph(body, shape)


def v2_megvii(units=3):
    """The release's unit: even/odd split first, then branch and concat (no separate shuffle op)."""
    from tvm_shuffle.tvm_compat import relax

    def body(bb, x):
        x = bb.emit(conv_layer(x, C, relu=True))
        for _ in range(units):
            keep, branch = even_odd(bb, x)
            y = bb.emit(conv_layer(branch, C // 2, relu=True))
            y = bb.emit(conv_layer(y, C // 2, kernel=3, groups=C // 2))
            x = bb.emit(relax.op.concat([keep, bb.emit(conv_layer(y, C // 2, relu=True))], axis=1))
        return bb.emit(conv_layer(x, 8))

    return relax_graph(body)


def v1_unit(groups):
    """ShuffleNet v1: grouped 1x1 conv, shuffle, depthwise 3x3, grouped 1x1 conv, residual."""
    from tvm_shuffle.tvm_compat import relax

    def body(bb, x):
        y = bb.emit(conv_layer(x, C, groups=groups, relu=True))
        y = shuffle_5d(bb, y, groups)
        y = bb.emit(conv_layer(y, C, kernel=3, groups=C))
        y = bb.emit(conv_layer(y, C, groups=groups))
        return bb.emit(relax.op.nn.relu(relax.op.add(x, y)))

    return relax_graph(body)


def stride2_unit():
    """A v2 stride-2 unit fed by a shuffled tensor: both branches read all of it (depthwise and 1x1)."""
    from tvm_shuffle.tvm_compat import relax

    def body(bb, x):
        x = shuffle2(bb, bb.emit(relax.op.concat([bb.emit(conv_layer(x, C // 2, relu=True)),
                                                  bb.emit(conv_layer(x, C // 2, relu=True))], axis=1)))
        left = bb.emit(conv_layer(bb.emit(conv_layer(x, C, kernel=3, groups=C, stride=2)), C // 2, relu=True))
        right = bb.emit(conv_layer(x, C // 2, relu=True))
        right = bb.emit(conv_layer(bb.emit(conv_layer(right, C // 2, kernel=3, groups=C // 2, stride=2)), C // 2,
                                   relu=True))
        return shuffle2(bb, bb.emit(relax.op.concat([left, right], axis=1)))

    return relax_graph(body, (N, C, 8, 8))


def host_spec():
    """The ``x86`` preset resolved for this host (the target the numeric checks run on)."""
    from tvm_shuffle import targets

    return targets.get("x86")


def run(mod, x: np.ndarray, spec=None, database=None) -> np.ndarray:
    """``mod``'s first output for ``x``, built by :func:`tvm_shuffle.build.build` for ``spec`` (default: this host)."""
    from tvm_shuffle import build
    from tvm_shuffle.tvm_compat import relax, tvm

    vm = relax.VirtualMachine(build.build(mod, spec or host_spec(), database=database), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def assert_matches_unscheduled(mod, x: np.ndarray, database=None, spec=None) -> None:
    """Our build for ``spec`` (defaults, tuned schedules from ``database``) against TVM's unscheduled lowering."""
    from tvm_shuffle.tvm_compat import relax, tvm

    unscheduled = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    np.testing.assert_allclose(run(mod, x, spec=spec, database=database),
                               unscheduled["main"](tvm.runtime.tensor(x)).numpy(), **TOLERANCE)


def conv_kernels(mod, spec) -> list:
    """(name, PrimFunc) of every convolution kernel ``mod`` lowers to for ``spec``."""
    from tvm_shuffle import build
    from tvm_shuffle.tvm_compat import tvm

    lowered = build.lower(mod, spec)
    return [(gv.name_hint, f) for gv, f in lowered.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint]


def is_1x1_weight(buffer) -> bool:
    shape = [int(d) for d in buffer.shape]
    return len(shape) == 4 and shape[0] > 1 and shape[2:] == [1, 1]


class EmulatedApp:
    """Runs bundles on one input under qemu-aarch64 with one example app, cross-built on first use (it loads any bundle)."""

    def __init__(self, root: Path, x: np.ndarray):
        self.root = root
        self.x = x
        (root / "x.bin").write_bytes(x.tobytes())
        self.app = None

    def run(self, bundle: Path, spec) -> np.ndarray:
        """The outputs of the bundle built for the ARM preset ``spec``, flattened."""
        from test_bundle import build_app, run_clean

        if self.app is None:
            self.app = build_app(bundle, self.root / "app")
        out = self.root / f"{spec.name}.bin"
        done = run_clean(shutil.which("qemu-aarch64"), *spec.emulator[1:], self.app, bundle, self.root / "x.bin",
                         "--repeat", 1, "--dump", out)
        assert done.returncode == 0, done.stderr
        return np.fromfile(out, np.float32)


def run_packed_on_cpu(lowered, x: np.ndarray) -> np.ndarray:
    """First output of ``lowered`` (its kernels scheduled to run on a CPU) on ``x``, built with its weights packed once.

    The packing (padded weights too) must run on the constants at build time: no kernel may be left to repack them per call.
    """
    from tvm_shuffle import build, tvm_compat
    from tvm_shuffle.tvm_compat import relax, tvm

    llvm = tvm_compat.make_target({"kind": "llvm"})
    backend = tvm_compat.backend_pipeline(llvm)
    with llvm, tvm.transform.PassContext(opt_level=3):
        packed = tvm.transform.Sequential(build.weight_packing_passes())(lowered)
        assert not [gv.name_hint for gv in packed.get_global_vars() if build.WEIGHT_PACKING_SUFFIX in gv.name_hint]
        executable = tvm.compile(packed, target=llvm, relax_pipeline=tvm.transform.Sequential(
            [*backend.dataflow_lower_passes(llvm), *backend.finalize_passes(llvm)]))
    out = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x))
    return (out if hasattr(out, "numpy") else out[0]).numpy()
