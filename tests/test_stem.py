"""The stem's convolution, ReLU and max-pool as one x86 kernel (:mod:`tvm_shuffle.schedules.stem`).

Each build is checked against PyTorch on shapes that exercise the kernel's
edges: odd convolution and pool sizes (a last pooled row or column whose
window hangs over the image), batch 2, and a pooled height that splits into
an odd number of parallel iterations.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tvm_shuffle as ts
from tvm_shuffle import build, models, passes, targets
from tvm_shuffle.frontends import import_model
from tvm_shuffle.schedules import stem

TOLERANCE = 1e-5  # relative to the largest output: fp32, summed in another order


def _stem(*, stride=2, pool=3, relu=True) -> torch.nn.Module:
    layers = [torch.nn.Conv2d(3, 24, 3, stride, 1), torch.nn.BatchNorm2d(24)]
    layers += [torch.nn.ReLU()] if relu else []
    layers += [torch.nn.MaxPool2d(pool, 2, 1)]
    return models.randomize_batchnorm(torch.nn.Sequential(*layers).eval())


def _kernel_names(compiled) -> set[str]:
    lowered = build.lower(compiled._built.mod, compiled.spec)
    return {gv.name_hint for gv in lowered.get_global_vars()}


def _relative_error(compiled, module, shape) -> float:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = module(torch.from_numpy(x)).detach().numpy()
    return float(np.abs(compiled(x)[0] - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 32, 32), (1, 3, 57, 61), (1, 3, 40, 36)])
@pytest.mark.parametrize("target", ["x86", "x86-avx2"])
def test_the_fused_stem_matches_pytorch(shape, target):
    module = _stem()
    compiled = ts.compile(module, target, example_inputs=(torch.zeros(shape),), quiet=True)
    names = _kernel_names(compiled)
    assert stem.STEM_POOL in names and not any("max_pool2d" in name for name in names), names
    assert _relative_error(compiled, module, shape) < TOLERANCE


@pytest.mark.parametrize("change", [{"stride": 1}, {"pool": 2}, {"relu": False}])
def test_other_chains_keep_their_kernels(change):
    module = _stem(**change)
    shape = (1, 3, 32, 32)
    compiled = ts.compile(module, "x86", example_inputs=(torch.zeros(shape),), quiet=True)
    assert stem.STEM_POOL not in _kernel_names(compiled)
    assert _relative_error(compiled, module, shape) < TOLERANCE


def test_arm_keeps_the_stem_and_pool_apart():
    imported = import_model(_stem(), example_inputs=(torch.zeros(1, 3, 32, 32),))
    lowered = build.lower(passes.optimize(imported.mod), targets.get("arm-rpi4"))
    assert stem.STEM_POOL not in {gv.name_hint for gv in lowered.get_global_vars()}


def test_the_zoo_stems_are_fused():
    compiled = ts.compile(models.build_model("shufflenet_v2_x0_5").eval(), "x86", input_shape=(1, 3, 64, 64), quiet=True)
    assert stem.STEM_POOL in _kernel_names(compiled)


@pytest.mark.parametrize(("pooled", "rows"), [(56, 7), (28, 7), (16, 8), (8, 4), (15, 5), (7, 7), (1, 1)])
def test_pooled_rows_split_evenly_between_two_threads_where_they_can(pooled, rows):
    assert stem.pooled_rows(pooled) == rows
