"""Default CUDA schedules (``schedules.gpu``): which rule takes which kernel, launch shapes, and exact results.

No GPU is needed: kernels are lowered and scheduled for ``cuda-sm_80`` and
compiled to CUDA source. A :class:`DirectConv` schedule's threads share
nothing, so its arithmetic is checked on the CPU by replaying its trace
without the thread bindings.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import C, N, TOLERANCE, conv_kernels, conv_layer, relax_graph, stride2_unit, v1_unit, v2_units
from tvm_shuffle import build, targets
from tvm_shuffle.schedules import default_schedule, fuse_shuffles, gpu
from tvm_shuffle.schedules.analysis import conv_shape
from tvm_shuffle.schedules.constants import GPU, GPUConstants
from tvm_shuffle.schedules.gpu import DirectConv, channels_per_thread
from tvm_shuffle.tvm_compat import Schedule, Trace, dlight, ms, tvm

CUDA = "cuda-sm_80"


def without_thread_bindings(sch: Schedule, func) -> "tvm.tirx.PrimFunc":
    """``func`` scheduled by ``sch``'s trace minus its thread bindings: every GPU thread's work, one after another.

    That is the GPU kernel's result exactly when its threads share nothing
    (no shared memory, no barrier), as in :class:`DirectConv`'s schedules,
    so its index arithmetic can be checked on the CPU.
    """
    def kept(inst):
        return inst.kind.name != "Bind"

    trace = sch.trace
    serial = Schedule(func)
    Trace([i for i in trace.insts if kept(i)], {i: d for i, d in trace.decisions.items() if kept(i)}) \
        .apply_to_schedule(serial, remove_postproc=False)
    return serial.mod["main"]


def run_kernel(func, args: list[np.ndarray]) -> np.ndarray:
    """The last argument (the output) after one call of ``func`` compiled for this CPU."""
    tensors = [tvm.runtime.tensor(a) for a in args]
    tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target="llvm")["main"](*tensors)
    return tensors[-1].numpy()


def thread_extents(func) -> list[int]:
    """Extents of the loops bound to GPU threads and blocks, outermost first."""
    return [int(extent) for extent in re.findall(r"T\.thread_binding\((?:T\.int64\()?(\d+)", func.script())]


@pytest.mark.parametrize("constants", [GPU, GPUConstants(threads_per_block=32, channels_per_thread=4, min_blocks=1)],
                         ids=["default", "channel-tiles"])
def test_cuda_convolutions_give_each_thread_its_own_outputs(constants):
    """Stock and gathered, depthwise (stride 1 and 2) and 1x1 kernels: one thread per output (tile), exact results."""
    spec = targets.get(CUDA)
    target = spec.tvm_target()
    graphs = [stride2_unit(), v1_unit(3), v2_units()]
    kernels = [k for mod in graphs for k in conv_kernels(fuse_shuffles(mod), spec)]
    ours = {name: (func, sch) for name, func in kernels
            if (sch := DirectConv(constants).apply(func, target, False)) is not None}
    kinds = {name: conv_shape(Schedule(func)).kind for name, (func, _) in ours.items()}
    assert {(kind, "gathered" in name) for name, kind in kinds.items()} == \
        {(kind, gathered) for kind in ("depthwise", "pointwise") for gathered in (False, True)}
    rng = np.random.default_rng(0)
    tiles = set()
    for name, (func, sch) in ours.items():
        out_shape = [int(d) for d in ms.arg_info.ArgInfo.from_prim_func(func)[-1].shape]
        pixels = out_shape[2] * out_shape[3]
        per_thread = 1 if kinds[name] == "depthwise" else channels_per_thread(out_shape[1], pixels, constants)
        tiles.add(per_thread)
        outputs = int(np.prod(out_shape)) // per_thread
        blocks, threads = thread_extents(sch.mod["main"])
        assert threads == min(constants.threads_per_block, outputs) and blocks == -(-outputs // threads), name
        args = [rng.standard_normal([int(d) for d in info.shape]).astype(str(info.dtype))
                for info in ms.arg_info.ArgInfo.from_prim_func(func)]
        expected = run_kernel(func, [a.copy() for a in args])
        assert np.abs(expected).max() > 0, name
        np.testing.assert_allclose(run_kernel(without_thread_bindings(sch, func), args), expected,
                                   err_msg=name, **TOLERANCE)
    assert max(tiles) == (1 if constants is GPU else 4)  # these graphs are small: the default keeps one channel


def test_gpu_threads_sum_several_channels_only_while_the_gpu_stays_full():
    assert channels_per_thread(116, 14 * 14, GPU) == 1  # ShuffleNetV2 1.0x stage 3: 178 blocks at one channel
    assert channels_per_thread(58, 56 * 56, GPU) == 2  # 58 = 2 x 29
    assert channels_per_thread(232, 56 * 56, GPU) == 4


def test_cuda_untuned_and_tuning_start_from_our_convolution_schedule():
    """The build's schedule passes and the tuning seeds both use our rule where it applies (dlight's otherwise)."""
    spec = targets.get(CUDA)
    target = spec.tvm_target()
    for name, func in conv_kernels(fuse_shuffles(stride2_unit()), spec):
        ours = DirectConv().apply(func, target, False)
        seeded = default_schedule(func, target)
        assert (seeded is None) == (ours is None), name
        if ours is not None:
            assert str(seeded.trace) == str(ours.trace), name


def test_direct_conv_leaves_other_kernels_and_other_targets_alone():
    """The stem's dense 3x3 conv is dlight's Matmul's; on a CPU target no GPU rule applies."""
    stem = relax_graph(lambda bb, x: bb.emit(conv_layer(x, C, kernel=3, stride=2, relu=True)), (N, 3, 16, 16))
    cuda = targets.get(CUDA)
    ((_, func),) = conv_kernels(stem, cuda)
    assert DirectConv().apply(func, cuda.tvm_target(), False) is None
    assert dlight.gpu.Matmul().apply(func, cuda.tvm_target(), False) is not None
    x86 = targets.get("x86")
    ((_, pointwise),) = conv_kernels(relax_graph(lambda bb, x: bb.emit(conv_layer(x, C))), x86)
    assert DirectConv().apply(pointwise, x86.tvm_target(), False) is None


def test_dlight_rules_that_misread_convolutions_are_not_offered_them():
    """dlight's GEMV asserts on a depthwise conv of a 1x1 plane; NotForConvolutions does not hand it one."""
    spec = targets.get(CUDA)
    target = spec.tvm_target()
    one_pixel = relax_graph(lambda bb, x: bb.emit(conv_layer(x, C, kernel=3, groups=C)), (N, C, 1, 1))
    ((_, func),) = conv_kernels(one_pixel, spec)
    with target:
        with pytest.raises(AssertionError):
            dlight.gpu.GEMV().apply(func, target, False)
        assert gpu.NotForConvolutions(dlight.gpu.GEMV()).apply(func, target, False) is None
        assert DirectConv().apply(func, target, False) is not None


def test_a_gpu_rule_that_takes_a_kernel_and_then_fails_raises(monkeypatch):
    spec = targets.get(CUDA)
    ((_, func),) = conv_kernels(relax_graph(lambda bb, x: bb.emit(conv_layer(x, C, relu=True))), spec)

    def broken(*args, **kwargs):
        raise RuntimeError("bind broke")

    monkeypatch.setattr(Schedule, "bind", broken)
    with pytest.raises(RuntimeError, match="bind broke"):
        DirectConv().apply(func, spec.tvm_target(), False)


def test_cuda_build_has_a_kernel_for_every_convolution_gathered_or_not():
    """Every conv kernel (the gathered ones too) is scheduled, bound to threads and compiled to a CUDA kernel."""
    spec = targets.get(CUDA)
    mod = fuse_shuffles(v2_units())
    kernels = [name for name, _ in conv_kernels(mod, spec)]
    assert any("gathered" in name for name in kernels)
    source = "".join(m.inspect_source() for m in _modules(build.build(mod, spec).mod) if m.kind == "cuda")
    for name in kernels:
        assert f"{name}_kernel" in source, name


def _modules(module) -> list:
    """``module`` and every module it imports, depth first."""
    return [module, *(m for imported in module.imports for m in _modules(imported))]
