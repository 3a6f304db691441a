"""Packaging: turn a written library into a bundle a user can ship.

After :func:`tvm_shuffle.build.write` has put ``model.so`` and
``manifest.json`` in a directory, :func:`make_bundle` adds what an app needs
to run them with no Python and no environment variables
(:mod:`tvm_shuffle.bundle_format` names the files)::

    out/
      model.so, manifest.json   the model (manifest gains a "bundle" section)
      lib/                      libtvm_runtime.so, libtvm_ffi.so for the target's
                                architecture (+ CUDA runtime for CUDA targets)
      include/                  tvm_shuffle.h (the C++ API), tvm/ffi/, dlpack/
      example/                  CMake app (classify), its aarch64 toolchain file,
                                run_bundle.py (the Python example)

The host architecture's runtime comes from the installed apache-tvm and
apache-tvm-ffi wheels; another architecture's from the same versions' wheels
for that platform, downloaded once with pip (:mod:`tvm_shuffle.runtime_libs`).
This module imports no TVM compiler.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tvm_shuffle import runtime_libs
from tvm_shuffle.bundle_format import CUDA_RUNTIME_LIBRARY, INCLUDE_DIR, LIB_DIR, MANIFEST, RUNTIME_LIBRARY, sha256
from tvm_shuffle.errors import UserError
from tvm_shuffle.targets.spec import TargetSpec

TEMPLATE = Path(__file__).parent / "deploy"  # include/tvm_shuffle.h and example/, copied as they are
# The CUDA runtime the apache-tvm 0.27 wheel's libtvm_runtime_cuda.so is linked
# against; bundled so that the target needs only the NVIDIA driver.
CUDART = "libcudart.so.13"

_FFI_HEADERS = ("tvm/ffi", "dlpack")  # the rest of tvm_ffi's include/ is for Python extensions


def _cudart() -> Path:
    """The CUDA runtime to bundle beside libtvm_runtime_cuda.so."""
    folders = [Path(root) / "lib64" for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"),
                                                   "/usr/local/cuda") if root]
    for folder in folders:
        if (folder / CUDART).is_file():
            return (folder / CUDART).resolve()
    raise UserError(f"{CUDART} not found in {', '.join(map(str, folders))}: a CUDA bundle ships the CUDA 13 "
                    "runtime; install the CUDA toolkit or set CUDA_PATH")


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    shutil.copymode(src, dst)
    return dst


def _copy_tree(src: Path, dst: Path) -> list[Path]:
    return [_copy(f, dst / f.relative_to(src)) for f in sorted(src.rglob("*"))
            if f.is_file() and "__pycache__" not in f.parts]


def make_bundle(out_dir: str | os.PathLike, spec: TargetSpec) -> dict[str, Any]:
    """Add the runtime, headers and examples to a built output directory.

    ``spec`` is the target the library was built for. Adds a ``bundle`` section to ``manifest.json`` — the libraries
    to load at run time, in order, and every bundled file's size and sha256 —
    and returns it.
    """
    out = Path(out_dir)
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    cuda = spec.family == "cuda"
    libs = runtime_libs.fetch_runtime_libs(spec.runtime_arch, cuda=cuda)

    copied = [_copy(path, out / LIB_DIR / name) for name, path in libs.items()]
    if cuda:
        copied.append(_copy(_cudart(), out / LIB_DIR / CUDART))  # found by libtvm_runtime_cuda.so's $ORIGIN RUNPATH
    ffi_include = runtime_libs.package_dir("tvm_ffi") / "include"
    for sub in _FFI_HEADERS:
        copied += _copy_tree(ffi_include / sub, out / INCLUDE_DIR / sub)
    copied += _copy_tree(TEMPLATE, out)

    files = [out / manifest["library"], *copied]
    manifest["bundle"] = {
        "runtime_libraries": [f"{LIB_DIR}/{name}" for name in (RUNTIME_LIBRARY, CUDA_RUNTIME_LIBRARY)
                              if name in libs],
        "files": {f.relative_to(out).as_posix(): {"size": f.stat().st_size, "sha256": sha256(f)}
                  for f in sorted(files)},
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest["bundle"]


__all__ = ["make_bundle"]
