"""x86-64 CPUs: the host, detected, plus explicit ISA presets for cross-building."""

from __future__ import annotations

import functools
import os

from tvm_shuffle.targets.spec import HOST_CPU, TargetSpec

# The wheel's LLVM refuses mcpu=native (its default triple is conda's), so we
# pass an explicit CPU name; threads come from TVM_NUM_THREADS at run time.
_COMMON = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}

SPECS = [
    TargetSpec(
        name="x86",
        family="x86",
        description="this host's x86-64 CPU (mcpu detected by LLVM)",
        target={**_COMMON, "mcpu": HOST_CPU},
        runtime_arch="x86_64",
    ),
    TargetSpec(
        name="x86-avx2",
        family="x86",
        description="any x86-64 CPU with AVX2/FMA (Haswell or newer, Zen 1 or newer)",
        target={**_COMMON, "mcpu": "haswell"},
        runtime_arch="x86_64",
    ),
    TargetSpec(
        name="x86-avx512",
        family="x86",
        description="x86-64 with AVX-512 (Skylake-SP / Cascade Lake or newer, Zen 4)",
        target={**_COMMON, "mcpu": "skylake-avx512"},
        runtime_arch="x86_64",
    ),
]

ALIASES: dict[str, str] = {}


@functools.lru_cache(maxsize=None)
def detect_host_cpu() -> str:
    """LLVM's name for this CPU, e.g. ``znver4`` or ``skylake-avx512``.

    ``TVM_SHUFFLE_MCPU`` overrides detection (a build box that is not the
    deployment machine).
    """
    forced = os.environ.get("TVM_SHUFFLE_MCPU")
    if forced:
        return forced
    from tvm_shuffle import tvm_compat

    cpu = tvm_compat.llvm_host_cpu()
    return cpu if cpu and cpu != "generic" else _cpu_from_flags(_cpuinfo_flags())


def _cpuinfo_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _cpu_from_flags(flags: frozenset[str]) -> str:
    """A conservative LLVM CPU name implied by the vector ISA flags."""
    if "avx512f" in flags:
        return "skylake-avx512"
    if "avx2" in flags and "fma" in flags:
        return "haswell"
    return "x86-64-v2" if "sse4_2" in flags else "x86-64"
