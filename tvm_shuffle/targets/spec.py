"""The fields that describe one compilation target."""

from __future__ import annotations

import dataclasses
from typing import Any

HOST_CPU = "host"  # placeholder for an mcpu detected on the machine that compiles
LOCAL_GPU = "local"  # placeholder for the compute capability of this machine's GPU


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """Everything needed to compile, tune, measure and bundle for one board.

    ``target`` and ``host`` are TVM target dicts (the string form is rejected
    by TVM 0.27). ``runtime_arch`` names the wheel platform whose TVM runtime
    libraries the bundle ships.
    """

    name: str
    family: str  # "x86" | "arm" | "cuda"
    description: str
    target: dict[str, Any]
    runtime_arch: str  # "x86_64" | "aarch64"
    host: dict[str, Any] | None = None
    cross_compiler: str | None = None  # None: the host's own g++
    cross_compiler_package: str | None = None  # Debian package that provides it
    emulator: tuple[str, ...] | None = None  # how to run this arch's binaries here, if at all
    default_trials: int = 64  # per-model default; --trials overrides
    trials_per_task: int = 64
    # TVM PassContext options for the build (``build.build``), e.g. CUDA graphs for GPUs.
    pass_config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def tvm_target(self):
        from tvm_shuffle import tvm_compat

        return tvm_compat.make_target(self.target, self.host)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
