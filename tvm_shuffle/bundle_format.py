"""The bundle's file layout and its manifest: the names, how to read them, and how to check them.

A bundle (what ``Compiled.save`` and ``--out`` write) is a directory::

    model.so, manifest.json   the model; the manifest gives input/output shapes,
                              the target, and each bundled file's size and sha256
    lib/                      the TVM runtime for the target's architecture
    include/, example/        the C++ API and the example apps

Both sides use this module: packaging (:mod:`tvm_shuffle.bundle`) writes
these files, the runtime (:mod:`tvm_shuffle.runtime`) reads and checks them.
It imports no TVM.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tvm_shuffle.errors import UserError

LIBRARY = "model.so"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
LIB_DIR = "lib"
INCLUDE_DIR = "include"

FFI_LIBRARY = "libtvm_ffi.so"
RUNTIME_LIBRARY = "libtvm_runtime.so"
CUDA_RUNTIME_LIBRARY = "libtvm_runtime_cuda.so"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def runtime_libraries(directory: Path, manifest: dict[str, Any]) -> list[Path]:
    """The bundle's libraries to load before ``model.so``, in order (none for an unbundled output)."""
    return [directory / rel for rel in manifest.get("bundle", {}).get("runtime_libraries", [])]


def check(directory: Path, manifest: dict[str, Any]) -> None:
    """Fail with a clear :class:`UserError` when the bundle is incomplete or its files do not match the manifest.

    Runtime libraries: present and of the recorded size (cheap); ``model.so``:
    the recorded sha256, which is what differs when a model is rebuilt or
    replaced without its manifest. An output directory without a ``bundle``
    section (a library written without packaging) passes unchecked.
    """
    bundle = manifest.get("bundle")
    if bundle is None:
        return
    files = bundle.get("files", {})
    for path in runtime_libraries(directory, manifest):
        rel = path.relative_to(directory).as_posix()
        if not path.is_file():
            raise UserError(f"missing runtime library {path}: copy the bundle's {LIB_DIR}/ folder together with "
                            f"{manifest['library']}")
        expected = files.get(rel, {}).get("size")
        if expected is not None and path.stat().st_size != expected:
            raise UserError(f"runtime library {path} does not match {MANIFEST} (size {path.stat().st_size}, "
                            f"manifest says {expected}): it comes from another TVM build")
    library = directory / manifest["library"]
    entry = files.get(manifest["library"])
    if entry is None:
        raise UserError(f"{directory / MANIFEST} has no checksum for {manifest['library']}")
    actual = sha256(library)
    if actual != entry["sha256"]:
        raise UserError(f"{library} does not match {MANIFEST} (sha256 {actual[:12]}, manifest says "
                        f"{entry['sha256'][:12]}): the library was rebuilt or replaced without its manifest; "
                        "copy both from the same build")


__all__ = ["LIBRARY", "MANIFEST", "MANIFEST_VERSION", "LIB_DIR", "INCLUDE_DIR", "FFI_LIBRARY", "RUNTIME_LIBRARY",
           "CUDA_RUNTIME_LIBRARY", "sha256", "read_manifest", "runtime_libraries", "check"]
