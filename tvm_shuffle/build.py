"""Build: an optimized Relax module -> an executable in memory (:class:`Built`), and writing it out.

:func:`compile_imported` runs the graph passes, applies tuned schedules from
a database (when given) and the default schedules to the rest, and compiles.
:func:`write` exports the library, which holds the weights and the Relax VM
bytecode, with its ``manifest.json``: what the model expects (input name,
shape, dtype), what it returns, and how it was made (target, TVM version,
tuning database digest), so the runtime can check its input without TVM's
compiler. Packaging the runtime beside them is a separate step
(:mod:`tvm_shuffle.bundle`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import operator
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tvm_shuffle import passes, schedules, targets
from tvm_shuffle.bundle_format import LIBRARY, MANIFEST, MANIFEST_VERSION
from tvm_shuffle.errors import UserError
from tvm_shuffle.relax_rewrite import rewrite_calls
from tvm_shuffle.frontends import Imported
from tvm_shuffle.targets import TargetSpec
from tvm_shuffle import tvm_compat
from tvm_shuffle.schedules.analysis import child_blocks
from tvm_shuffle.tvm_compat import TVM_VERSION, Schedule, cc, relax, tir, tvm

# The name SplitLayoutRewritePreproc gives the packing it splits out of kernel X: "X_weight_prepack".
WEIGHT_PACKING_SUFFIX = "_weight_prepack"


def tir_passes(spec: TargetSpec) -> list:
    """Relax -> fused, unscheduled TIR kernels: the tasks the tuner sees.

    The CPU legalization list on every target: CUDA's own list also applies
    dlight, which must run after tuned schedules are applied, not before.
    """
    target = spec.tvm_target()
    cpu = tvm_compat.backend_pipeline(tvm_compat.make_target({"kind": "llvm"}))
    return [*_cpu_graph_passes(spec, target), *cpu.library_dispatch_passes(target), *cpu.legalize_passes(target),
            *_cpu_kernel_passes(spec)]


def _cpu_graph_passes(spec: TargetSpec, target) -> list:
    """Graph rewrites that depend on a CPU's vector width (none on GPUs)."""
    if spec.family not in schedules.CPU_FAMILIES:
        return []
    from tvm_shuffle.schedules.constants import cpu_constants

    const = cpu_constants(target)

    def pad_rows(mod, _ctx):
        return passes.pad_depthwise_rows(mod, const.row_multiple, strided_from=const.strided_row_from)

    rewrites = [tvm.transform.module_pass(pad_rows, opt_level=0, name="PadDepthwiseRows")]
    if spec.family == "x86":  # measured on x86 only (benchmarks/results/schedule_choices.md); ARM keeps two kernels
        rewrites.append(tvm.transform.module_pass(lambda mod, _ctx: passes.fuse_stem_pool(mod, const.lanes()),
                                                  opt_level=0, name="FuseStemPool"))
    return rewrites


def _cpu_kernel_passes(spec: TargetSpec) -> list:
    """Mark each CPU kernel's constant arguments (weights, biases) as free to take any layout.

    MetaSchedule's ``RewriteLayout`` postprocessor then stores them the way
    its tiles read them, as our own 1x1 schedules do (``schedules.cpu._pack_weights``),
    and the build packs them once (:func:`weight_packing_passes`). Without
    it, MetaSchedule's candidates read OIHW weights and lose to our packed
    defaults in the model, where the weights come from DRAM
    (:func:`tvm_shuffle.passes.mark_layout_free_weights`).
    """
    if spec.family not in schedules.CPU_FAMILIES:
        return []
    return [tvm.transform.module_pass(lambda mod, _ctx: passes.mark_layout_free_weights(mod), opt_level=0,
                                      name="MarkLayoutFreeWeights")]


def lower(mod: "tvm.IRModule", spec: TargetSpec) -> "tvm.IRModule":
    """Apply :func:`tir_passes` under the target."""
    with spec.tvm_target():
        return tvm.transform.Sequential(tir_passes(spec))(mod)


def schedule_passes(spec: TargetSpec, *, database=None) -> list:
    """Tuned schedules from ``database`` first, then default ones for what is left."""
    passes_ = [relax.transform.MetaScheduleApplyDatabase(enable_warning=False)] if database is not None else []
    return passes_ + schedules.default_schedule_passes(spec)


def weight_packing_passes() -> list:
    """Run the kernels' weight layout rewrites once, on the constant weights, instead of at every call.

    A schedule that wants its weights in another layout marks the copy as a
    layout-rewrite preprocessing block: ours (``schedules.cpu._pack_weights``)
    and MetaSchedule's ``RewriteLayout`` on the arguments
    :func:`tvm_shuffle.passes.mark_layout_free_weights` marked.
    ``SplitLayoutRewritePreproc`` makes that block a function of its own,
    and :func:`_fold_weight_packing` replaces each call of it on a constant
    with the rewritten constant. (``FoldConstant`` would do the same by
    compiling every packing function with LLVM: 1.5-2.5 s more per build of
    ShuffleNetV2, and it leaves the padding of a partial tile to the heap.)
    """
    return [relax.transform.SplitLayoutRewritePreproc(),
            tvm.transform.module_pass(lambda mod, _ctx: _fold_weight_packing(mod), opt_level=0,
                                      name="FoldWeightPacking"),
            relax.transform.DeadCodeElimination()]


def _fold_weight_packing(mod: "tvm.IRModule") -> "tvm.IRModule":
    """Calls of split-out weight packings on constants, replaced by the packed constants (numpy, zero padding)."""
    packings = {gv.name_hint: func for gv, func in mod.functions.items()
                if gv.name_hint.endswith(WEIGHT_PACKING_SUFFIX) and isinstance(func, tvm.tirx.PrimFunc)}
    if not packings:
        return mod
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def fold(call, _builder):
        if not (call.op.same_as(call_tir) and call.args[0].name_hint in packings
                and isinstance(call.args[1], relax.Tuple)
                and all(isinstance(arg, tvm_compat.Constant) for arg in call.args[1].fields)):
            return call
        packed = run_copies(packings[call.args[0].name_hint], [arg.value.numpy() for arg in call.args[1].fields])
        if packed is None:
            return call
        constants = [relax.const(array) for array in packed]
        return relax.Tuple(constants) if isinstance(call.ty, tvm.ir.TupleType) else constants[0]

    return rewrite_calls(mod, fold)


def run_copies(func: "tvm.tirx.PrimFunc", inputs: list) -> list | None:
    """A kernel of copy blocks (``out[g(v)] = in[f(v)]``, layout rewrites) evaluated in numpy, or None.

    ``func`` takes its inputs, then its outputs (how ``SplitLayoutRewritePreproc``
    writes it). What no block writes (the padding of a partial tile) is zero;
    a padding block (``if_then_else(in range, in[f(v)], constant)``) is a copy too.
    None when the kernel is anything else; the build then keeps the call.
    """
    import numpy as np

    params = list(func.params)
    sources, targets_ = params[:len(inputs)], params[len(inputs):]
    outputs = [np.zeros([int(d) for d in buffer.shape], str(buffer.dtype)) for buffer in targets_]
    sch = Schedule(func)
    for block in (sch.get(b) for b in child_blocks(sch)):
        store = block.body
        load, padding = _padded_load(store.value) if isinstance(store, tir.BufferStore) else (None, None)
        if not (isinstance(load, tvm_compat.TensorLoad) and all(int(iv.dom.min) == 0 for iv in block.iter_vars)):
            return None
        source = _position(sources, load.source)
        target = _position(targets_, store.buffer)
        if source is None or target is None:
            return None
        domain = tuple(int(iv.dom.extent) for iv in block.iter_vars)
        grid = dict(zip((iv.var for iv in block.iter_vars), np.indices(domain, sparse=True)))
        try:
            read = tuple(np.broadcast_to(_index(i, grid), domain) for i in load.indices)
            write = tuple(np.broadcast_to(_index(i, grid), domain) for i in store.indices)
            if padding is not None:  # read in range everywhere; only where the condition holds is the read used
                read = tuple(np.clip(index, 0, extent - 1) for index, extent in zip(read, inputs[source].shape))
            values = inputs[source][read]
            if padding is not None:
                values = np.where(np.broadcast_to(_index(padding[0], grid), domain), values, padding[1])
            outputs[target][write] = values
        except (KeyError, IndexError, TypeError):  # an index we cannot evaluate, or one out of bounds
            return None
    return outputs


def _position(buffers: list, buffer) -> int | None:
    return next((i for i, candidate in enumerate(buffers) if candidate.same_as(buffer)), None)


def _padded_load(value) -> tuple:
    """``(load, None)``, or ``(load, (condition, constant))`` for ``if_then_else(condition, load, constant)``."""
    if isinstance(value, tvm.ir.expr.Call) and value.op.name.endswith("if_then_else") \
            and isinstance(value.args[2], (tir.IntImm, tir.FloatImm)):
        return value.args[1], (value.args[0], value.args[2].value)
    return value, None


_INDEX_OPS = {tir.Add: operator.add, tir.Sub: operator.sub, tir.Mul: operator.mul,
              tir.FloorDiv: operator.floordiv, tir.FloorMod: operator.mod, tir.Min: np.minimum,
              tir.LT: operator.lt, tir.LE: operator.le, tir.GT: operator.gt, tir.GE: operator.ge,
              tir.And: np.logical_and}


def _index(expr, grid: dict):
    """An integer TIR index expression evaluated on numpy index grids (KeyError: an unknown variable)."""
    if isinstance(expr, tir.IntImm):
        return int(expr.value)
    if isinstance(expr, tir.Var):
        return grid[expr]
    op = _INDEX_OPS.get(type(expr))
    if op is None:
        raise TypeError(f"not an index expression: {type(expr).__name__}")
    return op(_index(expr.a, grid), _index(expr.b, grid))


def build(mod: "tvm.IRModule", spec: TargetSpec, *, database=None) -> "relax.Executable":
    """Compile an optimized Relax module; ``database`` applies tuned schedules."""
    target = spec.tvm_target()
    if spec.family == "cuda":
        from tvm_shuffle import cuda_codegen

        cuda_codegen.enable_device_code()  # without it a GPU-less machine exports CUDA source, not kernels
    backend = tvm_compat.backend_pipeline(target)
    with contextlib.ExitStack() as stack:
        stack.enter_context(target)  # MetaScheduleApplyDatabase reads the target when it is created
        stack.enter_context(tvm.transform.PassContext(opt_level=3, config=dict(spec.pass_config)))
        if database is not None:
            stack.enter_context(database)
        pipeline = tvm.transform.Sequential([
            *tir_passes(spec),
            *schedule_passes(spec, database=database),
            *weight_packing_passes(),
            *backend.dataflow_lower_passes(target),
            *backend.finalize_passes(target),
        ])
        return tvm.compile(mod, target=target, relax_pipeline=pipeline)


def export(executable, spec: TargetSpec, out_dir: str | os.PathLike) -> Path:
    """Write the library for the spec's architecture (cross-compiling when needed)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output directory {out_dir}: {err.strerror}") from None
    path = out_dir / LIBRARY
    compiler = targets.require_cross_compiler(spec)
    if compiler:
        executable.export_library(str(path), fcompile=cc.cross_compiler(compiler))
    else:
        executable.export_library(str(path))
    return path


def output_signature(mod: "tvm.IRModule") -> list[dict[str, Any]]:
    """Name, shape and dtype of each value ``main`` returns (a tuple is flattened)."""
    ret = mod["main"].ret_ty
    fields = ret.fields if isinstance(ret, tvm.ir.TupleType) else [ret]
    return [{"name": f"output{i}", "shape": [int(d) for d in f.shape], "dtype": str(f.dtype)}
            for i, f in enumerate(fields)]


def manifest(imported: Imported, spec: TargetSpec, mod: "tvm.IRModule", *, shuffle: str,
             build_seconds: float, database_digest: str | None = None, precision: dict[str, Any]) -> dict[str, Any]:
    """``precision``: its name, its mode on ``spec`` and, when calibrated, the calibration."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "model": imported.name,
        "source": imported.source,
        "library": LIBRARY,
        "inputs": [{"name": imported.input_name, "shape": list(imported.input_shape),
                    "dtype": imported.input_dtype}],
        "outputs": output_signature(mod),
        "target": {"name": spec.name, "family": spec.family, "tvm": spec.target, "host": spec.host,
                   "arch": spec.runtime_arch},
        "shuffle": shuffle,
        "precision": precision,
        "tuned": database_digest is not None,
        "tuning_database_digest": database_digest,
        "tvm_version": TVM_VERSION,
        "built_on": platform.node(),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(build_seconds, 3),
    }


@dataclasses.dataclass
class Built:
    """A compiled model in memory: the executable, the optimized Relax module it came from, and its manifest."""

    executable: object  # relax.Executable
    mod: object  # the optimized Relax module (before lowering)
    spec: TargetSpec
    manifest: dict[str, Any]


def compile_imported(imported: Imported, spec: TargetSpec, *, shuffle: str = "fused", database=None,
                     database_digest: str | None = None, verbose: bool = False, precision: str = "fp32",
                     calibration=None) -> Built:
    """Optimize (:func:`tvm_shuffle.passes.optimize`) and build; ``database`` applies tuned schedules.

    ``precision`` (:mod:`tvm_shuffle.precisions`) is recorded in the manifest
    with its mode on this target: ``native``, or the fallback's mode
    (``storage-only``, ``integer``) where the target has no instructions for
    it (said on stderr). ``precision="int8"`` calibrates on ``calibration``
    (a :class:`tvm_shuffle.quantize.Calibration`; None: the synthetic set,
    with a warning), which the manifest records. A quantized (QDQ) model
    builds int8 with its own scales and zero points (:func:`model_quantization`).
    """
    from tvm_shuffle import precisions, qdq, quantize

    start = time.perf_counter()
    if qdq.carries_quantization(imported.mod):
        precision, calibration = model_quantization(imported, precision, calibration)
    chosen = precisions.get(precision)
    chosen.check_family(spec)
    mode = chosen.mode(spec)
    if mode != "native":
        features = chosen.native.get(spec.family, ())
        print(f"note: {spec.name} has no {precision} instructions"
              + (f" ({', '.join(features)} on {spec.family})" if features else "") + f": {chosen.fallback}",
              file=sys.stderr)
    if chosen.calibrated and calibration is None:
        calibration = quantize.load_calibration(None, imported.input_shape)
    report = schedules.FusionReport()
    mod = passes.optimize(imported.mod, shuffle=shuffle, report=report, precision=precision,
                          calibration=calibration if chosen.calibrated else None,
                          tensor_cores=spec.family == "cuda")
    if verbose:
        print(passes.describe_change(imported.mod, mod), file=sys.stderr)
        print(report.summary(), file=sys.stderr)
        if chosen.calibrated:
            print(calibration.summary(), file=sys.stderr)
    executable = build(mod, spec, database=database)
    key = "quantization" if isinstance(calibration, qdq.ModelQuantization) else "calibration"
    precision_info = {"name": precision, "mode": mode, **({key: calibration.describe()} if chosen.calibrated else {})}
    info = manifest(imported, spec, mod, shuffle=shuffle, build_seconds=time.perf_counter() - start,
                    database_digest=database_digest, precision=precision_info)
    return Built(executable, mod, spec, info)


def model_quantization(imported: Imported, precision: str, calibration) -> tuple[str, Any]:
    """``("int8", ModelQuantization)`` for a quantized (QDQ) model: the file says how it computes.

    The default precision (fp32) and int8 both build it in int8 from the
    model's own scales and zero points, and say so; another precision, or
    a calibration set on top of the model's own ranges, is a ``UserError``.
    """
    from tvm_shuffle import qdq

    if isinstance(calibration, qdq.ModelQuantization):
        return "int8", calibration
    if calibration is not None:
        raise UserError(f"{imported.name} is already quantized (QDQ): it carries its own scales and zero points, "
                        "so it takes no calibration set (drop --calibration)")
    if precision not in ("fp32", "int8"):
        raise UserError(f"{imported.name} is quantized (QDQ): it builds in int8 from its own scales and zero points, "
                        f"not in {precision}")
    print(f"note: {imported.name} is quantized (QDQ): building int8 with its own scales and zero points"
          + (" instead of the default fp32" if precision == "fp32" else " (no calibration)"), file=sys.stderr)
    return "int8", qdq.ModelQuantization(requested=precision)


def write(built: Built, out_dir: str | os.PathLike) -> Path:
    """Export ``model.so`` (cross-compiled when needed) and ``manifest.json`` into ``out_dir``; returns it."""
    library = export(built.executable, built.spec, out_dir)
    (library.parent / MANIFEST).write_text(json.dumps(built.manifest, indent=2) + "\n", encoding="utf-8")
    return library.parent


__all__ = ["Built", "tir_passes", "lower", "schedule_passes", "weight_packing_passes", "build", "export", "manifest",
           "compile_imported", "model_quantization", "write", "output_signature"]
