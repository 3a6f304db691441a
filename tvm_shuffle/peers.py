"""The engines a report compares, as a registry of plain data.

Each :class:`Engine` says which Python modules it needs (and what to
``pip install`` when they are missing), which distributions give its
version, and how to turn a :class:`Workload` (the model as a PyTorch module,
an ONNX file and a Relax module) into a :class:`Session` that maps one numpy
input to the model's first output. Every engine gets the same thread count;
every engine computes in fp32 (OpenVINO and ncnn would otherwise pick bf16 or
fp16 on some CPUs, which changes both speed and numerics), except the rows
that say otherwise: ``tvm_shuffle-bf16`` and ``openvino-default`` (what a user
gets from OpenVINO without settings), whose numerics the report gives against
fp32 PyTorch.

An engine that cannot run a workload raises :class:`Unavailable` with the
reason, which the report shows in that engine's row; anything else an engine
raises is shown as a failure. Neither stops the report.

Adding an engine means writing its ``prepare`` function and adding an entry
to :data:`ENGINES`; the CLI's ``--peers`` choices come from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tvm_shuffle import api, timing
from tvm_shuffle.errors import MissingRecords
from tvm_shuffle.frontends import Imported
from tvm_shuffle.targets import TargetSpec

ONNX_OPSET = 18


class Unavailable(Exception):
    """This engine cannot run this workload here; the message says why."""


@dataclasses.dataclass
class Session:
    """A prepared engine: ``run`` maps a numpy input to the first output as numpy.

    ``time`` replaces wall-clock timing of ``run`` where a call's round trip
    is not the engine's latency (a device over RPC times itself). ``details``
    go into the report (tuning database, trials, thread count, device).
    """

    run: Callable[[np.ndarray], np.ndarray]
    time: Callable[[np.ndarray, int, int], list[float]] | None = None
    close: Callable[[], None] = lambda: None
    compiled: api.Compiled | None = None  # a tvm_shuffle engine's build, for the per-kernel profile
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    weight_bytes: int | None = None  # the weights as this engine stores them (None: unknown)

    def times(self, x: np.ndarray, *, warmup: int, repeat: int) -> list[float]:
        """Seconds per call for ``repeat`` calls after ``warmup`` untimed ones."""
        if self.time is not None:
            return self.time(x, warmup, repeat)
        return timing.measure(lambda: self.run(x), warmup=warmup, repeat=repeat)


@dataclasses.dataclass
class Workload:
    """One model in every form the engines read, plus the measurement setup.

    ``torch_module`` is None for ONNX input; the ONNX file is exported from
    the module on first use. ``tracker`` is set for a remote device: only
    engines with ``remote=True`` run there.
    """

    name: str
    imported: Imported
    spec: TargetSpec
    threads: int
    scratch: Path
    work_dir: Path
    shuffle: str = "fused"
    precision: str = "fp32"  # of the tvm_shuffle-tuned and -untuned rows
    torch_module: Any = None
    onnx_file: Path | None = None
    tracker: Any = None  # tvm_shuffle.tuning.rpc.Tracker
    emulated: bool = False
    device_threads: int | None = None  # threads on a remote device; None: its own default
    tune_command: str = ""
    calibration: Any = None  # the int8 rows' calibration set (array, .npy, image directory); None: synthetic
    calibrator: str = "minmax"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.imported.input_shape)

    @property
    def input_dtype(self) -> str:
        return self.imported.input_dtype

    def torch(self):
        if self.torch_module is None:
            raise Unavailable("needs a PyTorch module; this model came as an ONNX file")
        return self.torch_module

    def onnx(self) -> Path:
        """The user's ONNX file, or the PyTorch module exported once (torch.onnx, dynamo exporter)."""
        if self.onnx_file is None:
            import torch

            path = self.scratch / f"{self.name}.onnx"
            example = torch.zeros(self.input_shape, dtype=getattr(torch, self.input_dtype))
            with warnings.catch_warnings(), _quiet_fds():
                warnings.simplefilter("ignore")
                try:
                    torch.onnx.export(self.torch(), (example,), str(path), dynamo=True, opset_version=ONNX_OPSET,
                                      external_data=False, verbose=False)
                except Unavailable:
                    raise
                except Exception as err:
                    raise Unavailable(f"torch.onnx.export failed: {first_line(err)}") from None
            self.onnx_file = path
        return self.onnx_file


@dataclasses.dataclass(frozen=True)
class Engine:
    """One engine a report can measure, as data."""

    name: str  # CLI name (--peers) and row key
    label: str  # shown in tables and charts
    modules: tuple[str, ...]  # must be importable
    install: str  # what to pip install when they are not
    distributions: tuple[str, ...]  # whose versions the report records
    prepare: Callable[[Workload], Session]
    remote: bool = False  # can run on a device behind the RPC tracker
    note: str = ""  # how it is configured, for the report's footnotes

    def missing(self) -> list[str]:
        return [m for m in self.modules if importlib.util.find_spec(m) is None]

    def version(self) -> str:
        return ", ".join(f"{d} {_dist_version(d)}" for d in self.distributions)


def _dist_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, for a table cell."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]


@contextlib.contextmanager
def _quiet_fds():
    """Silence what native code and exporters print to file descriptors 1 and 2 (torch.onnx, inductor)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)


# ---------------------------------------------------------------------------
# tvm_shuffle


def _tvm_tuned(w: Workload) -> Session:
    try:
        compiled = api.compile(w.imported, w.spec, shuffle=w.shuffle, work_dir=w.work_dir, quiet=True,
                               precision=w.precision)
    except MissingRecords as err:
        raise Unavailable(f"{err}; create them with: {w.tune_command}") from None
    return _tvm_session(w, compiled, {**compiled.records, "precision": compiled.manifest["precision"]})


def _tvm_untuned(w: Workload) -> Session:
    compiled = api.compile(w.imported, w.spec, shuffle=w.shuffle, quiet=True, precision=w.precision)
    return _tvm_session(w, compiled, {"precision": compiled.manifest["precision"]})


def _tvm_bf16(w: Workload) -> Session:
    """Default schedules, 1x1 convolutions in bf16 (``precision="bf16"``; storage only without AVX512_BF16)."""
    compiled = api.compile(w.imported, w.spec, shuffle=w.shuffle, quiet=True, precision="bf16")
    return _tvm_session(w, compiled, {"precision": compiled.manifest["precision"]})


def _tvm_session(w: Workload, compiled: api.Compiled, details: dict) -> Session:
    if w.tracker is not None:
        return _rpc_session(w, compiled, details)
    if w.spec.family == "cuda":
        raise Unavailable("CUDA libraries are measured on a GPU machine over RPC (--rpc-tracker, --rpc-key)")
    model = compiled.model(threads=w.threads)
    details["tvm_threads"] = model.threads
    return Session(run=lambda x: model(x)[0], compiled=compiled, details=details,
                   weight_bytes=compiled.weight_bytes)


def _rpc_session(w: Workload, compiled: api.Compiled, details: dict) -> Session:
    """The library on the remote device (:class:`tvm_shuffle.tuning.remote.RemoteModel`)."""
    from tvm_shuffle.tuning.remote import RemoteModel

    library = compiled.library()
    model = RemoteModel(w.tracker, library, gpu=w.spec.family == "cuda",
                        name=f"{w.imported.name}-{library.parent.name}.so")
    details["tvm_threads"] = model.set_threads(w.device_threads)
    where = f"{'emulated ' if w.emulated else ''}device {w.tracker.key!r} via {w.tracker.address}"
    return Session(run=lambda x: model(x)[0], time=lambda x, warmup, repeat: model.times(x, warmup=warmup,
                                                                                         repeat=repeat),
                   close=model.close, compiled=compiled, details={**details, "device": where},
                   weight_bytes=compiled.weight_bytes)


# ---------------------------------------------------------------------------
# PyTorch


def _with_torch_threads(threads: int) -> Callable[[], None]:
    """Set PyTorch's intra-op threads; returns the function that restores them."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    return lambda: torch.set_num_threads(saved)


def _torch_session(module, threads: int) -> Session:
    import torch

    restore = _with_torch_threads(threads)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(x))
        return (out[0] if isinstance(out, (tuple, list)) else out).numpy()

    weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    return Session(run=run, close=restore, weight_bytes=weight_bytes)


def onnx_weight_bytes(path: Path) -> int:
    """Bytes of an ONNX model's initializers (its weights, and a QDQ model's scales and zero points)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # sizes come from shapes and types, not the data
    return sum(math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
               for t in model.graph.initializer)


def _torch_eager(w: Workload) -> Session:
    return _torch_session(w.torch().eval(), w.threads)


def _torch_compile(w: Workload) -> Session:
    import torch

    module = w.torch().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecations, raised as dynamo loads and traces
        compiled = torch.compile(module)
        session = _torch_session(compiled, w.threads)  # before the first call: inductor reads the threads
        try:
            with _quiet_fds():
                session.run(np.zeros(w.input_shape, dtype=w.input_dtype))  # compiles (tens of seconds)
        except Exception as err:
            session.close()
            raise Unavailable(f"torch.compile failed: {first_line(err)}") from None
    return session


def _tvm_int8(w: Workload) -> Session:
    """Default schedules, 1x1 convolutions int8 (``precision="int8"``, vpdpbusd with AVX-512 VNNI)."""
    compiled = api.compile(w.imported, w.spec, shuffle=w.shuffle, quiet=True, precision="int8",
                           calibration=_calibration_data(w), calibrator=w.calibrator)
    return _tvm_session(w, compiled, {"precision": compiled.manifest["precision"]})


def _calibration_data(w: Workload) -> np.ndarray:
    """The int8 rows' calibration set as one array (the synthetic set when none is given), loaded once."""
    from tvm_shuffle import quantize

    if not isinstance(w.calibration, np.ndarray):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if w.calibration is None else "default")
            w.calibration = quantize.load_calibration(w.calibration, w.input_shape, calibrator=w.calibrator).data
    return w.calibration


def ort_quantize_static(onnx_file: Path, data: np.ndarray, out: Path, *, calibrator: str = "minmax") -> Path:
    """``onnx_file`` quantized by ``onnxruntime.quantization.quantize_static`` on ``data``, written to ``out``.

    QDQ format, per-channel s8 weights, u8 activations (QUInt8 / QInt8), the
    model first converted to opset 13 (per-channel QDQ needs it); calibration
    MinMax, or Percentile (99.99) for ``calibrator="percentile"``.
    """
    import onnx
    from onnx import version_converter
    from onnxruntime import quantization as q

    model = onnx.load(str(onnx_file))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        model = version_converter.convert_version(model, 13)
    prepared = out.with_suffix(".fp32.onnx")
    onnx.save(model, str(prepared))
    name = model.graph.input[0].name

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.images = iter(data[i:i + 1] for i in range(data.shape[0]))

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {name: image}

    method = q.CalibrationMethod.Percentile if calibrator == "percentile" else q.CalibrationMethod.MinMax
    extra = {"CalibPercentile": 99.99} if calibrator == "percentile" else {}
    q.quantize_static(str(prepared), str(out), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8, calibrate_method=method,
                      extra_options=extra)
    return out


def _qdq_onnx(w: Workload) -> Path:
    path = w.scratch / f"{w.name}.qdq.onnx"
    if not path.is_file():
        with warnings.catch_warnings(), _quiet_fds():
            warnings.simplefilter("ignore")
            try:
                ort_quantize_static(w.onnx(), _calibration_data(w), path, calibrator=w.calibrator)
            except Unavailable:
                raise
            except Exception as err:
                raise Unavailable(f"onnxruntime.quantization.quantize_static failed: {first_line(err)}") from None
    return path


# ---------------------------------------------------------------------------
# ONNX engines


def _onnxruntime(w: Workload, *, model: Path | None = None) -> Session:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = w.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(model or w.onnx()), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own types for unsupported operators
        raise Unavailable(f"ONNX Runtime cannot load the model: {first_line(err)}") from None
    name = session.get_inputs()[0].name
    return Session(run=lambda x: session.run(None, {name: x})[0], weight_bytes=onnx_weight_bytes(model or w.onnx()))


def _onnxruntime_int8(w: Workload) -> Session:
    return _onnxruntime(w, model=_qdq_onnx(w))


def _openvino_int8(w: Workload) -> Session:
    return _openvino(w, precision=None, model=_qdq_onnx(w))


def _openvino(w: Workload, *, precision: str | None = "f32", model: Path | None = None) -> Session:
    """OpenVINO's CPU plugin; ``precision=None`` leaves its inference precision to OpenVINO (bf16 on CPUs with AVX512_BF16 or AMX)."""
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": w.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    try:
        compiled = ov.Core().compile_model(str(model or w.onnx()), "CPU", config)
    except Unavailable:
        raise
    except Exception as err:
        raise Unavailable(f"OpenVINO cannot compile the model: {first_line(err)}") from None
    request = compiled.create_infer_request()
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino Type: to_string() gives "bf16", "f32"
    used = hint.to_string() if hasattr(hint, "to_string") else str(hint)
    return Session(run=lambda x: np.array(request.infer([x])[0]), details={"inference_precision": used},
                   weight_bytes=onnx_weight_bytes(model or w.onnx()))


def _openvino_default(w: Workload) -> Session:
    return _openvino(w, precision=None)


def _ncnn(w: Workload) -> Session:
    import ncnn

    if w.input_shape[0] != 1:
        raise Unavailable(f"ncnn's Python API runs one image at a time; the input batch is {w.input_shape[0]}")
    param, weights = _pnnx_convert(w)
    net = ncnn.Net()
    net.opt.num_threads = w.threads
    net.opt.use_vulkan_compute = False
    for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, flag, False)
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise Unavailable(f"ncnn cannot load {param}")

    def run(x: np.ndarray) -> np.ndarray:
        extractor = net.create_extractor()
        extractor.input("in0", ncnn.Mat(np.ascontiguousarray(x[0])))
        status, out = extractor.extract("out0")
        if status != 0:
            raise RuntimeError(f"ncnn extract failed ({status})")
        return np.array(out).reshape(1, -1)

    return Session(run=run, weight_bytes=weights.stat().st_size)


def _pnnx_convert(w: Workload) -> tuple[Path, Path]:
    """The model as ncnn ``.param``/``.bin`` via pnnx: a TorchScript trace, else the ONNX file."""
    import pnnx

    out = w.scratch / "ncnn"
    out.mkdir(exist_ok=True)
    if w.torch_module is not None:
        import torch

        source = out / f"{w.name}.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.trace(w.torch_module.eval(), torch.zeros(w.input_shape)).save(str(source))
    else:
        source = _inline_external_data(w.onnx(), out)
    stem = out / w.name
    outputs = {"pnnxparam": ".pnnx.param", "pnnxbin": ".pnnx.bin", "pnnxpy": "_pnnx.py", "pnnxonnx": ".pnnx.onnx",
               "ncnnparam": ".ncnn.param", "ncnnbin": ".ncnn.bin", "ncnnpy": "_ncnn.py"}
    shape = ",".join(map(str, w.input_shape))
    command = [pnnx.EXEC_PATH, str(source), f"inputshape=[{shape}]f32", "fp16=0", "device=cpu",
               *(f"{key}={stem}{suffix}" for key, suffix in outputs.items())]
    done = subprocess.run(command, capture_output=True, text=True, cwd=out)
    param, weights = Path(f"{stem}.ncnn.param"), Path(f"{stem}.ncnn.bin")
    if done.returncode != 0 or not param.is_file() or not weights.is_file():
        tail = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()][-1:] or ["no output"]
        raise Unavailable(f"pnnx could not convert the model (exit {done.returncode}): {tail[0][:200]}")
    return param, weights


def _inline_external_data(path: Path, out: Path) -> Path:
    """``path`` as one self-contained file: pnnx cannot read weights kept in a separate ``.data`` file."""
    import onnx

    model = onnx.load(str(path))  # reads external data next to the file
    inlined = out / f"{path.stem}.inline.onnx"
    onnx.save(model, str(inlined), save_as_external_data=False)
    return inlined


ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine("tvm_shuffle-tuned", "tvm_shuffle tuned", ("tvm",), "apache-tvm==0.27.0.post1",
           ("apache-tvm", "tvm_shuffle"), _tvm_tuned, remote=True,
           note="built from the work directory's MetaSchedule database"),
    Engine("tvm_shuffle-untuned", "tvm_shuffle untuned", ("tvm",), "apache-tvm==0.27.0.post1",
           ("apache-tvm", "tvm_shuffle"), _tvm_untuned, remote=True, note="default schedules, no tuning"),
    Engine("tvm_shuffle-bf16", "tvm_shuffle bf16", ("tvm",), "apache-tvm==0.27.0.post1",
           ("apache-tvm", "tvm_shuffle"), _tvm_bf16, remote=True,
           note="default schedules; 1x1 convolutions with bf16 weights and inputs, fp32 sums (vdpbf16ps with "
                "AVX512_BF16, else bf16 storage only); the rest fp32"),
    Engine("tvm_shuffle-int8", "tvm_shuffle int8", ("tvm",), "apache-tvm==0.27.0.post1",
           ("apache-tvm", "tvm_shuffle"), _tvm_int8, remote=True,
           note="default schedules; post-training static int8 1x1 convolutions (u8 x s8 -> s32, vpdpbusd with "
                "AVX-512 VNNI), calibrated on the report's calibration set; the rest fp32"),
    Engine("pytorch", "PyTorch eager", ("torch",), "torch==2.13.0", ("torch",), _torch_eager,
           note="inference_mode"),
    Engine("torch.compile", "torch.compile", ("torch",), "torch==2.13.0", ("torch",), _torch_compile,
           note="default mode (inductor); compile time not counted"),
    Engine("onnxruntime", "ONNX Runtime", ("onnxruntime",), "onnxruntime", ("onnxruntime",), _onnxruntime,
           note="CPU execution provider, all graph optimizations, sequential"),
    Engine("openvino", "OpenVINO", ("openvino",), "openvino", ("openvino",), _openvino,
           note="CPU plugin, LATENCY hint, one stream, f32 precision"),
    Engine("openvino-default", "OpenVINO (default precision)", ("openvino",), "openvino", ("openvino",),
           _openvino_default, note="CPU plugin, LATENCY hint, one stream, OpenVINO's own inference precision "
                                   "(bf16 where the CPU has it; the row's details say which it used)"),
    Engine("onnxruntime-int8", "ONNX Runtime int8 (QDQ)", ("onnxruntime",), "onnxruntime", ("onnxruntime",),
           _onnxruntime_int8, note="the QDQ model of onnxruntime.quantization.quantize_static (per-channel QInt8 "
                                   "weights, QUInt8 activations, opset 13) on the same calibration set"),
    Engine("openvino-int8", "OpenVINO int8 (QDQ)", ("openvino", "onnxruntime"), "openvino onnxruntime",
           ("openvino", "onnxruntime"), _openvino_int8,
           note="CPU plugin, LATENCY hint, one stream, running the same QDQ model as onnxruntime-int8"),
    Engine("ncnn", "ncnn (pnnx)", ("ncnn", "pnnx"), "ncnn pnnx", ("ncnn", "pnnx"), _ncnn,
           note="converted with pnnx (fp32 weights), fp16/bf16 storage off, no Vulkan"),
)}

REFERENCE = "pytorch"  # numerics are compared against this engine (ONNX Runtime when it cannot run)
FALLBACK_REFERENCE = "onnxruntime"


def select(names: Sequence[str] | None) -> list[Engine]:
    """The engines named (registry order), all when ``names`` is None."""
    from tvm_shuffle.errors import unknown_name

    if names is None:
        return list(ENGINES.values())
    for name in names:
        if name not in ENGINES:
            raise unknown_name("engine", name, ENGINES)
    return [e for e in ENGINES.values() if e.name in names]


__all__ = ["ort_quantize_static", "onnx_weight_bytes", "Engine", "ENGINES", "Session", "Workload", "Unavailable", "REFERENCE", "FALLBACK_REFERENCE", "select",
           "first_line"]
