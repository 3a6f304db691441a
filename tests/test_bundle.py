"""The --out directory is a bundle: the C++ app and the Python example run it.

A tiny convnet covers the layout, the runtime fetch and every bad-input error
(from C++ and from Python); ShuffleNetV2 x0.5 at 64x64 covers the real network
end to end (slow). The C++ app runs under ``env -i``: no LD_LIBRARY_PATH, no
Python.

Tolerances: the app and the Python runtime call the same kernels in the same
library, so a raw tensor gives identical outputs (checked with atol=1e-6).
The app's C++ preprocessing of a PPM image is compared, through a model that
returns its input, with PyTorch's bilinear interpolate + crop + normalize:
float rounding differs, so atol=1e-5.
CUDA (when a GPU is present) against the x86 bundle: atol=rtol=1e-5.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tvm_shuffle import api, bundle_format, frontends, host, runtime, runtime_libs, targets
from tvm_shuffle import compile as compile_cli
from tvm_shuffle.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TINY_SHAPE = (1, 3, 16, 16)
IDENTITY_SHAPE = (1, 3, 12, 20)  # not square: crop height and width differ
X86 = targets.get("x86")

needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("g++") is None,
                                 reason="needs cmake and g++ (apt-get install cmake g++)")


def tiny_module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()


def build_app(bundle_dir: Path, build_dir: Path) -> Path:
    """Configure and build the bundle's example exactly as the README says: no flags."""
    for command in (["cmake", "-S", bundle_dir / "example", "-B", build_dir], ["cmake", "--build", build_dir]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    return build_dir / "classify"


def run_clean(*command, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """Run with an empty environment, as a deployed app would."""
    return subprocess.run(["env", "-i", *map(str, command)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


def elf_arch(path: Path) -> str:
    """The architecture an ELF file is built for (e_machine, little-endian, at byte 18)."""
    header = Path(path).read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    return ELF_MACHINES.get(int.from_bytes(header[18:20], "little"), "other")


def write_ppm(path: Path, rgb: np.ndarray) -> Path:
    height, width, _ = rgb.shape
    path.write_bytes(f"P6\n# test image\n{width} {height}\n255\n".encode() + rgb.astype(np.uint8).tobytes())
    return path


def torchvision_preprocess(rgb: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """Resize(round(crop*256/224), bilinear, antialias=False), CenterCrop, ToTensor, Normalize.

    For a square crop the resized shape is torchvision's (shorter side to the
    size); for a non-square one, the side that binds the crop (the app's rule).
    """
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    h, w = rgb.shape[:2]
    if crop[0] * w >= crop[1] * h:
        rh = round(crop[0] * 256 / 224)
        resized = (rh, int(rh * w / h))
    else:
        rw = round(crop[1] * 256 / 224)
        resized = (int(rw * h / w), rw)
    x = torch.nn.functional.interpolate(x, size=resized, mode="bilinear", align_corners=False, antialias=False)
    top, left = int(round((resized[0] - crop[0]) / 2.0)), int(round((resized[1] - crop[1]) / 2.0))
    x = x[:, :, top:top + crop[0], left:left + crop[1]]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((x - mean) / std).numpy()


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    imported = frontends.from_torch_module(tiny_module(), TINY_SHAPE, name="tiny")
    return api.compile(imported, X86, quiet=True).save(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_app(tiny_bundle, tmp_path_factory) -> Path:
    """The example app; it runs any x86 bundle, not only the one it was configured from."""
    return build_app(tiny_bundle, tmp_path_factory.mktemp("tiny_build"))


@pytest.fixture
def tiny_input(tmp_path) -> tuple[np.ndarray, Path]:
    x = np.random.default_rng(0).standard_normal(TINY_SHAPE).astype("float32")
    x.tofile(tmp_path / "x.bin")
    return x, tmp_path / "x.bin"


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A copy of the tiny bundle that a test may break."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))


# --- the bundle itself --------------------------------------------------------------------------------------------


def test_bundle_holds_runtime_headers_examples_and_checksums(tiny_bundle):
    _, manifest = bundle_format.read_manifest(tiny_bundle)
    files = manifest["bundle"]["files"]
    for rel in ("model.so", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so", "include/tvm_shuffle.h",
                "include/tvm/ffi/function.h", "include/dlpack/dlpack.h", "example/CMakeLists.txt", "example/main.cc",
                "example/image.h", "example/aarch64-linux-gnu.cmake", "example/run_bundle.py"):
        assert rel in files, rel
    for rel, entry in files.items():
        path = tiny_bundle / rel
        assert bundle_format.sha256(path) == entry["sha256"] and path.stat().st_size == entry["size"], rel
    assert manifest["bundle"]["runtime_libraries"] == ["lib/libtvm_runtime.so"]
    assert elf_arch(tiny_bundle / "lib/libtvm_runtime.so") == elf_arch(tiny_bundle / "model.so") == "x86_64"


def test_fetch_runtime_libs_for_the_host_uses_the_installed_wheels():
    libs = runtime_libs.fetch_runtime_libs(host.arch())
    assert set(libs) == {"libtvm_runtime.so", "libtvm_ffi.so"}
    assert all(path.is_file() for path in libs.values())
    assert "libtvm_runtime_cuda.so" in runtime_libs.fetch_runtime_libs(host.arch(), cuda=True)


def test_fetch_runtime_libs_offline_with_empty_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no mirrors from pip.conf
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    other = "aarch64" if host.arch() != "aarch64" else "x86_64"
    with pytest.raises(UserError, match=rf"cannot download the {other} TVM runtime wheels \(offline\?\).*pip download"):
        runtime_libs.fetch_runtime_libs(other)
    with pytest.raises(UserError, match="no TVM runtime wheels for architecture 'riscv64'"):
        runtime_libs.fetch_runtime_libs("riscv64")


# --- Python: the runtime and the example --------------------------------------------------------------------------

# Makes torch, onnx and TVM's compiler unimportable, as on a machine with only the runtime.
_ONLY_RUNTIME = """
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnxruntime", "tvm"):
            raise ImportError(f"{name} is not installed on this deployment machine")
sys.meta_path.insert(0, _Absent())
"""

_AFTER = """
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "onnx", "onnxruntime", "tvm"})
print("heavy modules:", loaded)
"""


def run_python_without_compiler(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _ONLY_RUNTIME + code + _AFTER], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_python_example_runs_with_only_the_runtime(tiny_bundle, tiny_input):
    x, path = tiny_input
    example = tiny_bundle / "example/run_bundle.py"
    argv = [str(tiny_bundle), str(path), "--repeat", "3"]
    code = f"import runpy; runpy.run_path({str(example)!r})['main']({argv!r})"
    done = run_python_without_compiler(code)
    assert done.returncode == 0, done.stderr
    assert "heavy modules: []" in done.stdout
    (expected,) = runtime.load(tiny_bundle)(x)
    top5 = " ".join(map(str, np.argsort(-expected.ravel(), kind="stable")[:5]))
    assert f"top-5 classes: {top5}" in done.stdout


def test_python_runtime_sizes_the_thread_pool(tiny_bundle, tiny_input, monkeypatch):
    x, _ = tiny_input
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    assert runtime.load(tiny_bundle).threads == host.physical_cores() <= os.cpu_count()
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    assert runtime.load(tiny_bundle).threads == 3
    one = runtime.load(tiny_bundle, threads=1)
    assert one.threads == 1
    np.testing.assert_array_equal(one(x)[0], runtime.load(tiny_bundle, threads=2)(x)[0])


# A parallel loop of 64 iterations that records which thread ran each one; then the threads pinned to
# fewer cores than the process may use.
_THREAD_PROBE = """
import glob, os, sys
import numpy as np
from tvm_shuffle import runtime
from tvm_shuffle.tvm_compat import Schedule, te, tir, tvm
def allowed(status):
    return next(line for line in open(status) if line.startswith("Cpus_allowed_list"))
process = allowed("/proc/self/status")
runtime.load(sys.argv[1], threads=2)
ran_on = te.compute((64,), lambda i: tir.call_extern("uint64", "pthread_self"), name="ran_on")
sch = Schedule(te.create_prim_func([ran_on]))
sch.parallel(sch.get_loops(sch.get_sblock("ran_on"))[0])
ids = tvm.runtime.tensor(np.zeros(64, "uint64"))
tvm.compile(sch.mod, target={"kind": "llvm"})["main"](ids)
print("threads used:", len(set(ids.numpy().tolist())), "TVM_NUM_THREADS:", os.environ.get("TVM_NUM_THREADS"))
print("pinned threads:", sum(allowed(task) != process for task in glob.glob("/proc/self/task/*/status")))
"""


def test_python_runtime_runs_kernels_on_the_threads_it_reports_unpinned(tiny_bundle, tmp_path):
    # Without TVM_NUM_THREADS, TVM's launch counts half the logical CPUs on
    # every call, whatever the pool's size: on a 2-vCPU machine, one thread.
    # Without TVM_BIND_THREADS=0, TVM pins its worker to one core.
    probe = tmp_path / "probe.py"
    probe.write_text(_THREAD_PROBE)
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "TVM_BIND_THREADS")}
    done = subprocess.run([sys.executable, probe, tiny_bundle], capture_output=True, text=True, env=environment,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "threads used: 2 TVM_NUM_THREADS: 2" in done.stdout
    assert "pinned threads: 0" in done.stdout


def test_python_runtime_prefers_the_bundled_library(tiny_bundle):
    code = f"""
from tvm_shuffle import runtime
runtime.load({str(tiny_bundle)!r})
maps = open("/proc/self/maps").read()
print("bundled runtime:", {str(tiny_bundle / 'lib/libtvm_runtime.so')!r} in maps)
"""
    done = run_python_without_compiler(code)
    assert done.returncode == 0, done.stderr
    assert "bundled runtime: True" in done.stdout and "heavy modules: []" in done.stdout


def break_bundle(directory: Path, how: str) -> str:
    """Damage a bundle copy the way users do; returns the message both APIs must give."""
    if how == "arch":
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest["target"].update(arch="aarch64", name="arm-rpi4")
        (directory / "manifest.json").write_text(json.dumps(manifest))
        return r"was built for aarch64 \((target )?arm-rpi4\)"
    if how == "missing_runtime":
        (directory / "lib/libtvm_runtime.so").unlink()
        return "missing runtime library .*lib/libtvm_runtime.so"
    if how == "mismatch":
        with open(directory / "model.so", "ab") as f:  # e.g. rebuilt or patched without its manifest
            f.write(b"\0")
        return r"model.so does not match manifest.json \(sha256 [0-9a-f]{12}, manifest says [0-9a-f]{12}\)"
    raise ValueError(how)


BROKEN = ["arch", "missing_runtime", "mismatch"]


@pytest.mark.parametrize("how", BROKEN)
def test_python_rejects_a_broken_bundle(bundle_copy, how):
    message = break_bundle(bundle_copy, how)
    with pytest.raises(UserError, match=message):
        runtime.load(bundle_copy)


def test_python_rejects_a_wrong_input_size(tiny_bundle):
    with pytest.raises(UserError, match=r"input shape \(1, 3, 8, 8\) does not match the model's \(1, 3, 16, 16\)"):
        runtime.load(tiny_bundle)(np.zeros((1, 3, 8, 8), "float32"))


# --- C++: the API and the example app -----------------------------------------------------------------------------


@needs_cmake
def test_cpp_app_matches_python_under_env_i(tiny_bundle, tiny_app, tiny_input, tmp_path):
    x, path = tiny_input
    done = run_clean(tiny_app, tiny_bundle, path, "--repeat", 3, "--dump", tmp_path / "y.bin")
    assert done.returncode == 0, done.stderr
    assert "model tiny, target x86 (x86_64, cpu), input" in done.stdout
    # env -i: no TVM_NUM_THREADS, so one thread per physical core (not TVM's half of the logical CPUs)
    assert re.search(rf"latency: median [0-9.]+ ms, min [0-9.]+ ms over 3 runs, {host.physical_cores()} threads",
                     done.stdout)
    (expected,) = runtime.load(tiny_bundle)(x)
    np.testing.assert_allclose(np.fromfile(tmp_path / "y.bin", "float32"), expected.ravel(), atol=1e-6, rtol=0)
    classes = [int(c) for c in re.search(r"top-5 classes: ([\d ]+)", done.stdout).group(1).split()]
    np.testing.assert_allclose(expected.ravel()[classes], np.sort(expected.ravel())[::-1][:5], atol=1e-6)


@pytest.fixture(scope="module")
def identity_bundle(tmp_path_factory) -> Path:
    """A model that returns its (flattened) input: the app's output is its preprocessed image."""
    imported = frontends.from_torch_module(torch.nn.Flatten().eval(), IDENTITY_SHAPE, name="identity")
    return api.compile(imported, X86, quiet=True).save(tmp_path_factory.mktemp("identity"))


@needs_cmake
@pytest.mark.parametrize("height,width", [(27, 41), (50, 30)])
def test_cpp_app_preprocesses_a_ppm_like_torchvision(identity_bundle, tiny_app, tmp_path, height, width):
    # Landscape and portrait, neither a multiple of the crop: the shorter side is resized, then center-cropped.
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 6, yy * 5, (xx * yy) % 256], axis=-1).clip(0, 255).astype(np.uint8)
    done = run_clean(tiny_app, identity_bundle, write_ppm(tmp_path / "img.ppm", rgb), "--repeat", 1,
                     "--dump", tmp_path / "x.bin")
    assert done.returncode == 0, done.stderr
    expected = torchvision_preprocess(rgb, IDENTITY_SHAPE[2:])
    np.testing.assert_allclose(np.fromfile(tmp_path / "x.bin", "float32"), expected.ravel(), atol=1e-5, rtol=0)
    # The same image as ASCII PPM (P3) reads the same.
    ascii_ppm = f"P3\n{width} {height}\n255\n" + " ".join(map(str, rgb.ravel())) + "\n"
    (tmp_path / "img3.ppm").write_text(ascii_ppm)
    done = run_clean(tiny_app, identity_bundle, tmp_path / "img3.ppm", "--repeat", 1, "--dump", tmp_path / "x3.bin")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "x3.bin").read_bytes() == (tmp_path / "x.bin").read_bytes()


@needs_cmake
@pytest.mark.parametrize("how", BROKEN)
def test_cpp_rejects_a_broken_bundle(bundle_copy, tiny_app, tiny_input, how):
    message = break_bundle(bundle_copy, how)
    done = run_clean(tiny_app, bundle_copy, tiny_input[1])
    assert done.returncode == 1
    assert re.match(f"error: .*{message}", done.stderr), done.stderr


@needs_cmake
def test_cpp_rejects_a_wrong_input_size(tiny_bundle, tiny_app, tmp_path):
    np.zeros((1, 3, 8, 8), "float32").tofile(tmp_path / "small.bin")
    done = run_clean(tiny_app, tiny_bundle, tmp_path / "small.bin")
    assert done.returncode == 1
    assert "error: input has 192 floats; model tiny expects 1x3x16x16 = 768" in done.stderr


@needs_cmake
def test_cpp_rejects_a_directory_without_manifest(tiny_app, tmp_path, tiny_input):
    done = run_clean(tiny_app, tmp_path, tiny_input[1])
    assert done.returncode == 1 and "no manifest.json in" in done.stderr


@pytest.mark.slow
@needs_cmake
def test_cuda_bundle_builds_and_runs_or_names_the_missing_driver(tiny_bundle, tiny_input, tmp_path):
    imported = frontends.from_torch_module(tiny_module(), TINY_SHAPE, name="tiny")
    out = api.compile(imported, targets.get("cuda"), quiet=True).save(tmp_path / "cuda")
    _, manifest = bundle_format.read_manifest(out)
    assert manifest["bundle"]["runtime_libraries"] == ["lib/libtvm_runtime.so", "lib/libtvm_runtime_cuda.so"]
    assert "lib/libcudart.so.13" in manifest["bundle"]["files"]
    app = build_app(out, tmp_path / "build")
    x, path = tiny_input
    done = run_clean(app, out, path, "--repeat", 3, "--dump", tmp_path / "y.bin")
    if shutil.which("nvidia-smi") is None:
        assert done.returncode == 1
        assert "libcuda.so.1" in done.stderr and "NVIDIA driver" in done.stderr, done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert "cuda:0" in done.stdout
        (expected,) = runtime.load(tiny_bundle)(x)
        np.testing.assert_allclose(np.fromfile(tmp_path / "y.bin", "float32"), expected.ravel(), atol=1e-5,
                                   rtol=1e-5)


# --- README snippets ----------------------------------------------------------------------------------------------


def readme_blocks(marker: str) -> dict[str, str]:
    """The fenced code blocks between ``<!-- snippet:MARKER -->`` and ``<!-- /snippet:MARKER -->``, by language."""
    text = README.read_text(encoding="utf-8")
    section = re.search(rf"<!-- snippet:{marker} -->(.*?)<!-- /snippet:{marker} -->", text, re.S)
    assert section, f"README.md lacks the <!-- snippet:{marker} --> section ('Use the library in your app')"
    return {lang: code for lang, code in re.findall(r"```(\w+)\n(.*?)```", section.group(1), re.S)}


@pytest.fixture
def readme_workdir(tiny_bundle, tmp_path) -> Path:
    """A folder where the README's ``out/v2`` is the tiny bundle."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out/v2").symlink_to(tiny_bundle)
    return tmp_path


def test_readme_python_snippet_runs_with_only_the_runtime(readme_workdir):
    done = run_python_without_compiler(readme_blocks("python")["python"], cwd=readme_workdir)
    assert done.returncode == 0, done.stderr
    assert "top-5 classes:" in done.stdout and "heavy modules: []" in done.stdout


@needs_cmake
def test_readme_cpp_snippet_builds_and_runs(readme_workdir):
    blocks = readme_blocks("cpp")
    (readme_workdir / "app.cc").write_text(blocks["cpp"])
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", blocks["sh"]], cwd=readme_workdir, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10 scores" in done.stdout


# --- the real network, end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shufflenet_x86(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shufflenet_x86")
    assert compile_cli.main(["--model", "shufflenet_v2_x0_5", "--input-shape", "1,3,64,64", "--target", "x86",
                             "--out", str(out)]) == 0
    return out


@pytest.mark.slow
@needs_cmake
def test_shufflenet_bundle_app_matches_python(shufflenet_x86, tmp_path):
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype("float32")
    x.tofile(tmp_path / "x.bin")
    app = build_app(shufflenet_x86, tmp_path / "build")
    done = run_clean(app, shufflenet_x86, tmp_path / "x.bin", "--dump", tmp_path / "y.bin")
    assert done.returncode == 0, done.stderr
    print(done.stdout)  # the latency, for the log
    (expected,) = runtime.load(shufflenet_x86)(x)
    np.testing.assert_allclose(np.fromfile(tmp_path / "y.bin", "float32"), expected.ravel(), atol=1e-6, rtol=0)
