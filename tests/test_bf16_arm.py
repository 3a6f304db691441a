"""bf16 on aarch64: ``bfdot`` (``+bf16``: Neoverse V1 / Graviton3), storage only on the other ARM presets.

Which presets compute bf16 natively, and that the NEON rule takes exactly
the bf16 kernels of those (no build, every CPU preset of the registry). The
slow test builds ShuffleNetV2 0.5x for each native ARM preset, runs it under
qemu-aarch64 (its ``max`` CPU has BF16) through the bundle's example app and
holds it to the bf16 tolerance against PyTorch
(``precisions.get("bf16").tolerance``, relative logit error), to PyTorch's
top-1, and to the x86 bf16 build (same bf16 inputs and weights, fp32 sums in
another order); the disassembly shows ``bfdot`` in every bf16 kernel's hot
loop and no vector register spilled in any of their innermost loops.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import tvm_shuffle as ts
from tvm_shuffle import build, passes, precisions, targets
from tvm_shuffle import static_check as sc
from tvm_shuffle.frontends import from_torch_module
from tvm_shuffle.models import build_model, randomize_batchnorm
from tvm_shuffle.schedules import bf16, bf16_arm
from tvm_shuffle.tvm_compat import Schedule, tir

from conftest import TINY_SHAPE, EmulatedApp, TinyShuffleUnit
from test_int8_arm import arm, disassembly, kernels_using, relative_error

BF16 = precisions.get("bf16")
ARM_PRESETS = [name for name, spec in targets.TARGETS.items() if spec.family == "arm"]
NATIVE_ARM = [name for name in ARM_PRESETS if BF16.mode(targets.get(name)) == "native"]
CPU_PRESETS = [name for name, spec in targets.TARGETS.items() if spec.family in ("x86", "arm")]
SHAPE = (1, 3, 64, 64)
# Relative logit difference between the aarch64 bfdot build and the x86 build (vdpbf16ps, or storage only where this
# CPU has no AVX512_BF16): the same rounded inputs and weights, fp32 sums in another order. Seen: 1.3e-7 (vdpbf16ps).
X86_AGREEMENT = {"native": 1e-5, "storage-only": 2e-3}


@pytest.mark.parametrize("target", ARM_PRESETS)
def test_bf16_is_native_on_the_arm_presets_that_say_bf16(target):
    """A preset's ``mattr`` says ``+bf16`` exactly where bf16 is native (Graviton3), not its mcpu alone."""
    spec = targets.get(target)
    assert BF16.mode(spec) == ("native" if "+bf16" in spec.target["mattr"] else "storage-only")
    assert bf16_arm.has_bf16(spec.tvm_target()) == (BF16.mode(spec) == "native")


def test_graviton3_is_a_native_bf16_preset():
    assert "arm-graviton3" in NATIVE_ARM


@pytest.fixture(scope="module")
def tiny_bf16():
    """The tiny shuffle unit (its 1x1 convolution in bf16) optimized for bf16, once."""
    torch.manual_seed(0)
    module = randomize_batchnorm(TinyShuffleUnit()).eval()
    return passes.optimize(from_torch_module(module, TINY_SHAPE, name="tiny").mod, precision="bf16")


@pytest.mark.parametrize("target", CPU_PRESETS)
def test_the_neon_rule_takes_the_bf16_kernels_of_native_arm_targets_only(tiny_bf16, target):
    spec = targets.get(target)
    lowered = build.lower(tiny_bf16, spec)
    kernels = {gv.name_hint: func for gv, func in lowered.functions.items() if isinstance(func, tir.PrimFunc)}
    ours = {name for name, func in kernels.items() if bf16.find_blocks(Schedule(func)) is not None}
    assert ours  # the unit's 1x1 convolution
    native = spec.family == "arm" and BF16.mode(spec) == "native"
    with spec.tvm_target() as tvm_target:
        scheduled = {name: bf16_arm.PointwiseBF16Neon().apply(func, tvm_target, False) for name, func in kernels.items()}
    assert {name for name, sch in scheduled.items() if sch is not None} == (ours if native else set())
    for name in ours if native else ():
        assert bf16_arm.DOT_FUNCTION in scheduled[name].mod.script(), name


# ---------------------------------------------------------------------------
# ShuffleNetV2 in bf16, built for each native ARM preset and run under qemu


class Emulated(EmulatedApp):
    """ShuffleNetV2 0.5x in bf16 per preset, run under qemu."""

    def __init__(self, root):
        torch.manual_seed(0)
        self.module = randomize_batchnorm(build_model("shufflenet_v2_x0_5")).eval()
        super().__init__(root, np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32))

    def compile(self, target: str):
        return ts.compile(self.module, target, example_inputs=(torch.from_numpy(self.x),), precision="bf16",
                          quiet=True)

    def run_build(self, compiled) -> np.ndarray:
        return self.run(compiled.save(self.root / compiled.spec.name), compiled.spec)

    def reference(self) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(self.x)).numpy().ravel()


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    return Emulated(tmp_path_factory.mktemp("bf16_arm"))


def bf16_kernels(compiled) -> set[str]:
    """Names of the built model's bf16 1x1 kernels (plain or gathering a fused shuffle), as the library names them."""
    lowered = build.lower(compiled._built.mod, compiled.spec)
    return {gv.name_hint for gv, func in lowered.functions.items()
            if isinstance(func, tir.PrimFunc) and bf16.find_blocks(Schedule(func)) is not None}


def kernel_names(code: str, mnemonic: str) -> set[str]:
    """The kernels whose code has ``mnemonic``, by their names before the build's suffixes."""
    return {name.removesuffix(sc.COMPUTE_SUFFIX).removesuffix(sc.PACKED_SUFFIX)
            for name in kernels_using(code, mnemonic)}


@pytest.mark.parametrize("target", NATIVE_ARM)
@arm
@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("aarch64-linux-gnu-objdump") is None,
                    reason="needs cmake and binutils-aarch64-linux-gnu")
def test_shufflenet_in_bf16_runs_under_qemu_with_bfdot(emulated, target):
    compiled = emulated.compile(target)
    assert compiled.manifest["precision"] == {"name": "bf16", "mode": "native"}
    out = emulated.run_build(compiled)
    ref = emulated.reference()
    assert relative_error(out, ref) < BF16.tolerance
    assert out.argmax() == ref.argmax()
    x86 = ts.compile(emulated.module, "x86", example_inputs=(torch.from_numpy(emulated.x),), precision="bf16",
                     quiet=True)
    assert relative_error(out, x86(emulated.x)[0].ravel()) < X86_AGREEMENT[x86.manifest["precision"]["mode"]]

    code = disassembly(emulated.root / target / "model.so")
    kernels = bf16_kernels(compiled)
    assert kernels and kernel_names(code, "bfdot") == kernels, (kernels, kernel_names(code, "bfdot"))
    assert not kernel_names(code, "fmla") & kernels  # every product a bfdot
    functions = sc.parse_objdump(code)
    for kernel in kernels:
        loops = sc.analyze_kernel(sc.kernel_functions(functions, kernel), sc.ISAS["aarch64"])
        assert loops.hot.vector_fma > 0 and not loops.inner.vector_spills and not loops.inner_scalar_fma, \
            (kernel, loops.hot, loops.inner)
