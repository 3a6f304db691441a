"""fp16 and bf16 on CUDA (``schedules.tensorcore``): the 1x1 convolutions as tensor-core ``wmma`` kernels.

No GPU is needed. What is checked here:

* the registry: which target families build which precision (fp16 only
  CUDA: a CPU target refuses it with one error naming its precisions, and
  the CLI exits non-zero), and where each is native (bf16 tensor cores from
  sm_80; sm_75 is storage-only);
* the launch shapes of ShuffleNet's 1x1 convolutions (every split divides,
  the input tile fits in shared memory);
* the arithmetic of the schedule, on the CPU: each kernel scheduled exactly
  as for the GPU but with each 16 x 16 x 16 step left as plain loops over
  the same tiles (``tensorize=False``, the fragments in local memory, the
  thread loops serial) gives the unscheduled kernel's results bit for bit,
  and a whole model built that way stays within the precision's tolerance
  of PyTorch in fp32 (ShuffleNetV2 0.5x: slow); the storage-only schedule
  (bf16 on sm_75) gives the same bits too;
* the CUDA build (nvcc without a driver, ``cuda_codegen``) for each reduced
  float and compute capability: native or storage-only as the registry
  says; ``wmma::mma_sync`` in every 1x1 kernel of a native build, and
  ``HMMA`` (``HMMA.16816.F32`` fp16, ``HMMA.16816.F32.BF16`` bf16; sm_75's
  fp16 ``HMMA.1688.F32``) in the
  machine code of each (nvdisasm, where installed).

Not checked without a GPU: that the GPU runs the code (the fragments'
thread mapping, barriers), the order in which the tensor cores add the
products of one 16 x 16 x 16 step, and how fast.
"""

from __future__ import annotations

import re
import subprocess

import ml_dtypes
import numpy as np
import pytest
import torch

import tvm_shuffle as ts
from conftest import run_packed_on_cpu
from test_int8_gpu import NVCC, OddUnit, SHAPE, _modules, cubin_of, kernel_bodies, nvdisasm, relative_error, serial
from tvm_shuffle import build, compile as compile_cli, frontends, passes, precisions, targets, tvm_compat
from tvm_shuffle.errors import UserError
from tvm_shuffle.models import build_model, randomize_batchnorm
from tvm_shuffle.schedules import tensorcore
from tvm_shuffle.schedules.constants import GPU
from tvm_shuffle.tvm_compat import Schedule, tvm

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="needs the CUDA toolkit (nvcc)")
# The precisions whose 1x1 convolutions are tensor-core kernels on CUDA, by weight dtype.
REDUCED = [p for p in precisions.PRECISIONS.values() if p.weights in tensorcore.DTYPES and "cuda" in p.families]
CUDA_TARGETS = [name for name, spec in targets.TARGETS.items() if spec.family == "cuda" and name != "cuda"]
CPU_TARGETS = ["x86-avx2", "arm-rpi4"]
# Tensor-core instructions by input dtype: HMMA.16816 (sm_80+) or HMMA.1688 (sm_75), fp32 sums.
HMMA = {"float16": re.compile(r"HMMA\.\d+\.F32 "), "bfloat16": re.compile(r"HMMA\.\d+\.F32\.BF16 ")}


@pytest.fixture(scope="module")
def odd_unit() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(OddUnit()).eval()


def tensor_core_kernels(module, precision: str, shape=SHAPE) -> "tvm.IRModule":
    """The model's kernels as the CUDA build lowers them (reduced-float graph pass, legalized, unscheduled)."""
    imported = frontends.import_model(module, input_shape=shape)
    mod = passes.optimize(imported.mod, precision=precision, tensor_cores=True)
    return build.lower(mod, targets.get("cuda-sm_90"))


def on_cpu(func, tensor_cores: bool = True) -> "tvm.tirx.PrimFunc":
    """``func`` scheduled as for the GPU (with plain-loop steps), its fragments local, its thread loops serial.

    ``tensor_cores=False``: the storage-only schedule (a GPU without tensor cores for the dtype).
    """
    sch = Schedule(func)
    if tensor_cores:
        tensorcore.schedule(sch, tensorcore.find(sch), tensorize=False)
    else:
        tensorcore.schedule_storage_only(sch, tensorcore.find(sch))
    text = serial(sch.mod["main"]).script()
    return tvm.script.from_source(re.sub(r'scope="wmma\.\w+"', 'scope="local"', text))


def random_args(func, rng) -> list[np.ndarray]:
    infos = tvm_compat.ms.arg_info.ArgInfo.from_prim_func(func)
    dtypes = {"bfloat16": ml_dtypes.bfloat16}
    return [rng.standard_normal([int(d) for d in info.shape]).astype(dtypes.get(str(info.dtype), str(info.dtype)))
            for info in infos]


def run_kernel(func, args: list[np.ndarray]) -> np.ndarray:
    tensors = [tvm.runtime.tensor(a) for a in args]
    tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target="llvm")["main"](*tensors)
    return tensors[-1].numpy()


# ---------------------------------------------------------------------------
# The registry


@pytest.mark.parametrize("target", CPU_TARGETS + CUDA_TARGETS)
@pytest.mark.parametrize("precision", list(precisions.PRECISIONS))
def test_a_precision_builds_for_its_families_and_refuses_the_others_by_name(precision, target):
    chosen, spec = precisions.get(precision), targets.get(target)
    if spec.family in chosen.families:
        chosen.check_family(spec)
        assert precision in precisions.for_family(spec.family)
        return
    with pytest.raises(UserError, match=rf"precision {precision} builds for .*; {target} \({spec.family}\) builds "
                                        + ", ".join(precisions.for_family(spec.family))):
        chosen.check_family(spec)


def test_the_compile_cli_refuses_fp16_on_a_cpu_target_in_one_line(tmp_path, capsys):
    code = compile_cli.main(["--model", "shufflenet_v2_x0_5", "--target", "x86-avx2", "--precision", "fp16",
                             "--out", str(tmp_path)])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "fp16" in err and "bf16" in err, err


@pytest.mark.parametrize("target", CUDA_TARGETS)
@pytest.mark.parametrize("precision", [p.name for p in REDUCED])
def test_tensor_cores_are_native_from_the_dtypes_compute_capability(precision, target):
    chosen, spec = precisions.get(precision), targets.get(target)
    dtype_arch = int(tensorcore.MIN_ARCH[chosen.weights][3:])
    assert chosen.mode(spec) == ("native" if int(spec.target["arch"][3:]) >= dtype_arch else chosen.fallback_mode)
    assert tensorcore.has_tensor_cores(spec.tvm_target(), chosen.weights) == (chosen.mode(spec) == "native")


# ---------------------------------------------------------------------------
# Launch shapes


@pytest.mark.parametrize("out_channels, channels", [
    (58, 58), (116, 116), (232, 232), (464, 464), (1024, 464), (24, 24), (48, 48), (192, 192), (976, 976),
])
def test_launch_shapes_divide_the_padded_channels_and_fit_shared_memory(out_channels, channels):
    out_tiles = tensorcore.padded(out_channels) // tensorcore.TILE
    warps = tensorcore.warps_per_block(out_tiles)
    chunk = tensorcore.channel_chunk(tensorcore.padded(channels))
    assert out_tiles % warps == 0 and 1 <= warps <= tensorcore.WARPS
    assert tensorcore.padded(channels) % chunk == 0 and chunk % tensorcore.TILE == 0
    assert tensorcore.TILE * chunk * 2 <= tensorcore.SHARED_BYTES
    assert warps * tensorcore.WARP <= GPU.threads_per_block


# ---------------------------------------------------------------------------
# The arithmetic, on the CPU


@pytest.mark.parametrize("tensor_cores", [True, False], ids=["tensor-cores", "storage-only"])
@pytest.mark.parametrize("precision", [p.name for p in REDUCED])
def test_the_gpu_schedule_computes_each_kernel_exactly(odd_unit, precision, tensor_cores):
    """Scheduled for the GPU (steps as loops), run serially on the CPU: the unscheduled kernel's outputs, bit for bit."""
    lowered = tensor_core_kernels(odd_unit, precision)
    rng = np.random.default_rng(0)
    checked = []
    for gv, func in lowered.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or tensorcore.find(Schedule(func)) is None:
            continue
        args = random_args(func, rng)
        expected = run_kernel(func, [a.copy() for a in args])
        assert np.abs(expected).max() > 0
        np.testing.assert_array_equal(run_kernel(on_cpu(func, tensor_cores), args), expected, err_msg=gv.name_hint)
        checked.append(gv.name_hint)
    assert len(checked) == 2, checked  # the branch conv and the conv reading the shuffle through a gather


def serial_model_logits(module, precision: str, shape) -> tuple[np.ndarray, np.ndarray]:
    """The model built with its 1x1 kernels scheduled for the GPU and run serially on the CPU; and PyTorch fp32's logits.

    The weights are padded once at build time, as in the CUDA build.
    """
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    lowered = tensor_core_kernels(module, precision, shape)
    for gv, func in list(lowered.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc) and tensorcore.find(Schedule(func)) is not None:
            lowered.update_func(gv, on_cpu(func))
    with torch.no_grad():
        reference = module(torch.from_numpy(x)).numpy()
    return run_packed_on_cpu(lowered, x), reference


@pytest.mark.parametrize("precision", [p.name for p in REDUCED])
def test_a_model_with_the_gpu_schedules_stays_within_tolerance_of_fp32(odd_unit, precision):
    ours, reference = serial_model_logits(odd_unit, precision, SHAPE)
    error = relative_error(ours, reference)
    assert 0 < error < precisions.get(precision).tolerance, error


@pytest.mark.slow
@pytest.mark.parametrize("precision", [p.name for p in REDUCED])
def test_shufflenet_with_the_gpu_schedules_stays_within_tolerance_of_fp32(precision):
    """ShuffleNetV2 0.5x (randomized BatchNorm, 64x64): its 20 1x1 kernels as on the GPU, run serially."""
    ours, reference = serial_model_logits(randomize_batchnorm(build_model("shufflenet_v2_x0_5"), 0), precision,
                                          (1, 3, 64, 64))
    assert 0 < relative_error(ours, reference) < precisions.get(precision).tolerance
    assert ours.argmax() == reference.argmax()


# ---------------------------------------------------------------------------
# The CUDA build: device code with tensor cores


def cuda_build(module, precision: str, target: str, out, shape=SHAPE):
    """The model built for ``target`` (as ts.compile does) and saved; its manifest, CUDA source and library."""
    compiled = ts.compile(module, target, input_shape=shape, precision=precision, quiet=True)
    directory = compiled.save(out)
    source = "".join(m.inspect_source() for m in _modules(compiled._built.executable.mod) if m.kind == "cuda")
    return compiled.manifest, source, directory / "model.so"


def sass_functions(library) -> dict[str, str]:
    tool = nvdisasm()
    if tool is None:
        pytest.skip("needs nvdisasm (the CUDA toolkit, or pip install nvidia-cuda-nvdisasm)")
    cubin = library.with_suffix(".cubin")
    cubin.write_bytes(cubin_of(library))
    sass = subprocess.run([tool, str(cubin)], check=True, capture_output=True, text=True).stdout
    functions = re.split(r"\n\s*\.text\.(\w+):", sass)
    return dict(zip(functions[1::2], functions[2::2]))


@needs_nvcc
@pytest.mark.parametrize("target", ["cuda-sm_80", "cuda-sm_90", "cuda-sm_75"])
@pytest.mark.parametrize("precision", [p.name for p in REDUCED])
def test_a_cuda_build_puts_every_1x1_convolution_on_tensor_cores_where_native(odd_unit, precision, target, tmp_path):
    manifest, source, library = cuda_build(odd_unit, precision, target, tmp_path)
    chosen = precisions.get(precision)
    assert manifest["precision"] == {"name": precision, "mode": chosen.mode(targets.get(target))}
    bodies = kernel_bodies(source)
    assert not [name for name in bodies if build.WEIGHT_PACKING_SUFFIX in name]  # padded at build time
    if manifest["precision"]["mode"] != "native":
        assert "mma_sync" not in source
        return
    tensor_core = {name for name, body in bodies.items() if "wmma::mma_sync" in body}
    # The branch conv, and the conv that reads the shuffle through a gather (the fusion names it conv2d_gathered).
    assert len(tensor_core) == 2 and all("conv2d_mma" in n or "conv2d_gathered" in n for n in tensor_core)
    hmma = {name: len(HMMA[chosen.weights].findall(body)) for name, body in sass_functions(library).items()}
    assert {name for name, count in hmma.items() if count} == tensor_core, hmma


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("precision", [p.name for p in REDUCED])
def test_shufflenet_on_sm_90_runs_every_1x1_convolution_on_tensor_cores(precision, tmp_path):
    """ShuffleNetV2 0.5x (24 to 1024 channels, 56x56 to 7x7 planes): HMMA in each 1x1 kernel's machine code."""
    model = randomize_batchnorm(build_model("shufflenet_v2_x0_5"))
    manifest, source, library = cuda_build(model, precision, "cuda-sm_90", tmp_path, shape=(1, 3, 224, 224))
    assert manifest["precision"]["mode"] == "native"
    tensor_core = {name for name, body in kernel_bodies(source).items() if "wmma::mma_sync" in body}
    hmma = {name for name, body in sass_functions(library).items() if HMMA[precisions.get(precision).weights].search(body)}
    assert hmma == tensor_core and len(tensor_core) >= 20, sorted(tensor_core)
