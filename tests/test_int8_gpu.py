"""int8 on CUDA (``schedules.int8_gpu``): the 1x1 convolutions and the classifier as ``__dp4a`` kernels.

No GPU is needed. What is checked here:

* which kernels the rule takes, and its launch shapes (every split divides);
* the arithmetic of the schedule, on the CPU: each int8 kernel scheduled
  exactly as for the GPU, with the dp4a step replaced by the same step in
  plain integer TIR (``DP4A_REFERENCE_INTRIN``: byte j of the input word as
  u8 times byte j of the weight word as s8, which is what the PTX ISA says
  ``dp4a.u32.s32`` computes) and the thread loops made serial, gives the
  unscheduled kernel's results bit for bit; a whole model built that way
  (weights packed at build time) gives the x86 int8 build's logits;
* the CUDA build (nvcc, as ``cuda_codegen`` makes it without a driver): a
  fatbin and no source, ``__dp4a`` in the CUDA source of every int8 kernel,
  ``dp4a.u32.s32`` in the PTX, ``IDP.4A.U8.S8`` in the sm_90 machine code
  (nvdisasm, where installed), and one kernel per int8 layer (no weight
  packing left to run).

Not checked without a GPU: that the GPU runs the code (shared memory
barriers, the real ``dp4a``), and how fast.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import tvm_shuffle as ts
from conftest import cpu_has, run_packed_on_cpu
from tvm_shuffle import build, cuda_codegen, frontends, passes, precisions, quantize, targets
from tvm_shuffle.models import channel_shuffle, randomize_batchnorm
from tvm_shuffle.schedules import int8_gpu
from tvm_shuffle.schedules.constants import GPU
from tvm_shuffle.tvm_compat import Schedule, ms, tvm

INT8 = precisions.get("int8")
CUDA = "cuda-sm_90"
NVCC = shutil.which("nvcc") or shutil.which(os.path.join(cuda_codegen.DEFAULT_CUDA_PATH, "bin", "nvcc"))
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="needs the CUDA toolkit (nvcc)")
SHAPE = (1, 3, 10, 10)  # 100 pixels: no whole number of 16-pixel vectors, so the 1x1 kernels pad (int8_pad)


class OddUnit(torch.nn.Module):
    """Every stage the int8 kernels have: channels no whole quads (10), a padded plane, a shuffle, a 70-way classifier."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 20, 3, padding=1)
        self.stem_bn = torch.nn.BatchNorm2d(20)
        self.branch = torch.nn.Conv2d(10, 10, 1)  # 10 input channels: the weights are padded to 12 (int8_weights)
        self.branch_bn = torch.nn.BatchNorm2d(10)
        self.mix = torch.nn.Conv2d(20, 24, 1)  # reads the shuffled concat through a gather (int8_gather)
        self.fc = torch.nn.Linear(24, 70)  # 70 outputs: padded to 80 (a dense_int8 kernel)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        a, b = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat([a, torch.relu(self.branch_bn(self.branch(b)))], 1), 2)
        return self.fc(torch.relu(self.mix(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def odd_unit() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(OddUnit()).eval()


def calibration(shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((8, *shape[1:])).astype(np.float32)


def int8_kernels(module, shape=SHAPE) -> "tvm.IRModule":
    """The model's kernels as the CUDA build lowers them (int8 graph pass, legalized, unscheduled)."""
    imported = frontends.import_model(module, input_shape=shape)
    mod = passes.optimize(imported.mod, precision="int8",
                          calibration=quantize.load_calibration(calibration(shape), imported.input_shape))
    return build.lower(mod, targets.get(CUDA))


def serial(func) -> "tvm.tirx.PrimFunc":
    """``func`` with its GPU thread loops made serial: every thread's work one after the other, on a CPU.

    Each thread's loop first runs the whole block's shared-memory stage (its
    loop bound to the threads becomes serial too), so every thread reads the
    values the block's barrier would have published.
    """
    text = func.script()
    serial_text = re.sub(r'T\.thread_binding\(([^,]+), thread="[^"]+"', r"T.serial(\1", text)
    assert serial_text != text
    return tvm.script.from_source(serial_text)


def run_kernel(func, args: list[np.ndarray]) -> np.ndarray:
    """The last argument (the output) after one call of ``func`` compiled for this CPU."""
    tensors = [tvm.runtime.tensor(a) for a in args]
    tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target="llvm")["main"](*tensors)
    return tensors[-1].numpy()


def reference_schedule(func) -> tuple[Schedule, int8_gpu.Launch] | None:
    """``func`` scheduled as :class:`~int8_gpu.Int8GPU` does, the dp4a step in plain TIR; None for other kernels."""
    sch = Schedule(func)
    kernel = int8_gpu.find(sch)
    if kernel is None:
        return None
    int8_gpu.register_intrinsics()
    return sch, int8_gpu.schedule(sch, kernel, intrin=int8_gpu.DP4A_REFERENCE_INTRIN)


def random_args(func, rng) -> list[np.ndarray]:
    infos = ms.arg_info.ArgInfo.from_prim_func(func)
    return [rng.integers(-128, 128, [int(d) for d in info.shape]).astype("int8") if str(info.dtype) == "int8"
            else rng.standard_normal([int(d) for d in info.shape]).astype(str(info.dtype)) for info in infos]


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


# ---------------------------------------------------------------------------
# Which kernels, which launch shapes


def test_the_rule_takes_the_int8_kernels_on_gpus_only(odd_unit):
    lowered = int8_kernels(odd_unit)
    cuda, x86 = targets.get(CUDA).tvm_target(), targets.get("x86-avx2").tvm_target()
    taken = {}
    for gv, func in lowered.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            taken[gv.name_hint] = int8_gpu.Int8GPU().apply(func, cuda, False) is not None
            assert int8_gpu.Int8GPU().apply(func, x86, False) is None
    int8 = {name for name, ok in taken.items() if ok}
    assert {name for name in taken if "int8" in name} <= int8  # conv2d_int8, dense_int8 (gathered ones too)
    assert len(int8) == 3 and any("dense_int8" in name for name in int8), taken  # branch, mix, classifier
    assert not any(ok for name, ok in taken.items() if name not in int8)


@pytest.mark.parametrize("channels, pixels, quads, images", [
    (116, 208, 29, 1), (58, 784, 15, 1), (232, 64, 58, 1), (1024, 64, 116, 1), (58, 3136, 6, 1),  # ShuffleNetV2 1.0x
    (1008, 1, 256, 1), (1008, 64, 256, 1),  # its classifier at batch 1 and 64 (pixels: the batch)
    (116, 208, 29, 64), (8, 256, 2, 1), (7, 49, 1, 1),
])
def test_launch_shapes_divide_every_loop_and_fit_a_block(channels, pixels, quads, images):
    shape = int8_gpu.launch(channels, pixels, quads, images)
    assert channels % (shape.channels * shape.channel_threads) == 0
    assert pixels % (shape.pixels * shape.pixel_threads) == 0
    assert quads % shape.chunk == 0
    assert shape.threads <= GPU.threads_per_block
    assert shape.chunk * shape.pixels * shape.pixel_threads * 4 <= int8_gpu.SHARED_BYTES
    if channels * pixels * images >= 8 * GPU.threads_per_block:
        assert shape.threads >= int8_gpu.WARP  # no block of a few threads where there is work for a warp


def test_shufflenet_blocks_cover_29_channels_at_once():
    """58, 116 and 232 channels are 29 x 2^k: a block of 4 pixels x 29 channels quantizes each input word once per 29 outputs."""
    stage3 = int8_gpu.launch(116, 208, 29)
    assert (stage3.pixel_threads, stage3.channel_threads, stage3.chunk) == (4, 29, 29)
    classifier = int8_gpu.launch(1008, 1, 256)  # 1000 outputs padded to 1008, batch 1
    assert classifier.threads == 28 and classifier.chunk == 256  # 36 blocks of 28 threads, one barrier


# ---------------------------------------------------------------------------
# The arithmetic, on the CPU


@pytest.mark.parametrize("batch", [1, 3])
def test_the_gpu_schedule_computes_each_kernel_exactly(odd_unit, batch):
    """Scheduled for the GPU, run serially on the CPU: the unscheduled kernel's outputs, bit for bit."""
    lowered = int8_kernels(odd_unit, (batch, *SHAPE[1:]))
    rng = np.random.default_rng(0)
    checked = []
    for gv, func in lowered.functions.items():
        scheduled = reference_schedule(func) if isinstance(func, tvm.tirx.PrimFunc) else None
        if scheduled is None:
            continue
        sch, shape = scheduled
        # The same schedule as the CUDA build's, but for the step's implementation.
        cuda = Schedule(func)
        int8_gpu.schedule(cuda, int8_gpu.find(cuda))
        assert str(sch.trace).replace(int8_gpu.DP4A_REFERENCE_INTRIN, int8_gpu.DP4A_INTRIN) == str(cuda.trace)
        args = random_args(func, rng)
        expected = run_kernel(func, [a.copy() for a in args])
        assert np.abs(expected).max() > 0
        np.testing.assert_array_equal(run_kernel(serial(sch.mod["main"]), args), expected, err_msg=gv.name_hint)
        checked.append((gv.name_hint, shape))
    assert len(checked) == 3, checked
    if batch == 3:
        assert any(shape.pixels == 1 and shape.pixel_threads == 3 for name, shape in checked if "dense" in name)


@pytest.mark.skipif(not cpu_has("avx2"), reason="the x86 int8 build runs AVX2 code")
def test_a_model_with_the_gpu_int8_schedules_matches_the_x86_int8_build(odd_unit):
    """The whole model, its int8 kernels scheduled for the GPU (run serially), built with the weights packed once."""
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    lowered = int8_kernels(odd_unit)
    replaced = 0
    for gv, func in list(lowered.functions.items()):
        scheduled = reference_schedule(func) if isinstance(func, tvm.tirx.PrimFunc) else None
        if scheduled is not None:
            lowered.update_func(gv, serial(scheduled[0].mod["main"]))
            replaced += 1
    assert replaced == 3
    ours = run_packed_on_cpu(lowered, x)
    x86 = ts.compile(odd_unit, "x86-avx2", input_shape=SHAPE, precision="int8", calibration=calibration(), quiet=True)
    np.testing.assert_allclose(ours, x86(x)[0], rtol=1e-5, atol=1e-5 * np.abs(ours).max())
    with torch.no_grad():
        reference = odd_unit(torch.from_numpy(x)).numpy()
    assert relative_error(ours, reference) < INT8.tolerance


# ---------------------------------------------------------------------------
# The CUDA build: device code with dp4a


def kernel_bodies(source: str) -> dict[str, str]:
    """Each ``__global__`` function's name and body in CUDA source."""
    parts = re.split(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\([^)]*\) \{', source)
    return dict(zip(parts[1::2], parts[2::2]))


def cubin_of(library: Path) -> bytes:
    """The sm_XY ELF (cubin) inside the library's fatbin, by its ELF header's extents."""
    data = library.read_bytes()
    start = data.index(b"\x7fELF", data.index(cuda_codegen.FATBIN_MAGIC))
    ph_offset, sh_offset = struct.unpack_from("<QQ", data, start + 0x20)
    ph_size, ph_count, sh_size, sh_count = struct.unpack_from("<HHHH", data, start + 0x36)
    return data[start:start + max(ph_offset + ph_size * ph_count, sh_offset + sh_size * sh_count)]


def nvdisasm() -> str | None:
    """nvdisasm from PATH, the CUDA toolkit, or the ``nvidia-cuda-nvdisasm`` wheel."""
    candidates = [shutil.which("nvdisasm"), os.path.join(os.environ.get("CUDA_PATH", cuda_codegen.DEFAULT_CUDA_PATH),
                                                         "bin", "nvdisasm")]
    try:
        import nvidia

        candidates += [str(p) for root in nvidia.__path__ for p in sorted(Path(root).glob("cu*/bin/nvdisasm"))]
    except ImportError:
        pass
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def cuda_int8(odd_unit, tmp_path_factory):
    """The model built int8 for sm_90 (as ts.compile does), saved; its CUDA source."""
    if NVCC is None:
        pytest.skip("needs the CUDA toolkit (nvcc)")
    compiled = ts.compile(odd_unit, CUDA, input_shape=SHAPE, precision="int8", calibration=calibration(), quiet=True)
    out = compiled.save(tmp_path_factory.mktemp("cuda_int8"))
    source = "".join(m.inspect_source() for m in _modules(compiled._built.executable.mod) if m.kind == "cuda")
    return compiled, out, source


def _modules(module) -> list:
    """``module`` and every module it imports, depth first."""
    return [module, *(m for imported in module.imports for m in _modules(imported))]


@needs_nvcc
def test_an_int8_cuda_build_is_native_device_code_with_dp4a_in_every_int8_kernel(cuda_int8):
    compiled, out, source = cuda_int8
    precision = compiled.manifest["precision"]
    assert precision["name"] == "int8" and precision["mode"] == "native"
    assert cuda_codegen.has_device_code(out / "model.so")  # a fatbin, no CUDA C source
    kernels = kernel_bodies(source)
    dp4a = {name: body.count("__dp4a(") for name, body in kernels.items() if "__dp4a(" in body}
    # One kernel per int8 layer (the 1x1 convs and the classifier), each with its dp4a steps unrolled;
    # no weight packing left to run per call (it was folded into the constants at build time).
    calibrated = precision["calibration"]
    assert len(dp4a) == calibrated["int8_convs"] + calibrated["int8_dense"] == 3, dp4a
    assert all(count >= 2 for count in dp4a.values()), dp4a  # the 12- and 20-channel convs: 3 and 5 quads
    assert not [name for name in kernels if build.WEIGHT_PACKING_SUFFIX in name]
    assert "dp4a.u32.s32" in source  # TVM's declaration of __dp4a(unsigned int, int, int)


@needs_nvcc
def test_the_ptx_of_an_int8_cuda_build_uses_dp4a(cuda_int8, tmp_path):
    """The same source compiled to PTX by nvcc: one dp4a.u32.s32 per __dp4a call."""
    _, _, source = cuda_int8
    (tmp_path / "kernels.cu").write_text(source)
    subprocess.run([NVCC, "-ptx", "-arch=sm_90", "-o", str(tmp_path / "kernels.ptx"), str(tmp_path / "kernels.cu")],
                   check=True, capture_output=True)
    ptx = (tmp_path / "kernels.ptx").read_text()
    entries = re.split(r"\.visible \.entry (\w+)\(", ptx)
    in_ptx = {name: body.count("dp4a.u32.s32") for name, body in zip(entries[1::2], entries[2::2])}
    in_source = {name: body.count("__dp4a(") for name, body in kernel_bodies(source).items()}
    assert {name for name, count in in_ptx.items() if count} == {name for name, count in in_source.items() if count}
    assert all(in_ptx[name] >= count for name, count in in_source.items()), (in_ptx, in_source)


@needs_nvcc
def test_the_machine_code_of_an_int8_cuda_build_uses_idp4a(cuda_int8, tmp_path):
    """sm_90 SASS from the library's own cubin: IDP.4A.U8.S8 (u8 x s8) in each int8 kernel."""
    tool = nvdisasm()
    if tool is None:
        pytest.skip("needs nvdisasm (the CUDA toolkit, or pip install nvidia-cuda-nvdisasm)")
    _, out, _ = cuda_int8
    (tmp_path / "model.cubin").write_bytes(cubin_of(out / "model.so"))
    sass = subprocess.run([tool, str(tmp_path / "model.cubin")], check=True, capture_output=True, text=True).stdout
    functions = re.split(r"\n\s*\.text\.(\w+):", sass)
    idp4a = {name: body.count("IDP.4A.U8.S8") for name, body in zip(functions[1::2], functions[2::2])
             if "IDP.4A" in body}
    assert len(idp4a) == 3 and all(count >= 2 for count in idp4a.values()), idp4a
