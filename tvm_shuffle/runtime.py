"""Step 5, run: load an exported library with only the TVM runtime.

This module imports neither torch, onnx nor TVM's compiler: it loads
``libtvm_runtime.so`` (for the Relax VM) through ``tvm_ffi``, so it works in a
process that ships just the runtime libraries::

    model = tvm_shuffle.runtime.load("out/")
    logits = model(image)            # numpy in, list of numpy arrays out

Threads: one per physical core, or ``TVM_NUM_THREADS``, or ``load(...,
threads=N)`` (the policy is :mod:`tvm_shuffle.host`'s).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tvm_shuffle import bundle_format, host
from tvm_shuffle.errors import UserError

_KDL_CPU = 1
_POOLED_ALLOCATOR = 2
# TVM's kernels assume kAllocAlignment (64-byte) buffers and use aligned vector
# loads; a numpy array is only 16-byte aligned, which crashes AVX-512 code.
ALIGNMENT = 64


def aligned_copy(array: np.ndarray, alignment: int = ALIGNMENT) -> np.ndarray:
    """A C-contiguous copy of ``array`` whose data starts on an ``alignment`` boundary."""
    raw = np.empty(array.nbytes + alignment, dtype=np.uint8)
    offset = (-raw.ctypes.data) % alignment
    out = raw[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def random_input(shape: Sequence[int], dtype: str = "float32", seed: int = 0) -> np.ndarray:
    """A seeded standard-normal array, 64-byte aligned: what benchmarks and checks feed a model."""
    return aligned_copy(np.random.default_rng(seed).standard_normal(tuple(shape)).astype(dtype))


def _import_tvm_ffi():
    """Import ``tvm_ffi`` without letting it pull in torch.

    tvm_ffi imports torch eagerly when it is installed (seconds, and a
    dependency a deployed app should not have); we hand it numpy arrays only.
    """
    if "tvm_ffi" in sys.modules or "torch" in sys.modules:
        import tvm_ffi

        return tvm_ffi
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        import tvm_ffi
    finally:
        del sys.modules["torch"]
    return tvm_ffi


def _runtime_library(bundled: Sequence[Path]) -> str:
    """Path of ``libtvm_runtime.so``: ``TVM_RUNTIME_LIB``, else the bundle's copy, else the apache-tvm wheel's."""
    explicit = os.environ.get("TVM_RUNTIME_LIB")
    if explicit:
        return explicit
    if bundled:
        return str(bundled[0])
    spec = importlib.util.find_spec("tvm")  # locates the package without importing the compiler
    if spec is None or not spec.submodule_search_locations:
        raise UserError("TVM runtime not found: install apache-tvm or set TVM_RUNTIME_LIB to libtvm_runtime.so")
    return os.path.join(spec.submodule_search_locations[0], "lib", bundle_format.RUNTIME_LIBRARY)


_RUNTIME_LOADED = False

# TVM's ThreadGroup::AffinityMode kBig: its default mode, workers on the fastest cores.
_AFFINITY_BIG = 1


def set_tvm_threads(get_function: Callable[[str], Callable], threads: int | None) -> int | str:
    """Resize a TVM runtime's thread pool (local, or remote through an RPC session's ``get_function``).

    TVM sizes its pool from TVM_NUM_THREADS when it first starts, so a pool
    already running, or one on a device, needs ``runtime.config_threadpool``.
    ``threads=None`` leaves the pool as it is.
    """
    if threads is None:
        return "device default"
    get_function("runtime.config_threadpool")(_AFFINITY_BIG, threads)
    return threads


def _load_runtime(bundled: Sequence[Path] = ()) -> Any:
    global _RUNTIME_LOADED
    tvm_ffi = _import_tvm_ffi()
    # libtvm.so (the compiler, loaded by `import tvm`) already contains the
    # runtime; loading libtvm_runtime.so beside it registers everything twice.
    if not _RUNTIME_LOADED and "tvm" not in sys.modules:
        path = _runtime_library(bundled)
        try:
            # RTLD_GLOBAL: the runtime registers the Relax VM loader in tvm_ffi's global table.
            ctypes.CDLL(path, ctypes.RTLD_GLOBAL)
        except OSError as err:
            raise UserError(f"cannot load the TVM runtime {path}: {err}") from None
        _RUNTIME_LOADED = True
    return tvm_ffi


def check_finite(array: np.ndarray) -> None:
    """Raise a :class:`UserError` naming how many values of a float input are NaN or infinite, and the first.

    A compiled model does not carry NaN through as PyTorch does: its ReLU is
    LLVM's ``maxnum``, which returns the other operand when one is NaN, so a
    NaN in the input can come out as an ordinary number. Propagating it
    would cost a compare and select in every ReLU; this check is one pass
    over the input.
    """
    if array.dtype.kind != "f":
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    positions = np.argwhere(~finite)
    first = tuple(int(i) for i in positions[0])
    raise UserError(f"input has {len(positions)} non-finite value(s) (NaN or infinity), the first ({array[first]}) "
                    f"at index {first}; the compiled model does not propagate them as PyTorch does "
                    "(it can turn NaN into a number): clean the input, or pass check_finite=False to skip this check")


class Model:
    """A compiled model: call it with a numpy array, get a list of numpy arrays.

    ``check_finite`` (default on) makes each call refuse an input holding NaN
    or infinity (:func:`check_finite`); :meth:`benchmark` and the C++ API do
    not check.
    """

    def __init__(self, directory: Path, manifest: dict[str, Any], runtime_libraries: Sequence[Path] = (), *,
                 threads: int | None = None, check_finite: bool = True):
        self.directory = directory
        self.manifest = manifest
        self.check_finite = check_finite
        (self._input,) = manifest["inputs"]
        tvm_ffi = _load_runtime(runtime_libraries)
        library = directory / manifest["library"]
        try:
            module = tvm_ffi.load_module(str(library))
            self._vm = module["vm_load_executable"]()
        except Exception as err:
            raise UserError(f"cannot load {library}: {str(err).strip().splitlines()[0]}") from None
        # One (device type, id, allocator) triple for the compute device and one for the host.
        self._vm["vm_initialization"](_KDL_CPU, 0, _POOLED_ALLOCATOR, _KDL_CPU, 0, _POOLED_ALLOCATOR)
        self._main = self._vm["main"]
        self._from_dlpack = tvm_ffi.from_dlpack
        # The pool is the process's: the last model loaded sets it for all.
        threads = threads or host.default_threads()
        host.export_thread_settings(threads)
        self.threads = set_tvm_threads(tvm_ffi.get_global_func, threads)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self._input["shape"])

    @property
    def input_dtype(self) -> str:
        return self._input["dtype"]

    def check_input(self, array: np.ndarray) -> np.ndarray:
        if not isinstance(array, np.ndarray):
            raise UserError(f"input must be a numpy array, not {type(array).__name__}")
        if array.dtype != np.dtype(self.input_dtype):
            raise UserError(f"input dtype {array.dtype} does not match the model's {self.input_dtype} "
                            f"(use array.astype('{self.input_dtype}'))")
        if tuple(array.shape) != self.input_shape:
            raise UserError(f"input shape {tuple(array.shape)} does not match the model's {self.input_shape}")
        if array.flags.c_contiguous and array.ctypes.data % ALIGNMENT == 0:
            return array
        return aligned_copy(array)

    def __call__(self, array: np.ndarray) -> list[np.ndarray]:
        array = self.check_input(array)
        if self.check_finite:
            check_finite(array)
        result = self._main(self._from_dlpack(array))
        outputs = list(result) if not hasattr(result, "__dlpack__") else [result]
        return [np.from_dlpack(o).copy() for o in outputs]

    def benchmark(self, array: np.ndarray, *, warmup: int = 5, repeat: int = 50) -> list[float]:
        """Seconds per call for ``repeat`` calls after ``warmup`` untimed ones."""
        from tvm_shuffle.timing import measure

        tensor = self._from_dlpack(self.check_input(array))
        return measure(lambda: self._main(tensor), warmup=warmup, repeat=repeat)


def load(path: str | os.PathLike, *, check_arch: bool = True, threads: int | None = None,
         check_finite: bool = True) -> Model:
    """Load a ``compile``/``tune`` output directory (or its ``model.so``).

    ``threads``: the size of TVM's thread pool (default :func:`tvm_shuffle.host.default_threads`).
    ``check_finite``: refuse inputs holding NaN or infinity (:func:`check_finite`).
    """
    directory, manifest = bundle_format.read_manifest(path)
    if manifest["target"]["family"] == "cuda":
        raise UserError(f"{directory} was built for CUDA ({manifest['target']['name']}); "
                        "load it with the C++ API on a GPU machine")
    arch = manifest["target"]["arch"]
    if check_arch and arch != host.arch():
        raise UserError(f"{directory} was built for {arch} ({manifest['target']['name']}); this machine is {host.arch()}")
    bundle_format.check(directory, manifest)
    return Model(directory, manifest, bundle_format.runtime_libraries(directory, manifest), threads=threads,
                 check_finite=check_finite)


def run(path: str | os.PathLike, inputs: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """One-shot convenience: load and call."""
    array = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
    return load(path)(array)
