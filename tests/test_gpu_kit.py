"""The GPU benchmark kit (benchmarks/gpu): CUDA bundles with CUDA graphs, packed and self-checked without a GPU.

The kit is packed once for ShuffleNetV2 0.5x at 1x3x64x64 (batch 1), in
fp32, int8 and fp16: its bundles must hold device code, never CUDA source;
``run_gpu.py --self-check`` must pass on it here, fail on a damaged copy,
and ``run_gpu.py --out`` must refuse, in one line, to run without a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tvm_shuffle import cuda_codegen, precisions

GPU_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu"
NVCC = shutil.which("nvcc") or shutil.which(os.path.join(cuda_codegen.DEFAULT_CUDA_PATH, "bin", "nvcc"))
TOOLS = NVCC and shutil.which("cmake") and shutil.which("g++")

pytestmark = pytest.mark.skipif(not TOOLS, reason="needs the CUDA toolkit (nvcc), cmake and g++")


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_kit_{name}", GPU_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pack = _module("pack")
run_gpu = _module("run_gpu")

VM_TEXT = """@main:
  call  vm.builtin.check_tensor_info in: %0, i4, c[0], c[1] dst: %void
  call  vm.builtin.cuda_graph.get_cached_alloc in: %vm, f[cuda_graph_alloc], i0 dst: %1
  call  fused_conv2d_add_relu in: %0, c[3], c[4], %3 dst: %void
  call  vm.builtin.cuda_graph.run_or_capture in: %vm, f[main_cuda_graph_capture], %15, i0 dst: %16
  call  fused_matmul_add8 in: %17, c[10], c[11], %19 dst: %void
  ret   %20

@cuda_graph_alloc:
  call  vm.builtin.alloc_storage in: %vm, c[12], i0, c[7], c[8] dst: %0

@main_cuda_graph_capture:
  call  vm.builtin.alloc_tensor in: %2, i0, c[5], c[0] dst: %5
  call  max_pool2d in: %0, %5 dst: %void
  call  fused_conv2d1_add1 in: %5, c[3], %6 dst: %void
  call  fused_conv2d2_add2_relu1 in: %6, c[4], %7 dst: %void
"""


def test_launch_plan_reads_the_vm_bytecode():
    assert pack.parse_launch_plan(VM_TEXT) == {"kernels_outside_graphs": 2, "graph_launches": 1,
                                               "kernels_in_graphs": 3, "launches_per_inference": 3}


def test_cuda_bundle_replays_its_network_as_one_cuda_graph(tmp_path):
    """Batch-1 ShuffleNet is launch-bound on a large GPU: the VM launches the stem, one graph and the classifier."""
    import tvm_shuffle as ts

    library = ts.compile("shufflenet_v2_x0_5", "cuda-sm_90", input_shape=(1, 3, 64, 64), quiet=True).save(
        tmp_path) / "model.so"
    plan = pack.launch_plan(library)
    assert plan["graph_launches"] == 1 and plan["kernels_outside_graphs"] <= 2, plan
    assert plan["kernels_in_graphs"] >= 40, plan  # every unit's kernels, captured
    assert pack.device_code(library) == {"fatbin": True, "cuda_source": False, "cuda_graph": True}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "kit"
    code = pack.main(["--out", str(out), "--models", "shufflenet_v2_x0_5", "--batches", "1", "--input-size", "64",
                      "--int8", "shufflenet_v2_x0_5:1", "--fp16", "shufflenet_v2_x0_5:1", "--work-dir", str(out.parent / "no-records"),
                      "--no-self-check"])
    assert code == 0
    return out


def _self_check(kit_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(kit_dir / "run_gpu.py"), "--self-check"], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_pack_writes_a_small_kit_of_device_code(kit):
    info = json.loads((kit / "kit.json").read_text())
    total = sum(f.stat().st_size for f in kit.rglob("*") if f.is_file())
    assert total < 60e6
    bundle, int8, fp16 = info["bundles"]
    assert bundle["name"] == "shufflenet_v2_x0_5_b1" and bundle["input_shape"] == [1, 3, 64, 64]
    assert bundle["schedules"] == "default schedules" and bundle["precision"]["name"] == "fp32"
    assert bundle["device_code"] == {"fatbin": True, "cuda_source": False, "cuda_graph": True}
    assert bundle["launch_plan"]["graph_launches"] == 1
    for rel in ("run_gpu.py", "app/classify", info["ffi_wheel"], bundle["weights"], bundle["expected"],
                "py/tvm_shuffle/models.py", f"{bundle['dir']}/model.so", f"{bundle['dir']}/manifest.json"):
        assert rel in info["files"] or rel in info["copies"] or rel in info["compressed"], rel
    # The int8 bundle: dp4a kernels (native), the synthetic calibration set, the int8 tolerance to check it with.
    assert int8["name"] == "shufflenet_v2_x0_5_b1_int8" and int8["weights"] == bundle["weights"]
    assert int8["precision"]["name"] == "int8" and int8["precision"]["mode"] == "native"
    assert int8["precision"]["tolerance"] == precisions.get("int8").tolerance
    assert int8["precision"]["calibration"]["source"] == "synthetic" and int8["batchnorm_seed"] == pack.BN_SEED
    assert int8["device_code"] == {"fatbin": True, "cuda_source": False, "cuda_graph": True}
    assert int8["launch_plan"]["graph_launches"] == 1
    assert int8["launch_plan"]["kernels_in_graphs"] + int8["launch_plan"]["kernels_outside_graphs"] == \
        bundle["launch_plan"]["kernels_in_graphs"] + bundle["launch_plan"]["kernels_outside_graphs"]
    library = run_gpu.stored_bytes(kit, info, f"{int8['dir']}/model.so")
    assert int8["expected_x86_int8"] in info["files"] and b"__dp4a" not in library
    # The fp16 bundle: tensor-core kernels (native on sm_90), the same randomized network, fp16's tolerance.
    assert fp16["name"] == "shufflenet_v2_x0_5_b1_fp16" and fp16["batchnorm_seed"] == pack.BN_SEED
    assert fp16["precision"] == {"name": "fp16", "mode": "native", "tolerance": precisions.get("fp16").tolerance}
    assert fp16["device_code"] == {"fatbin": True, "cuda_source": False, "cuda_graph": True}
    assert "expected_x86_int8" not in fp16 and fp16["expected"] in info["files"]
    assert "-cp312-" in info["ffi_wheel"] and info["tvm_ffi"] in info["ffi_wheel"]
    # Each model.so is stored gzipped; run_gpu.py writes it back, checked against the bundle's manifest.
    assert info["compressed"][f"{bundle['dir']}/model.so"]["stored"] == f"{bundle['dir']}/model.so.gz"
    # The runtime libraries are stored once, and put back in place by run_gpu.py.
    assert info["copies"][f"{bundle['dir']}/lib/libtvm_ffi.so"] == info["copies"]["app/libtvm_ffi.so"]


@pytest.mark.slow
def test_the_int8_network_is_within_the_int8_tolerance_on_the_cpu(kit):
    """What the GPU run checks the int8 bundle against: the int8 network's error, here from its x86 build."""
    import numpy as np

    info = json.loads((kit / "kit.json").read_text())
    int8 = info["bundles"][1]
    ours, fp32 = np.load(kit / int8["expected_x86_int8"]), np.load(kit / int8["expected"])
    check = run_gpu.compare(ours, fp32, int8["precision"]["tolerance"])
    assert check["ok"] and 1e-4 < check["rel_err"], check  # int8 error shows (randomized BatchNorm), within tolerance
    # The randomized network differs from the zoo's: its PyTorch logits are the fp32 bundle's no more.
    assert not np.allclose(fp32, np.load(kit / info["bundles"][0]["expected"]), atol=1e-3)


@pytest.mark.slow
def test_self_check_passes_here(kit):
    done = _self_check(kit)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "self-check passed"
    assert all(line.startswith("ok ") for line in lines[:-1]), done.stdout
    assert any("C++ app" in line for line in lines) and any("PyTorch on the CPU" in line for line in lines)
    for name in ("shufflenet_v2_x0_5_b1_int8", "shufflenet_v2_x0_5_b1_fp16"):
        assert any(line.startswith(f"ok   {name}: PyTorch on the CPU") for line in lines), done.stdout


@pytest.mark.slow
def test_self_check_names_a_damaged_file(kit, tmp_path):
    damaged = tmp_path / "kit"
    shutil.copytree(kit, damaged)
    info = json.loads((damaged / "kit.json").read_text())
    library = damaged / info["bundles"][0]["dir"] / "model.so.gz"
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))
    done = _self_check(damaged)
    assert done.returncode == 1
    assert f"FAIL {len(info['files'])} files match kit.json: {info['bundles'][0]['dir']}/model.so.gz does not match" \
        in done.stdout


@pytest.mark.slow
def test_run_without_a_gpu_says_so_in_one_line(kit, tmp_path):
    done = subprocess.run([sys.executable, str(kit / "run_gpu.py"), "--out", str(tmp_path / "results")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == run_gpu.NO_GPU_EXIT
    assert done.stderr.strip().count("\n") == 0 and "no CUDA GPU" in done.stderr
    assert not (tmp_path / "results").exists()


def test_run_gpu_needs_out_or_self_check(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_gpu.main([])
    assert exit_.value.code == 2 and "--out RESULTS is required" in capsys.readouterr().err


def test_reduced_precision_bundles_follow_the_fp32_bundle_of_their_model_and_batch():
    reduced = {"int8": [("a", 1)], "fp16": [("a", 1), ("c", 1)]}
    assert pack.plan(["a", "b"], [1, 64], reduced) == [
        ("a", 1, "fp32"), ("a", 1, "int8"), ("a", 1, "fp16"), ("a", 64, "fp32"), ("b", 1, "fp32"), ("b", 64, "fp32"),
        ("c", 1, "fp16")]


@pytest.mark.parametrize("argv, message", [
    (["--arch", "sm_12"], "--arch sm_12 has no CUDA preset; valid: sm_75, sm_80"),
    (["--batches", "0"], "--batches '0' must be positive integers"),
    (["--models", "resnet50"], "unknown model(s) resnet50"),
    (["--int8", "shufflenet_v2_x0_5"], "--int8 'shufflenet_v2_x0_5': each item is MODEL:BATCH"),
    (["--int8", "resnet50:1"], "unknown model(s) resnet50"),
    (["--fp16", "shufflenet_v2_x0_5:0"], "--fp16 'shufflenet_v2_x0_5:0': each item is MODEL:BATCH"),
    (["--fp16", "resnet50:1"], "unknown model(s) resnet50"),
])
def test_pack_rejects_bad_arguments_in_one_line(tmp_path, capsys, argv, message):
    assert pack.main(["--out", str(tmp_path / "kit"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0


def test_markdown_of_results_names_every_engine():
    results = {
        "machine": {"gpu": "NVIDIA H200", "compute_capability": "sm_90", "sms": 132, "torch": "2.9", "cuda": "13.0",
                    "cudnn": 91000, "driver": "580"},
        "kit": {"built_at": "2026-12-05", "target": "cuda-sm_90", "tvm": "0.27.0.post1"}, "rounds": 5,
        "finished_at": "2026-12-05T10:00:00",
        "bundles": [{"model": "shufflenet_v2_x1_0", "batch": 1, "input_shape": [1, 3, 224, 224],
                     "schedules": "default schedules",
                     "launch_plan": {"kernels_outside_graphs": 2, "graph_launches": 1, "kernels_in_graphs": 57,
                                     "launches_per_inference": 3},
                     "reference_vs_kit_cpu": {"ok": True, "max_abs_err": 1e-6, "top1_agreement": 1.0},
                     "engines": [
                         {"engine": "pytorch eager (cuDNN, NCHW)", "median_ms": 2.0, "speedup_vs_eager": 1.0,
                          "speedup_range": [1.0, 1.0], "check": {"ok": True, "max_abs_err": 0.0, "top1_agreement": 1.0},
                          "launches": {"gpu_kernels": 60, "launch_calls": 60}, "note": ""},
                         {"engine": "tvm_shuffle (C++ app, with host copies)", "median_ms": 1.0,
                          "speedup_vs_eager": 2.0, "speedup_range": [1.8, 2.1],
                          "check": {"ok": False, "max_abs_err": 0.5, "top1_agreement": 0.0},
                          "launches": {"static": {"kernels_outside_graphs": 2, "graph_launches": 1,
                                                  "kernels_in_graphs": 57, "launches_per_inference": 3}}, "note": ""}],
                     "skipped": [{"engine": "torch.compile (default)", "reason": "skipped: too little of the time budget"}]}],
    }
    text = run_gpu.markdown(results)
    assert "| pytorch eager (cuDNN, NCHW) | 2.000 | 1.00x [1.00, 1.00] | 60 | 60 |" in text
    assert "| tvm_shuffle (C++ app, with host copies) | 1.000 | 2.00x [1.80, 2.10] | 59 | 3 |" in text
    assert "OUTPUT MISMATCH" in text and "skipped: too little of the time budget" in text
    assert "Anchor: TensorRT fp32 on a T4 (mmdeploy), 1.37 ms." in text


def test_reduced_precision_rows_are_checked_by_relative_error_and_say_so():
    import numpy as np

    reference = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    close = reference * 1.02  # 2 % off everywhere: far past 1e-3, within the int8 tolerance
    assert not run_gpu.compare(close, reference)["ok"]
    check = run_gpu.compare(close, reference, precisions.get("int8").tolerance)
    assert check["ok"] and abs(check["rel_err"] - 0.02) < 1e-6 and check["top1_agreement"] == 1.0
    assert not run_gpu.compare(reference * 1.2, reference, precisions.get("int8").tolerance)["ok"]
    assert run_gpu._check(close, reference, 0.05, x86_int8=close)["vs_x86_int8"]["rel_err"] == 0.0
    row = {"model": "shufflenet_v2_x1_0", "batch": 1, "input_shape": [1, 3, 224, 224], "schedules": "default schedules",
           "precision": {"name": "int8", "mode": "native", "tolerance": 0.05},
           "launch_plan": {"kernels_outside_graphs": 2, "graph_launches": 1, "kernels_in_graphs": 57,
                           "launches_per_inference": 3},
           "reference_vs_kit_cpu": {"ok": True, "max_abs_err": 1e-6},
           "engines": [{"engine": "tvm_shuffle int8 (Python, CUDA graph)", "median_ms": 0.5, "note": "",
                        "check": {**check, "vs_x86_int8": {"rel_err": 1e-5}}, "launches": None}], "skipped": []}
    text = run_gpu.markdown({"machine": {"gpu": "H200", "compute_capability": "sm_90", "sms": 132, "torch": "2.9",
                                         "cuda": "13.0", "cudnn": 1, "driver": "580"},
                             "kit": {"built_at": "now", "target": "cuda-sm_90", "tvm": "0.27"}, "rounds": 5,
                             "finished_at": "now", "bundles": [row]})
    assert "## shufflenet_v2_x1_0, batch 1 (1x3x224x224), int8 (native), tvm_shuffle default schedules" in text
    assert "relative logit error at most 0.05" in text
    assert "| tvm_shuffle int8 (Python, CUDA graph) | 0.500 | – | – | – | 0.080000 | 1.00 | 0.020000 | 0.000010 |" in text


PYTHON_PATH_CHECK = """
import importlib.util, sys
import numpy as np, torch, tvm_ffi
spec = importlib.util.spec_from_file_location("run_gpu", sys.argv[1])
run_gpu = importlib.util.module_from_spec(spec); spec.loader.exec_module(run_gpu)
model = run_gpu.TvmBundle(tvm_ffi, __import__("pathlib").Path(sys.argv[2]))
x = torch.from_numpy(np.load(sys.argv[3])).clone()  # torch's allocation is 64-byte aligned, as TVM's kernels need
np.save(sys.argv[4], model(x).numpy())
"""


def test_the_kits_python_loader_runs_a_bundle(tiny_module, tiny_input, tmp_path):
    """run_gpu.TvmBundle, on an x86 bundle (the same calls as on a CUDA one, with kDLCPU), in a process without TVM."""
    import numpy as np
    import torch

    import tvm_shuffle as ts

    bundle = ts.compile(tiny_module, "x86", example_inputs=(torch.from_numpy(tiny_input),), quiet=True).save(
        tmp_path / "bundle")
    np.save(tmp_path / "x.npy", tiny_input)
    done = subprocess.run([sys.executable, "-c", PYTHON_PATH_CHECK, str(GPU_DIR / "run_gpu.py"), str(bundle),
                           str(tmp_path / "x.npy"), str(tmp_path / "y.npy")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.no_grad():
        expected = tiny_module(torch.from_numpy(tiny_input)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-4, rtol=1e-4)
