"""CUDA libraries hold compiled device code, even when built on a machine without a GPU.

Without a driver, TVM 0.27 silently exports CUDA C source instead of
kernels; :mod:`tvm_shuffle.cuda_codegen` makes it compile with nvcc.
The artifact is inspected: a fatbin is embedded, and no CUDA C source.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tvm_shuffle import compile as compile_cli
from tvm_shuffle import cuda_codegen

NVCC = shutil.which("nvcc") or shutil.which(os.path.join(cuda_codegen.DEFAULT_CUDA_PATH, "bin", "nvcc"))

pytestmark = pytest.mark.skipif(NVCC is None, reason="needs the CUDA toolkit (nvcc)")


def test_compile_for_cuda_embeds_device_code_not_source(tiny_onnx, tmp_path):
    out = tmp_path / "cuda"
    assert compile_cli.main(["--onnx", str(tiny_onnx), "--target", "cuda-sm_80", "--out", str(out)]) == 0
    library = (out / "model.so").read_bytes()
    assert cuda_codegen.FATBIN_MAGIC in library
    assert b"__global__" not in library and b'extern "C"' not in library
    assert cuda_codegen.has_device_code(out / "model.so")



def test_tuning_candidates_for_cuda_hold_device_code(tiny_onnx, tmp_path):
    """What ``tune --target cuda`` sends to the GPU machine: a library with a fatbin per candidate."""
    from tvm_shuffle import build, frontends, passes, targets, tvm_compat
    from tvm_shuffle.tuning import builder, tasks
    from tvm_shuffle.tvm_compat import ms

    spec = targets.get("cuda-sm_80")
    cuda_codegen.enable_device_code()
    target = tasks.tuning_target(spec, host_cores=1)
    lowered = build.lower(passes.optimize(frontends.from_onnx_file(tiny_onnx).mod), spec)
    task = next(t for t in tasks.extract(lowered, target) if "conv2d" in t.name)
    tvm_compat.import_tensor_intrinsics()  # what tasks.contexts does: TuneContext's own import is slow
    context = ms.TuneContext(mod=task.mod, target=target, space_generator="post-order-apply",
                             search_strategy="replay-trace", task_name=task.name, num_threads=1)
    context.pre_tuning(max_trials=2, num_trials_per_iter=2, design_spaces=context.generate_design_space(),
                       database=ms.database.MemoryDatabase(), cost_model=ms.cost_model.RandomModel())
    candidates = context.generate_measure_candidates()
    assert candidates
    results = builder.InProcessBuilder(threads=1).build(
        [ms.builder.BuilderInput(c.sch.mod, target) for c in candidates])
    for result in results:
        assert result.error_msg is None, result.error_msg
        assert cuda_codegen.has_device_code(result.artifact_path)


def test_a_depthwise_conv_of_a_1x1_plane_builds_to_device_code(tmp_path):
    """ShuffleNetV2 0.5x's stage 4 at 32x32: a depthwise conv on a 1x1 plane, which dlight's GEMV rule rejects."""
    import torch

    from tvm_shuffle import api, frontends

    depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
    imported = frontends.from_torch_module(depthwise.eval(), (1, 8, 1, 1))
    out = api.compile(imported, "cuda-sm_80", quiet=True).save(tmp_path / "cuda")
    assert cuda_codegen.has_device_code(out / "model.so")
