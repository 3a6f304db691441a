"""The Python API: compile, tune and load a model; the CLIs, the report and the benchmarks call these.

::

    import tvm_shuffle as ts

    compiled = ts.compile(module, example_inputs=(x,))   # or a zoo name, a .onnx/.pt2 path, a ModelProto
    (logits,) = compiled(x.numpy())                     # numpy in, a list of numpy arrays out
    compiled.save("out/m")                              # the bundle: model.so, manifest.json, lib/, include/, example/
    ts.load("out/m")(x.numpy())                         # the same, from the bundle, with only the runtime

    tuned = ts.tune("shufflenet_v2_x1_0", trials=200)    # records in ./work, resumed on the next call

A model source is any of: a zoo name, a path to a ``.onnx`` or ``.pt2``
file, a ``torch.nn.Module`` (with ``example_inputs`` or ``input_shape``), a
``torch.export.ExportedProgram`` or an ``onnx.ModelProto``
(:func:`tvm_shuffle.frontends.import_model`). A target is a preset name
(:func:`tvm_shuffle.targets.names`) or a :class:`~tvm_shuffle.targets.TargetSpec`.
Every mistake a caller can make raises :class:`~tvm_shuffle.errors.UserError`
with one sentence.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import statistics
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tvm_shuffle import runtime, targets
from tvm_shuffle.defaults import SHUFFLE_MODES, WORK_DIR
from tvm_shuffle.errors import Interrupted, MissingRecords, UserError
from tvm_shuffle.frontends import Imported, import_model
from tvm_shuffle.targets import TargetSpec



@dataclasses.dataclass
class Tuning:
    """What :func:`tune` did: the run's outcome, where it measured, the in-model check, the other builds.

    ``pick`` has every kernel MetaSchedule picked (before the in-model check
    let some keep their default schedule); ``untuned`` has none.
    """

    outcome: Any  # tvm_shuffle.tuning.session.Outcome
    device: Any  # tvm_shuffle.tuning.runner.Device
    kept_default: list | None  # in-model verdicts; None when the check could not run here
    pick: "Compiled"
    untuned: "Compiled"


class Compiled:
    """A model built for a target, in memory.

    Call it on a numpy array when the target runs on this machine's CPU (a
    list of numpy arrays comes back); :meth:`save` writes the bundle an app
    ships; :meth:`profile` times every kernel in the model. ``tuning`` is
    set when it came from :func:`tune`; ``records`` (the database and its
    trials) when it was built from a work directory's records.
    """

    def __init__(self, built, imported: Imported, *, tuning: Tuning | None = None, records: dict | None = None):
        self._built = built
        self._imported = imported
        self.tuning = tuning
        self.records = records
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._models: dict[int | None, runtime.Model] = {}

    @property
    def manifest(self) -> dict[str, Any]:
        """Input and output signature, target and provenance (what ``manifest.json`` holds, less the bundle's files)."""
        return dict(self._built.manifest)

    @property
    def spec(self) -> TargetSpec:
        return self._built.spec

    @property
    def name(self) -> str:
        return self._imported.name

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self._imported.input_shape)

    @property
    def input_dtype(self) -> str:
        return self._imported.input_dtype

    @property
    def runs_here(self) -> bool:
        """Whether this machine's CPU can run the library (the target's architecture, not a GPU)."""
        from tvm_shuffle import host

        return self.spec.family != "cuda" and self.spec.runtime_arch == host.arch()

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights (and biases and quantization scales) the library holds, in their stored dtypes."""
        from tvm_shuffle.relax_rewrite import constant_bytes

        return constant_bytes(self._built.mod)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the bundle: ``model.so``, ``manifest.json``, the target's runtime in ``lib/``, headers, examples."""
        from tvm_shuffle import build, bundle

        out = build.write(self._built, directory)
        bundle.make_bundle(out, self.spec)
        return out

    def library(self) -> Path:
        """``model.so`` exported once into a private temporary directory (removed with this object)."""
        if self._scratch is None:
            from tvm_shuffle import build

            self._scratch = tempfile.TemporaryDirectory(prefix="tvm_shuffle_")
            weakref.finalize(self, self._scratch.cleanup)
            build.write(self._built, self._scratch.name)
        return Path(self._scratch.name) / self._built.manifest["library"]

    def model(self, *, threads: int | None = None) -> runtime.Model:
        """The library loaded as :func:`tvm_shuffle.runtime.load` loads a bundle (``threads``: the pool size)."""
        if not self.runs_here:
            where = "a GPU" if self.spec.family == "cuda" else f"an {self.spec.runtime_arch} CPU"
            raise UserError(f"{self.name} was built for {self.spec.name}, which runs on {where}, not on this machine; "
                            "save() the bundle and run it there")
        if threads not in self._models:
            library = self.library()
            self._models[threads] = runtime.Model(library.parent, self.manifest, threads=threads)
        return self._models[threads]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.model()(x)

    def benchmark(self, x: np.ndarray | None = None, *, warmup: int = 10, repeat: int = 50) -> list[float]:
        """Seconds per call on ``x`` (default: a seeded random input), after ``warmup`` untimed calls."""
        return self.model().benchmark(self._input(x), warmup=warmup, repeat=repeat)

    def profile(self, x: np.ndarray | None = None, *, runs: int | None = None) -> list:
        """Every kernel's time per inference in the model, with FLOPs and bytes (:class:`tvm_shuffle.profile.KernelRow`)."""
        from tvm_shuffle import build, profile

        self.model()  # the same check: the library must run here
        lowered = build.lower(self._built.mod, self.spec)
        return profile.profile(self.library(), lowered, self._input(x), runs=runs or profile.DEFAULT_RUNS)

    def random_input(self, seed: int = 0) -> np.ndarray:
        """A seeded standard-normal input of the model's shape and dtype (64-byte aligned, as kernels want)."""
        return runtime.random_input(self.input_shape, self.input_dtype, seed)

    def _input(self, x: np.ndarray | None) -> np.ndarray:
        return self.random_input() if x is None else x

    def __repr__(self) -> str:
        tuned = "tuned" if self._built.manifest.get("tuned") else "untuned"
        return (f"<Compiled {self.name} {'x'.join(map(str, self.input_shape))} for {self.spec.name}, {tuned}, "
                f"shuffle={self._built.manifest['shuffle']}>")


def resolve_target(target: str | TargetSpec) -> TargetSpec:
    """A preset name (or alias) or a spec, resolved for this machine; its cross-compiler must be installed."""
    if isinstance(target, TargetSpec):
        spec = targets.resolve(target)
    elif isinstance(target, str):
        spec = targets.get(target)
    else:
        raise UserError(f"target must be a preset name ({', '.join(targets.names())}) or a TargetSpec, "
                        f"not {type(target).__name__} {target!r}")
    targets.require_cross_compiler(spec)
    return spec


def _check_precision(precision: str, spec) -> None:
    """A known precision that ``spec``'s family builds (one UserError otherwise, before anything slow)."""
    from tvm_shuffle import precisions

    precisions.get(precision).check_family(spec)


def _check_shuffle(shuffle: str) -> None:
    if shuffle not in SHUFFLE_MODES:
        raise UserError(f"shuffle must be one of {', '.join(SHUFFLE_MODES)}, not {shuffle!r}")


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _import(model, *, input_shape, example_inputs, weights, quiet: bool) -> Imported:
    start = time.perf_counter()
    imported = import_model(model, input_shape=input_shape, example_inputs=example_inputs, weights=weights)
    if not isinstance(model, Imported):
        _log(quiet, f"imported {imported.name} ({imported.source}) input {imported.input_name} "
                    f"{'x'.join(map(str, imported.input_shape))} in {time.perf_counter() - start:.1f} s")
    return imported


def records_dir(imported: Imported, spec: TargetSpec, work_dir: str | os.PathLike, shuffle: str,
                precision: str = "fp32") -> Path:
    """Where :func:`tune` keeps this model's records for this target (a precision other than fp32 has its own)."""
    from tvm_shuffle.tuning import database, session

    return database.database_dir(work_dir, spec, imported.name, imported.input_shape,
                                 session.records_variant(shuffle, precision))


def compile(model, target: str | TargetSpec = "x86", *, input_shape: Sequence[int] | None = None,
            example_inputs=None, shuffle: str = "fused", quiet: bool = False, weights: str | None = None,
            work_dir: str | os.PathLike | None = None, verbose: bool = False, precision: str = "fp32",
            calibration=None, calibrator: str = "minmax") -> Compiled:
    """Import, optimize and build ``model`` for ``target`` with the default schedules (no measuring).

    ``work_dir``: build with the tuned schedules that :func:`tune` recorded
    there instead (:class:`~tvm_shuffle.errors.MissingRecords` when there are
    none). ``shuffle="stock"`` leaves channel shuffles as separate kernels.
    ``precision="bf16"`` computes the 1x1 convolutions with bf16 weights and
    inputs and fp32 sums (:data:`tvm_shuffle.precisions.PRECISIONS`); inputs
    and outputs stay fp32. ``verbose`` prints what the graph passes changed.
    ``precision="int8"`` quantizes the 1x1 convolutions statically
    (:mod:`tvm_shuffle.quantize`), calibrated on ``calibration`` (an N x C x
    H x W array, a ``.npy`` file or a directory of images; None: a synthetic
    set, with a warning) with ``calibrator`` ("minmax" or "percentile").
    A quantized model (QDQ, or QLinearConv / QLinearMatMul / ConvInteger:
    :mod:`tvm_shuffle.qdq`) builds int8 from its own scales and zero points
    with the default precision or ``"int8"``, and takes no ``calibration``.
    """
    from tvm_shuffle import build, qdq

    spec = resolve_target(target)
    _check_shuffle(shuffle)
    _check_precision(precision, spec)
    _check_calibration(precision, calibration, calibrator)
    imported = _import(model, input_shape=input_shape, example_inputs=example_inputs, weights=weights, quiet=quiet)
    start = time.perf_counter()
    loaded = _load_calibration(imported, precision, calibration, calibrator)
    if work_dir is not None and isinstance(loaded, qdq.ModelQuantization):
        raise UserError(f"{imported.name} is quantized (QDQ): tuned builds of it are not supported yet; "
                        "compile it without work_dir")
    if work_dir is None:
        compiled = Compiled(build.compile_imported(imported, spec, shuffle=shuffle, verbose=verbose,
                                                   precision=precision, calibration=loaded), imported)
    else:
        compiled = _compile_from_records(imported, spec, Path(work_dir), shuffle, precision, loaded)
    _log(quiet, f"built {imported.name} for {spec.name} in {time.perf_counter() - start:.1f} s")
    return compiled


def _check_calibration(precision: str, calibration, calibrator: str) -> None:
    from tvm_shuffle import precisions, quantize

    quantize.check_calibrator(calibrator)
    if calibration is not None and not precisions.get(precision).calibrated:
        raise UserError(f"a calibration set applies to precision='int8' (--quantize int8), not {precision!r}")


def _load_calibration(imported: Imported, precision: str, calibration, calibrator: str):
    """The :class:`tvm_shuffle.quantize.Calibration` a calibrated precision builds with; None for the others.

    A quantized (QDQ) model carries its own quantization instead, whatever
    the precision asked (:func:`tvm_shuffle.build.model_quantization`).
    """
    from tvm_shuffle import build, precisions, qdq, quantize

    if qdq.carries_quantization(imported.mod):
        return build.model_quantization(imported, precision, calibration)[1]
    if not precisions.get(precision).calibrated:
        return None
    return quantize.load_calibration(calibration, imported.input_shape, calibrator=calibrator)


def _compile_from_records(imported: Imported, spec: TargetSpec, work_dir: Path, shuffle: str,
                          precision: str = "fp32", calibration=None) -> Compiled:
    from tvm_shuffle.tuning import database, in_model

    directory = records_dir(imported, spec, work_dir, shuffle, precision)
    records = directory / database.RECORDS
    if not records.is_file() or not records.read_bytes().strip():
        raise MissingRecords(f"no tuning database in {directory} (records of {imported.name} on {spec.name}"
                             + ("" if precision == "fp32" else f" in {precision}") + ")")
    built = in_model.build_from_records(imported, spec, directory, shuffle=shuffle, precision=precision,
                                        calibration=calibration)
    return Compiled(built, imported, records={"database": str(directory), "trials": database.own_trials(directory)})


def model_flags(model, input_shape: Sequence[int] | None = None) -> str:
    """The CLI flags that name ``model``, for hints that show a command (``--model NAME`` when it has none)."""
    flags = []
    if isinstance(model, (str, os.PathLike)):
        suffix = Path(model).suffix
        flag = {".onnx": "--onnx", ".pt2": "--torch"}.get(suffix, "--model")
        flags.append(f"{flag} {shlex.quote(str(model))}")
    else:
        flags.append("--model NAME")
    if input_shape is not None:
        flags.append(f"--input-shape {','.join(map(str, input_shape))}")
    return " ".join(flags)


def tune(model, target: str | TargetSpec = "x86", *, trials: int | None = None,
         work_dir: str | os.PathLike = WORK_DIR, rpc_tracker: str | None = None, rpc_key: str | None = None,
         rpc_timeout: float | None = None, progress: bool = True, input_shape: Sequence[int] | None = None,
         example_inputs=None, shuffle: str = "fused", weights: str | None = None, wait: bool = True,
         precision: str = "fp32", calibration=None, calibrator: str = "minmax") -> Compiled:
    """Tune ``model`` for ``target`` with MetaSchedule, then build it with the tuned kernels.

    ``trials`` counts every candidate measured for this model and target,
    earlier runs included (default: the target's). Records are kept under
    ``work_dir`` after every batch; calling again resumes. Candidates run on
    this machine, or on a board or GPU behind TVM's RPC tracker
    (``rpc_tracker="HOST:PORT"``, ``rpc_key``). ``progress=False`` prints
    log lines instead of a progress bar. ``wait=False`` fails at once when
    another tune holds the same records. Ctrl-C raises
    :class:`~tvm_shuffle.errors.Interrupted` with every record kept.
    ``precision="bf16"`` or ``"int8"`` tunes the kernels of that build (its
    records apart from fp32's, :func:`records_dir`); ``compile(work_dir=...,
    precision=...)`` builds from them. int8 calibrates on ``calibration``
    with ``calibrator`` as :func:`compile` does; its records apply to builds
    calibrated on the same set.
    """
    from tvm_shuffle.tuning import database, in_model, rpc, runner, session

    if trials is not None and trials < 0:
        raise UserError(f"trials must be >= 0, not {trials}")
    spec = resolve_target(target)
    _check_shuffle(shuffle)
    _check_precision(precision, spec)
    _check_calibration(precision, calibration, calibrator)
    if rpc_key and not rpc_tracker:
        raise UserError("rpc_key needs rpc_tracker (HOST:PORT)")
    if not rpc_tracker and not runner.runs_here(spec):
        raise runner.no_device_error(spec, model_flags(model, input_shape))
    database.prepare_dir(Path(work_dir))
    timeout = rpc.DEFAULT_TIMEOUT_S if rpc_timeout is None else rpc_timeout
    device = (runner.remote(spec, rpc.parse_tracker(rpc_tracker, rpc_key, timeout)) if rpc_tracker
              else runner.local(spec))
    imported = _import(model, input_shape=input_shape, example_inputs=example_inputs, weights=weights,
                       quiet=False)
    _refuse_quantized_model(imported)
    loaded = _load_calibration(imported, precision, calibration, calibrator)
    outcome = session.tune(imported, spec, device=device, work_dir=work_dir, trials=trials, shuffle=shuffle,
                           quiet=not progress, wait=wait, precision=precision, calibration=loaded)
    if outcome.interrupted:
        raise Interrupted(f"interrupted: every measured record is kept in {outcome.directory}; "
                          "run the same command again to resume")
    _log(False, "building the tuned library, then checking its kernels in the model")
    tuned, pick, untuned, kept_default = in_model.build_checked(imported, spec, outcome, shuffle=shuffle,
                                                                device=device, precision=precision,
                                                                calibration=loaded)
    tuning = Tuning(outcome, device, kept_default, Compiled(pick, imported), Compiled(untuned, imported))
    return Compiled(tuned, imported, tuning=tuning)


def _refuse_quantized_model(imported: Imported) -> None:
    from tvm_shuffle import qdq

    if qdq.carries_quantization(imported.mod):
        raise UserError(f"{imported.name} is quantized (QDQ): tuning it is not supported yet; build it with "
                        "tvm_shuffle.compile (int8 from its own scales and zero points)")


def end_to_end_ms(compiled: Compiled, *, x: np.ndarray | None = None, device=None) -> float | None:
    """Median latency in ms: here with the runtime, on a remote device over RPC, or None (a local GPU)."""
    if device is not None and device.remote:
        from tvm_shuffle.tuning import runner

        _, seconds = runner.run_remote(device.tracker, compiled.library(),
                                       compiled.random_input() if x is None else x,
                                       gpu=compiled.spec.family == "cuda")
        return seconds * 1e3
    if not compiled.runs_here:
        return None
    return statistics.median(compiled.benchmark(x)) * 1e3


__all__ = ["Compiled", "Tuning", "compile", "tune", "resolve_target", "records_dir", "model_flags",
           "end_to_end_ms"]
