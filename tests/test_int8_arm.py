"""int8 on aarch64: ``sdot`` (``+dotprod``: A76, Neoverse N1), ``usdot`` (``+i8mm``: Neoverse V1), plain NEON on the A72.

The kernels' arithmetic is exact in every form (u8 x s8 products summed in
s32; ``sdot`` on activations flipped to s8 with the correction added back),
so a dot-product build's logits are checked bit for bit against the A72's
plain 32-bit multiply-adds, and both against PyTorch within the int8
tolerance (``precisions.get("int8").tolerance``, relative logit error).
Run under qemu-aarch64 (its ``max`` CPU has DotProd and I8MM) through the
bundle's own example app; the disassembly (``aarch64-linux-gnu-objdump``)
shows which instruction the kernels use.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import tvm_shuffle as ts
from tvm_shuffle import precisions, targets
from tvm_shuffle.models import channel_shuffle
from tvm_shuffle.schedules import int8_arm

from conftest import EmulatedApp, arm_marks

INT8 = precisions.get("int8")
SHAPE = (1, 3, 16, 16)
# (preset, the dot product its int8 kernels use, the manifest's mode)
TARGETS = [("arm-rpi4", None, "integer"), ("arm-rpi5", "sdot", "native"), ("arm-graviton3", "usdot", "native")]


# ---------------------------------------------------------------------------
# Which targets, which instruction, which register tiles (no build)


@pytest.mark.parametrize("target, instruction, mode", TARGETS + [("arm-graviton2", "sdot", "native")])
def test_int8_is_native_on_the_arm_targets_with_dot_products(target, instruction, mode):
    spec = targets.get(target)
    assert INT8.mode(spec) == mode
    target = spec.tvm_target()
    assert int8_arm.has_dotprod(target) == (instruction is not None)
    if instruction:
        assert int8_arm.instruction(target) == instruction


@pytest.mark.parametrize("channels, vectors", [(58, 28), (29, 52), (232, 16), (1024, 49), (24, 64), (3, 4), (6, 1)])
def test_register_tiles_fit_neon_and_cover_the_block(channels, vectors):
    tile = int8_arm.register_tile(channels, vectors)
    weights = -(-tile.channels // 4)
    assert tile.channels * tile.vectors <= int8_arm.TILE_SUMS
    assert tile.channels * tile.vectors + tile.vectors + weights <= int8_arm.TILE_REGISTERS
    assert tile.channels <= channels and tile.vectors <= vectors
    # The tiles the intrinsic runs (the last of a row or column moved back to end at the edge) cover the block.
    covered = np.zeros((channels, vectors), bool)
    for o in range(-(-channels // tile.channels)):
        for v in range(-(-vectors // tile.vectors)):
            o0, v0 = min(o * tile.channels, channels - tile.channels), min(v * tile.vectors, vectors - tile.vectors)
            covered[o0:o0 + tile.channels, v0:v0 + tile.vectors] = True
    assert covered.all()


@pytest.mark.parametrize("out_channels, padded, pixels, quads", [(58, 784, 784, 15), (232, 64, 49, 58),
                                                                 (24, 256, 256, 1), (30, 16, 16, 15)])
def test_the_pointwise_plan_splits_pixels_or_channels_among_the_threads(out_channels, padded, pixels, quads):
    plan = int8_arm.plan_pointwise(out_channels, padded, pixels, quads, threads=4)
    assert padded % plan.tile == 0 and out_channels % plan.groups == 0
    if plan.tile < padded:  # pixel tiles: whole 16-pixel vectors of a plane that has no padding
        assert padded == pixels and plan.groups == 1 and plan.tile % 16 == 0
        assert plan.tile * quads * 4 <= int8_arm.TILE_INPUT_BYTES
    elif padded * out_channels >= int8_arm.MIN_PARALLEL_WORK:
        assert plan.groups > 1


# ---------------------------------------------------------------------------
# Builds, run under qemu


class Pointwise(torch.nn.Module):
    """Every int8 kernel form: 1x1 convs with 3 (one quad), 12, 24 (gathered: a channel shuffle) and 58 inputs
    (padded to quads), 24, 12, 58 and 30 outputs on planes of 256 pixels (pixel tiles) and 16 (channel groups),
    and a classifier of 70 outputs (padded to 80) from 30 features (padded to 32)."""

    def __init__(self):
        super().__init__()
        self.expand = torch.nn.Conv2d(3, 24, 1)
        self.branch = torch.nn.Conv2d(12, 12, 1)
        self.mix = torch.nn.Conv2d(24, 58, 1)
        self.reduce = torch.nn.Conv2d(58, 30, 1)
        self.fc = torch.nn.Linear(30, 70)

    def forward(self, x):
        x = torch.relu(self.expand(x))
        a, b = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat([a, torch.relu(self.branch(b))], 1), 2)
        x = torch.nn.functional.avg_pool2d(torch.relu(self.mix(x)), 4)
        return self.fc(torch.relu(self.reduce(x)).mean((2, 3)))


def arm(test):
    """Marked slow and arm, and skipped without the cross toolchain and qemu (conftest.arm_marks)."""
    for mark in arm_marks():
        test = mark(test)
    return test


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


class Emulated(EmulatedApp):
    """Builds of :class:`Pointwise` per ARM preset, run under qemu."""

    def __init__(self, root):
        torch.manual_seed(0)
        self.module = Pointwise().eval()
        rng = np.random.default_rng(0)
        self.calibration = rng.standard_normal((8, *SHAPE[1:])).astype(np.float32)
        super().__init__(root, rng.standard_normal(SHAPE).astype(np.float32))
        self.built = {}

    def build(self, target: str):
        if target not in self.built:
            compiled = ts.compile(self.module, target, example_inputs=(torch.from_numpy(self.x),), quiet=True,
                                  precision="int8", calibration=self.calibration)
            self.built[target] = (compiled.manifest, compiled.save(self.root / target))
        return self.built[target]

    def run_target(self, target: str) -> np.ndarray:
        return self.run(self.build(target)[1], targets.get(target))

    def reference(self) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(self.x)).numpy().ravel()


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    return Emulated(tmp_path_factory.mktemp("int8_arm"))


def disassembly(library) -> str:
    return subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(library)],
                          capture_output=True, text=True, check=True).stdout


def kernels_using(code: str, mnemonic: str) -> set[str]:
    """Names of the functions whose code has ``mnemonic``."""
    found, current = set(), None
    for line in code.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            current = head.group(1)
        elif current and re.search(rf"\t{mnemonic}\t", line):
            found.add(current)
    return found


@pytest.mark.parametrize("target, instruction, mode", TARGETS, ids=[t for t, _, _ in TARGETS])
@arm
@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("aarch64-linux-gnu-objdump") is None,
                    reason="needs cmake and binutils-aarch64-linux-gnu")
def test_int8_runs_under_qemu_with_the_targets_dot_product(emulated, target, instruction, mode):
    manifest, bundle = emulated.build(target)
    assert manifest["precision"]["name"] == "int8" and manifest["precision"]["mode"] == mode
    assert manifest["precision"]["calibration"]["int8_convs"] == 4
    assert manifest["precision"]["calibration"]["int8_dense"] == 1
    code = disassembly(bundle / "model.so")
    int8_kernels = {name for name in re.findall(r"^[0-9a-f]+ <(fused_\w+)_compute_>:$", code, re.M)
                    if "int8" in name or "gathered" in name}
    assert len(int8_kernels) == 5, int8_kernels  # four 1x1 convs and the classifier
    for mnemonic in ("sdot", "usdot", "udot"):
        using = {name.removesuffix("_compute_") for name in kernels_using(code, mnemonic)}
        assert using == (int8_kernels if mnemonic == instruction else set()), (mnemonic, using)
    # The A72's classifier keeps its sums in NEON's registers (with x86's 8 vectors of 16 sums it spilled 363
    # times in ShuffleNetV2). The dot-product kernels are checked on ShuffleNetV2 below: this model's reductions
    # are short (3 to 8 quads), LLVM unrolls them whole and loads every operand ahead, and a few spill.
    from tvm_shuffle import static_check as sc

    if instruction is None:
        classifier = next(k for k in int8_kernels if "dense" in k)
        loops = sc.analyze_kernel(sc.parse_objdump(code)[classifier + "_compute_"], sc.ISAS["aarch64"])
        assert loops.inner.vector_spills == 0, loops.inner

    out = emulated.run_target(target)
    assert out.shape == (70,)
    assert relative_error(out, emulated.reference()) < INT8.tolerance
    if instruction:  # the same integers as the A72's multiply-adds: the same logits, bit for bit
        np.testing.assert_array_equal(out, emulated.run_target("arm-rpi4"))


# ---------------------------------------------------------------------------
# The static code check of an int8 build (report --target arm-rpi5 --quantize int8 without a board)


def test_report_quantize_int8_reaches_the_report(monkeypatch, tmp_path):
    """``report --quantize int8`` builds int8 (its main passed --precision alone, so the flag did nothing)."""
    from tvm_shuffle import report

    seen = {}

    class Saved:
        def save(self, out):
            return []

    def fake_report(model, target, **kwargs):
        seen.update(kwargs, target=target)
        return Saved()

    monkeypatch.setattr(report, "report", fake_report)
    assert report.main(["--model", "shufflenet_v2_x0_5", "--target", "arm-rpi5", "--quantize", "int8",
                        "--out", str(tmp_path), "--no-zoo-table"]) == 0
    assert seen["precision"] == "int8" and seen["target"].name == "arm-rpi5"


@arm
@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-objdump") is None, reason="needs binutils-aarch64-linux-gnu")
def test_the_static_check_of_shufflenet_in_int8_counts_the_dot_products(tmp_path):
    """ShuffleNetV2 1.0x in int8 on arm-rpi5: every int8 kernel's hot loop is sdot (counted as multiply-accumulates),
    and no int8 kernel has a vector spill or a scalar FMA in an innermost loop. (About half of them reload one or
    two base pointers from the stack in a loop of 50-180 instructions, which the check flags: the general
    registers LLVM gives the loops of a kernel's parallel task.)"""
    import warnings

    from tvm_shuffle import frontends, quantize
    from tvm_shuffle import static_check as sc

    imported = frontends.import_model("shufflenet_v2_x1_0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calibration = quantize.load_calibration(None, imported.input_shape)
    result = sc.analyze(imported, targets.get("arm-rpi5"), tmp_path, x86_spec=targets.get("x86-avx512"),
                        log=lambda _: None, precision="int8", calibration=calibration)
    code = disassembly(tmp_path / "arm-rpi5" / "model.so")
    with_sdot = {name.removesuffix("_compute_").removesuffix("_prepacked") for name in kernels_using(code, "sdot")}
    # The int8 kernels: 1x1 convs and the classifier, and the 1x1 convs of a fused shuffle ("gathered", their
    # epilogue multiplies by the scales; the other gathered kernels are fp32 stride-2 depthwise convs).
    int8_rows = [row for row in result["rows"] if "int8" in row["kernel"]
                 or "gathered" in row["kernel"] and "multiply" in row["kernel"]]
    assert len(int8_rows) == 37 and {row["kernel"] for row in int8_rows} <= with_sdot
    assert all(row["arm_vector_fma"] > 0 for row in int8_rows)
    for row in int8_rows:
        assert not row["arm_inner_vector_spills"] and not row["arm_inner_scalar_fma"], (row["kernel"], row["flags"])


def test_a_trace_with_the_neon_intrinsics_replays_in_a_fresh_process(tmp_path):
    """Tuning records hold traces that name the per-shape intrinsics; reading them registers those (database._parse)."""
    import json
    import sys

    import tvm

    from tvm_shuffle import build, frontends, passes, quantize
    from tvm_shuffle.schedules import int8

    torch.manual_seed(0)
    module = Pointwise().eval()
    imported = frontends.from_torch_module(module, SHAPE, name="pointwise")
    calibration = quantize.load_calibration(np.zeros((1, *SHAPE[1:]), np.float32), SHAPE)
    spec = targets.get("arm-graviton2")
    lowered = build.lower(passes.optimize(imported.mod, precision="int8", calibration=calibration), spec)
    func = next(f for gv, f in lowered.functions.items() if gv.name_hint.startswith("fused_conv2d_int8"))
    with spec.tvm_target() as target:
        trace = int8.PointwiseInt8().apply(func, target, False).trace
    assert trace.insts[-1].kind.name == "Tensorize"
    (tmp_path / "func.py").write_text(func.script())
    (tmp_path / "trace.json").write_text(json.dumps(tvm.ir.save_json(trace.as_json())))
    replay = f"""
import json, pathlib, tvm
from tvm_shuffle import schedules
from tvm_shuffle.tvm_compat import Schedule, Trace
root = pathlib.Path({str(tmp_path)!r})
text = (root / "trace.json").read_text()
schedules.register_intrinsics(text.encode())
sch = Schedule(tvm.script.from_source((root / "func.py").read_text()))
Trace.apply_json_to_schedule(tvm.ir.load_json(json.loads(text)), sch)
print("replayed", sch.trace.insts[-1].kind.name)
"""
    done = subprocess.run([sys.executable, "-c", replay], capture_output=True, text=True)
    assert done.returncode == 0 and "replayed Tensorize" in done.stdout, done.stderr[-2000:]
