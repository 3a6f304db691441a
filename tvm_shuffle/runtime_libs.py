"""The TVM runtime libraries for an architecture: this machine's, or another's from its wheels.

A bundle ships them (:mod:`tvm_shuffle.bundle`), and the emulated aarch64
board runs on them (:mod:`tvm_shuffle.tuning.emulated_device`). They must
match the compiler's versions, so another architecture's come from the
installed apache-tvm / apache-tvm-ffi versions' wheels for that platform.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tvm_shuffle import host
from tvm_shuffle.bundle_format import CUDA_RUNTIME_LIBRARY, FFI_LIBRARY, RUNTIME_LIBRARY
from tvm_shuffle.errors import UserError

# Where each library sits: (distribution, folder inside its wheel / installed package).
_WHEEL_LOCATIONS = {
    RUNTIME_LIBRARY: ("apache-tvm", "tvm/lib"),
    CUDA_RUNTIME_LIBRARY: ("apache-tvm", "tvm/lib"),
    FFI_LIBRARY: ("apache-tvm-ffi", "tvm_ffi/lib"),
}
_WHEEL_PLATFORMS = {"x86_64": "manylinux_2_28_x86_64", "aarch64": "manylinux_2_28_aarch64"}


def _versions() -> dict[str, str]:
    """Installed versions of the wheels the runtime comes from: a bundle's runtime must match its compiler."""
    return {dist: importlib.metadata.version(dist) for dist in ("apache-tvm", "apache-tvm-ffi")}


def package_dir(package: str) -> Path:
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
    :func:`tvm_shuffle.host.cache_dir` (about 100 MB of download, 6 MB kept). Offline with an
    empty cache this is a :class:`UserError` naming the pip command to run.
    """
    if arch == host.arch():
        folders = {"apache-tvm": package_dir("tvm") / "lib", "apache-tvm-ffi": package_dir("tvm_ffi") / "lib"}
        return {name: folders[_WHEEL_LOCATIONS[name][0]] / name for name in _wanted(cuda)}
    if arch not in _WHEEL_PLATFORMS:
        raise UserError(f"no TVM runtime wheels for architecture {arch!r}; "
                        f"known: {', '.join(sorted(_WHEEL_PLATFORMS))}")
    versions = _versions()
    folder = host.cache_dir() / "runtime" / arch / f"tvm-{versions['apache-tvm']}_ffi-{versions['apache-tvm-ffi']}"
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


__all__ = ["fetch_runtime_libs", "pip_download_command", "package_dir"]
