"""64-bit ARM boards, cross-compiled with Debian's aarch64 toolchain."""

from __future__ import annotations

from tvm_shuffle.targets.spec import TargetSpec

_CROSS = dict(
    runtime_arch="aarch64",
    cross_compiler="aarch64-linux-gnu-g++",
    cross_compiler_package="g++-aarch64-linux-gnu",
    # binfmt_misc is not mounted on our CI machines, so qemu is called explicitly.
    emulator=("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"),
    default_trials=64,
)


def _arm(name: str, description: str, mcpu: str | None, mattr: tuple[str, ...], cores: int) -> TargetSpec:
    target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": list(mattr), "num-cores": cores}
    if mcpu:
        target["mcpu"] = mcpu
    return TargetSpec(name=name, family="arm", description=description, target=target, **_CROSS)


SPECS = [
    _arm("arm-armv8a", "generic ARMv8-A with NEON (any 64-bit ARM board)", None, ("+neon",), 4),
    _arm("arm-rpi4", "Raspberry Pi 4 (Cortex-A72, 4 cores)", "cortex-a72", ("+neon",), 4),
    _arm("arm-rpi5", "Raspberry Pi 5 (Cortex-A76, 4 cores)", "cortex-a76", ("+neon", "+dotprod"), 4),
    _arm("arm-graviton2", "AWS Graviton2 (Neoverse N1)", "neoverse-n1", ("+neon", "+dotprod"), 4),
    # Neoverse V1 is Armv8.4 with the Armv8.6 bf16 and i8mm extensions: said here, not left to the mcpu.
    # Graviton4's Neoverse V2 has every feature listed (with 128-bit SVE vectors, V1's are 256): a preset of
    # its own waits for a board that shows its code should differ.
    _arm("arm-graviton3", "AWS Graviton3 (Neoverse V1, SVE, bf16, i8mm)", "neoverse-v1",
         ("+neon", "+dotprod", "+sve", "+bf16", "+i8mm"), 4),
]

# `--target arm` means the board most users hold: a Raspberry Pi 4's A72 code
# also runs on every later core, which the generic armv8-a preset would
# schedule worse.
ALIASES = {"arm": "arm-rpi4"}
