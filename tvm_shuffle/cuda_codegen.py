"""CUDA device code on a machine without a GPU.

The wheel's CUDA runtime plugin (``libtvm_runtime_cuda.so``) links against
the driver library ``libcuda.so.1``. Without a driver the plugin does not
load, and TVM then *silently* stores CUDA C source in the exported library
instead of device code; a C++ loader on the GPU machine then fails. Here, when
no driver is installed, we build a stub ``libcuda.so.1`` (every driver
function the plugin imports, each returning CUDA_ERROR_NO_DEVICE), load it,
load the plugin, and make TVM compile kernels with ``nvcc`` into a fatbin
(``TVM_CUDA_COMPILE_MODE=nvcc``; its default, NVRTC, needs the cuda-python
bindings). The stub is never loaded where a real driver exists.

See ../shared/notes/tvm-0.27-field-notes.md ("Targets").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import shutil
import subprocess
from pathlib import Path

from tvm_shuffle import host
from tvm_shuffle.errors import UserError

CUDA_ERROR_NO_DEVICE = 100
FATBIN_MAGIC = b"\x50\xed\x55\xba"  # 0xBA55ED50, little-endian: start of every fatbin
PLUGIN = "libtvm_runtime_cuda.so"
DEFAULT_CUDA_PATH = "/usr/local/cuda"


@functools.lru_cache(maxsize=None)
def enable_device_code() -> None:
    """Make this process's CUDA builds contain device code (idempotent); clear error if it cannot."""
    nvcc = shutil.which("nvcc") or (os.path.join(_cuda_path(), "bin", "nvcc") if _cuda_path() else None)
    if not nvcc or not os.path.exists(nvcc):
        raise UserError("building for CUDA needs the CUDA toolkit's nvcc (not found on PATH or in "
                        f"{DEFAULT_CUDA_PATH}); install the CUDA toolkit or set CUDA_PATH")
    os.environ.setdefault("CUDA_PATH", str(Path(nvcc).resolve().parent.parent))
    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    if not _driver_present():
        ctypes.CDLL(str(_stub_driver()), mode=ctypes.RTLD_GLOBAL)
    from tvm_shuffle.tvm_compat import tvm

    plugin = Path(tvm.__file__).parent / "lib" / PLUGIN
    try:
        ctypes.CDLL(str(plugin), mode=ctypes.RTLD_GLOBAL)
    except OSError as err:
        raise UserError(f"cannot load TVM's CUDA runtime plugin {plugin}: {err} "
                        "(it needs the CUDA runtime, libcudart, from the CUDA toolkit)") from None


def local_gpu() -> bool:
    """Is there a usable NVIDIA GPU in this machine (a real driver and a device)?"""
    if not _driver_present():
        return False
    enable_device_code()
    from tvm_shuffle.tvm_compat import tvm

    return bool(tvm.runtime.cuda(0).exist)


def has_device_code(library: Path) -> bool:
    """Does an exported library embed a CUDA fatbin (and not CUDA C source)?"""
    data = Path(library).read_bytes()
    return FATBIN_MAGIC in data and b"__global__" not in data


@functools.lru_cache(maxsize=None)
def _driver_present() -> bool:
    """Asked once, before any stub is loaded (the stub answers to the same name)."""
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def _cuda_path() -> str | None:
    path = os.environ.get("CUDA_PATH") or DEFAULT_CUDA_PATH
    return path if os.path.isdir(path) else None


def _stub_driver() -> Path:
    """Build (once per plugin version) a ``libcuda.so.1`` whose functions all fail cleanly."""
    from tvm_shuffle.tvm_compat import tvm

    plugin = Path(tvm.__file__).parent / "lib" / PLUGIN
    symbols = _imported_driver_symbols(plugin)
    directory = host.cache_dir() / f"cuda-stub-{tvm.__version__}"
    stub = directory / "libcuda.so.1"
    if stub.exists():
        return stub
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "stub.c"
    source.write_text("".join(f"int {name}(void) {{ return {CUDA_ERROR_NO_DEVICE}; }}\n" for name in symbols))
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise UserError("building for CUDA without a GPU driver needs a C compiler (apt-get install gcc)")
    tmp = directory / "libcuda.so.1.tmp"
    subprocess.run([compiler, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(source)],
                   check=True, capture_output=True)
    tmp.replace(stub)
    return stub


def _imported_driver_symbols(plugin: Path) -> list[str]:
    """The ``cu*`` driver functions the plugin needs (read with binutils' nm)."""
    nm = shutil.which("nm")
    if nm is None:
        raise UserError("building for CUDA without a GPU driver needs binutils (nm): apt-get install binutils")
    out = subprocess.run([nm, "-D", "--undefined-only", str(plugin)], check=True, capture_output=True,
                         text=True).stdout
    names = sorted({fields[-1].split("@")[0] for line in out.splitlines()
                    if (fields := line.split()) and fields[-1].startswith("cu") and fields[-1][2:3].isupper()})
    return names
