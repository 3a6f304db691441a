"""NVIDIA GPUs by compute capability."""

from __future__ import annotations

import subprocess

from tvm_shuffle.targets.spec import LOCAL_GPU, TargetSpec

_HOST = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}

# Without a GPU on the build machine we cannot ask it; A100 is the most common
# datacenter part, and its code runs on every later GPU.
DEFAULT_ARCH = "sm_80"

_ARCHES = {
    "sm_75": "Turing (T4, RTX 20xx)",
    "sm_80": "Ampere (A100)",
    "sm_86": "Ampere (A10, RTX 30xx)",
    "sm_89": "Ada (L4, RTX 40xx)",
    "sm_90": "Hopper (H100, H200)",
}


# Batch-1 ShuffleNet on a large GPU is bound by kernel launches (about 60 per
# inference): with CUDA graphs the Relax VM captures the kernels between its
# input and its output once (RewriteCUDAGraph, in TVM's CUDA finalize passes)
# and replays them as one graph launch after that.
PASS_CONFIG = {"relax.backend.use_cuda_graph": True}


def _cuda(name: str, arch: str, description: str) -> TargetSpec:
    return TargetSpec(
        name=name,
        family="cuda",
        description=description,
        target={"kind": "cuda", "arch": arch, "max_threads_per_block": 1024,
                "max_shared_memory_per_block": 49152, "thread_warp_size": 32},
        host=_HOST,
        runtime_arch="x86_64",
        default_trials=256,
        pass_config=dict(PASS_CONFIG),
    )


SPECS = [
    _cuda("cuda", LOCAL_GPU, f"this machine's NVIDIA GPU (no GPU: {DEFAULT_ARCH})"),
    *(_cuda(f"cuda-{arch}", arch, f"NVIDIA {label}") for arch, label in _ARCHES.items()),
]
ALIASES: dict[str, str] = {}


def detect_local_arch() -> str:
    """``sm_XY`` of the first local GPU, or :data:`DEFAULT_ARCH` without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        major, minor = out.split()[0].split(".")
        return f"sm_{major}{minor}"
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return DEFAULT_ARCH
