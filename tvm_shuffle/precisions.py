"""Numeric precisions a model can be built in, as a registry of plain data.

Inputs and outputs of a bundle are fp32 in every precision; a precision
says how the convolutions inside store their weights and compute, which
target families build it at all (fp16 only CUDA: :meth:`Precision.check_family`
refuses it elsewhere, naming :func:`for_family`), and where it is native. The
CLIs' ``--precision`` choices and the tests' parametrization come from
:data:`PRECISIONS`. No imports of TVM or torch here: ``--help`` reads it.
"""

from __future__ import annotations

import dataclasses

from tvm_shuffle.errors import UserError, unknown_name


@dataclasses.dataclass(frozen=True)
class Precision:
    """One precision: what it means, which target families build it, which compute it natively, and what the others do."""

    name: str
    description: str
    # Target family -> LLVM CPU features or CUDA compute capabilities (``sm_80``: that or later) any of
    # which computes it natively; a family not listed never does (its build falls back, see ``fallback``).
    native: dict[str, tuple[str, ...]]
    fallback: str  # what a target without those features computes, in words
    families: tuple[str, ...]  # the target families that build it at all
    weights: str  # the dtype the 1x1 convolutions' weights are stored in
    # Relative logit error against fp32 that the tests hold a build of this precision to.
    tolerance: float = 0.0
    fallback_mode: str = "storage-only"  # the manifest's mode on a target without the features
    calibrated: bool = False  # quantized from a calibration set (--calibration, --calibrator)

    def check_family(self, spec) -> None:
        """One :class:`~tvm_shuffle.errors.UserError` when ``spec``'s family does not build this precision."""
        if spec.family not in self.families:
            valid = ", ".join(for_family(spec.family))
            raise UserError(f"precision {self.name} builds for {', '.join(self.families)} targets only; "
                            f"{spec.name} ({spec.family}) builds {valid}")

    def native_on(self, spec, target=None) -> bool:
        """Whether ``spec``'s target computes this precision with its own instructions."""
        features = self.native.get(spec.family)
        if features is None:
            return False
        if not features:
            return True
        from tvm_shuffle.tvm_compat import target_has_feature

        target = target if target is not None else spec.tvm_target()
        return any(target_has_feature(target, feature) for feature in features)

    def mode(self, spec, target=None) -> str:
        """``"native"`` or the fallback's mode (``"storage-only"``, ``"integer"``) on ``spec`` (what the build and manifest say)."""
        return "native" if self.native_on(spec, target) else self.fallback_mode


ALL_FAMILIES = ("x86", "arm", "cuda")
PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "fp32 weights and arithmetic", native={"x86": (), "arm": (), "cuda": ()},
              fallback="", families=ALL_FAMILIES, weights="float32", tolerance=1e-4),
    Precision("bf16",
              "1x1 convolutions with bf16 weights and bf16 inputs, fp32 sums (AVX512_BF16 vdpbf16ps on x86, "
              "bfdot on aarch64 with bf16, tensor-core mma on CUDA sm_80+); depthwise convolutions, the stem and "
              "the classifier stay fp32",
              native={"x86": ("avx512bf16",), "arm": ("bf16",), "cuda": ("sm_80",)},
              fallback="bf16 storage only: weights stored in bf16 and widened to fp32 in registers, fp32 FMAs",
              families=ALL_FAMILIES, weights="bfloat16", tolerance=2e-2),
    # fp16 is a GPU precision: of the CPUs we build for, x86 multiplies bf16 (AVX512_BF16) but no fp16
    # (AVX512_FP16 is Sapphire Rapids only), and bf16 keeps fp32's range.
    Precision("fp16",
              "1x1 convolutions with fp16 weights and fp16 inputs, fp32 sums (tensor-core mma on CUDA); "
              "depthwise convolutions, the stem and the classifier stay fp32",
              native={"cuda": ()},  # wmma fp16: sm_70 and later, so every GPU that CUDA 13 builds for (sm_75+)
              fallback="", families=("cuda",), weights="float16", tolerance=5e-3),
    Precision("int8",
              "post-training static int8: 1x1 convolutions and the classifier with s8 weights (per output channel) "
              "and u8 inputs (per tensor, calibrated), s32 sums (AVX-512 VNNI vpdpbusd on x86, sdot/usdot on "
              "aarch64 with dotprod/i8mm); depthwise convolutions, the stem and pooling stay fp32",
              native={"x86": ("avx512vnni",), "arm": ("dotprod",),
                      "cuda": ()},  # dp4a: sm_61 and later, so every GPU that CUDA 13 builds for (sm_75+)
              fallback="the same integer arithmetic as 32-bit multiply-adds on widened u8/s8 values (exact, slower)",
              families=ALL_FAMILIES, weights="int8", tolerance=5e-2, fallback_mode="integer", calibrated=True),
)}
DEFAULT = "fp32"
# How a calibrated precision takes its input ranges from the calibration set (tvm_shuffle.quantize).
CALIBRATORS = ("minmax", "percentile")


def get(name: str) -> Precision:
    """The precision called ``name``; one :class:`~tvm_shuffle.errors.UserError` naming the valid ones otherwise."""
    if not isinstance(name, str) or name not in PRECISIONS:
        raise unknown_name("precision", str(name), PRECISIONS)
    return PRECISIONS[name]


def for_family(family: str) -> list[str]:
    """The precisions that targets of ``family`` build."""
    return [p.name for p in PRECISIONS.values() if family in p.families]


__all__ = ["Precision", "PRECISIONS", "DEFAULT", "CALIBRATORS", "get", "for_family"]
