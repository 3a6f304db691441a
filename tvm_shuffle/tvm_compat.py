"""The one place that knows where TVM keeps things.

TVM moves modules between releases (0.27: ``tvm.meta_schedule`` became
``tvm.s_tir.meta_schedule``, ``tvm.tir`` became ``tvm.tirx``, ``tvm.contrib.cc``
became ``tvm.support.cc``). Everything else in tvm_shuffle imports TVM's
compiler through this module, so an upgrade is one file.

Verified with apache-tvm 0.27.0.post1 + apache-tvm-ffi 0.1.14.post1.
"""

from __future__ import annotations

from typing import Any, Mapping

import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx
from tvm.relax.frontend.torch import from_exported_program
from tvm.s_tir import dlight
from tvm.ir.utils import derived_object  # tvm.meta_schedule.utils in older releases
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.analysis import estimate_tir_flops
from tvm.s_tir import Schedule  # tvm.tir.Schedule before 0.27
from tvm.s_tir.schedule import Trace  # tvm.tir.schedule.Trace before 0.27
from tvm import te, topi
from tvm import sym as arith  # tvm.arith before 0.27
from tvm.support import cc
from tvm import tirx as tir

VERIFIED_TVM = "0.27.0.post1"
Constant = tvm.ir.expr.GenericConst  # relax.Constant before 0.27
TensorLoad = tvm.ir.TensorLoad  # the class of tir.BufferLoad before 0.27 (its buffer is now ``.source``)
TVM_VERSION = tvm.__version__

__all__ = ["tvm", "relax", "tir", "ms", "dlight", "cc", "te", "topi", "arith", "Schedule", "Trace", "Constant", "TensorLoad", "derived_object",
           "from_onnx", "from_exported_program", "estimate_tir_flops", "make_target", "llvm_host_cpu",
           "backend_pipeline", "onnx_supported_ops", "import_tensor_intrinsics", "cuda_tensor_intrinsics", "target_has_feature", "TVM_VERSION", "VERIFIED_TVM"]


def make_target(target: Mapping[str, Any], host: Mapping[str, Any] | None = None) -> "tvm.target.Target":
    """A ``tvm.target.Target`` from a target dict (0.27 rejects ``"llvm -mcpu=x"`` strings)."""
    if host is not None:
        return tvm.target.Target(dict(target), host=dict(host))
    return tvm.target.Target(dict(target))


def backend_pipeline(target: "tvm.target.Target"):
    """The module with a backend's pass lists (its ``__init__`` omits ``dataflow_lower_passes``)."""
    import importlib

    backend = "cuda" if target.kind.name == "cuda" else "cpu_generic"
    return importlib.import_module(f"tvm.relax.backend.{backend}.pipeline")


def onnx_supported_ops() -> frozenset[str]:
    """ONNX op types the Relax ONNX importer converts (a private table in 0.27)."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return frozenset(_get_convert_map())


def target_has_feature(target: "tvm.target.Target", feature: str) -> bool:
    """Whether a target has a feature: an LLVM CPU feature (``avx512bf16``, ``neon``), or on CUDA a compute capability.

    LLVM raises for a feature name it does not know on the target's
    architecture (``avx512f`` on aarch64): that target does not have it.
    A CUDA target has ``sm_XY`` when its ``arch`` is ``sm_XY`` or later.
    Any other kind of target has none.
    """
    if target.kind.name == "cuda":
        return _compute_capability(str(target.attrs.get("arch", ""))) >= _compute_capability(feature) > 0
    if target.kind.name != "llvm":
        return False
    try:
        return bool(tvm.target.codegen.target_has_features(feature, target))
    except tvm.error.TVMError:
        return False


def _compute_capability(arch: str) -> int:
    """``80`` for ``sm_80`` (``sm_90a``: 90); 0 for anything else."""
    digits = arch[3:].rstrip("abf") if arch.startswith("sm_") else ""
    return int(digits) if digits.isdigit() else 0


def llvm_host_cpu() -> str:
    """LLVM's name for the CPU we run on (``generic`` when it cannot tell)."""
    return str(tvm.target.codegen.llvm_get_system_cpu())


def _shallow_stack(context: int = 1) -> list:
    """``inspect.stack()`` without resolving each frame's module.

    TVMScript's decorators call ``inspect.stack()`` for every function they
    parse; its ``getmodule`` scans all of ``sys.modules`` per frame, so with
    PyTorch loaded, importing TVM's tensor intrinsics (hundreds of
    ``@T.prim_func``) takes minutes. The parser reads only frames and
    source lines, which ``linecache`` gives directly.
    """
    import inspect
    import linecache
    import sys

    frames, frame = [], sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno, frame.f_globals)
        frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name,
                                        [line] if context > 0 and line else None, 0 if line else None))
        frame = frame.f_back
    return frames


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (MetaSchedule's ``TuneContext`` does on first use) quickly."""
    import importlib
    import inspect
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    stack, inspect.stack = inspect.stack, _shallow_stack
    try:
        importlib.import_module("tvm.s_tir.tensor_intrin")
    finally:
        inspect.stack = stack


def cuda_tensor_intrinsics():
    """``tvm.s_tir.tensor_intrin.cuda``, the generators of TVM's CUDA tensor intrinsics (imported quickly)."""
    import importlib

    import_tensor_intrinsics()
    return importlib.import_module("tvm.s_tir.tensor_intrin.cuda")
