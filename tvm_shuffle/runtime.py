"""Step 5, run: load an exported library with only the TVM runtime.

This module imports neither torch, onnx nor TVM's compiler: it loads
``libtvm_runtime.so`` (for the Relax VM) through ``tvm_ffi``, so it works in a
process that ships just the runtime libraries::

    model = tvm_shuffle.runtime.load("out/")
    logits = model(image)            # numpy in, list of numpy arrays out

Threads: one per physical core (or ``TVM_NUM_THREADS``, or ``load(...,
threads=N)``). TVM's own default is half the logical CPUs on x86, because it
assumes two hyper-threads per core; on a machine without hyper-threading
(most cloud VMs, this project's CI) that leaves half the cores idle. The
count is also put in ``TVM_NUM_THREADS``, which every kernel launch reads,
and the threads are not pinned to cores (:func:`export_thread_settings`).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tvm_shuffle.errors import UserError

MANIFEST = "manifest.json"
_KDL_CPU = 1
_POOLED_ALLOCATOR = 2
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
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
    return os.path.join(spec.submodule_search_locations[0], "lib", "libtvm_runtime.so")


_RUNTIME_LOADED = False

# TVM's ThreadGroup::AffinityMode kBig: its default mode, workers on the fastest cores.
_AFFINITY_BIG = 1


def physical_cores() -> int:
    """Cores this process may run on, each hyper-threaded sibling counted once."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topology.joinpath("physical_package_id").read_text().strip(),
                       topology.joinpath("core_id").read_text().strip()))
        except OSError:  # no sysfs topology (containers, other OSes): one core per CPU
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def default_threads() -> int:
    """``TVM_NUM_THREADS`` when it is set, else :func:`physical_cores`."""
    try:
        return max(1, int(os.environ["TVM_NUM_THREADS"]))
    except (KeyError, ValueError):
        return physical_cores()


def export_thread_settings(threads: int) -> None:
    """Put ``threads`` in TVM_NUM_THREADS and leave TVM's threads unpinned (TVM_BIND_THREADS=0, unless set).

    Sizing the pool is not enough: each launch asks TVM's ``MaxConcurrency()``,
    which reads TVM_NUM_THREADS and without it counts the logical CPUs (a
    sysfs read, ~4 us per launch) and halves them. On a 2-vCPU VM that is 1,
    and every kernel then runs serially on a pool of two: ShuffleNetV2 1.0x
    took 5.9-7.7 ms instead of 4.6.

    TVM pins each worker thread to one core. When another process is busy on
    that core, every kernel launch waits for the worker to get its core
    back: with a busy loop (nice 10) on one of this machine's two vCPUs,
    ShuffleNetV2 1.0x took 168 ms pinned and 11 ms unpinned (ONNX Runtime,
    which does not pin: 6.6 -> 7.0 ms). On an idle machine pinning gained
    nothing (0.80x ONNX Runtime pinned, 0.78x unpinned). Both variables are
    read when the pool is configured, so this runs before :func:`set_tvm_threads`.
    """
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TVM_BIND_THREADS", "0")


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


class Model:
    """A compiled model: call it with a numpy array, get a list of numpy arrays."""

    def __init__(self, directory: Path, manifest: dict[str, Any], runtime_libraries: Sequence[Path] = (), *,
                 threads: int | None = None):
        self.directory = directory
        self.manifest = manifest
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
        threads = threads or default_threads()
        export_thread_settings(threads)
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
        result = self._main(self._from_dlpack(self.check_input(array)))
        outputs = list(result) if not hasattr(result, "__dlpack__") else [result]
        return [np.from_dlpack(o).copy() for o in outputs]

    def benchmark(self, array: np.ndarray, *, warmup: int = 5, repeat: int = 50) -> list[float]:
        """Seconds per call for ``repeat`` calls after ``warmup`` untimed ones."""
        from tvm_shuffle.timing import measure

        tensor = self._from_dlpack(self.check_input(array))
        return measure(lambda: self._main(tensor), warmup=warmup, repeat=repeat)


def read_manifest(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The bundle directory and its parsed manifest; ``path`` is the directory or any file in it."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"no {MANIFEST} in {directory}: is this a tvm_shuffle output directory?")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest["inputs"], manifest["library"], manifest["target"]["arch"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{manifest_path} is not a valid tvm_shuffle manifest: {err}") from None
    if not (directory / manifest["library"]).is_file():
        raise UserError(f"{manifest_path} names {manifest['library']}, which is not in {directory}")
    return directory, manifest


def host_arch() -> str:
    machine = platform.machine().lower()
    return _MACHINE_ALIASES.get(machine, machine)


def load(path: str | os.PathLike, *, check_arch: bool = True, threads: int | None = None) -> Model:
    """Load a ``compile``/``tune`` output directory (or its ``model.so``).

    ``threads``: the size of TVM's thread pool (default :func:`default_threads`).
    """
    directory, manifest = read_manifest(path)
    if manifest["target"]["family"] == "cuda":
        raise UserError(f"{directory} was built for CUDA ({manifest['target']['name']}); "
                        "load it with the C++ API on a GPU machine")
    arch = manifest["target"]["arch"]
    if check_arch and arch != host_arch():
        raise UserError(f"{directory} was built for {arch} ({manifest['target']['name']}); this machine is {host_arch()}")
    from tvm_shuffle import bundle  # not at the top: bundle imports this module

    bundle.check(directory, manifest)
    return Model(directory, manifest, bundle.runtime_libraries(directory, manifest), threads=threads)


def run(path: str | os.PathLike, inputs: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """One-shot convenience: load and call."""
    array = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
    return load(path)(array)
