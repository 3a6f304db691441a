"""Default CPU schedules (``schedules.cpu``): which kernels each rule takes, the tiles it picks, and exact results.

Structure: a rule returns None for a kernel that is not its kind, and a rule
that takes a kernel and then fails raises; the schedules' tiles, padding and
weight layouts, read from their traces and scripts. Numerics: each build
against TVM's own unscheduled lowering of the same graph (conftest's
``assert_matches_unscheduled``). Lowering for another x86 or ARM target
than the host's needs no such CPU; running does, so numbers are checked on
this host's target.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import (C, N, assert_matches_unscheduled, conv_kernels, conv_layer, host_spec, is_1x1_weight,
                      random_input, relax_graph, shuffle2, stride2_unit, v1_unit, v2_units)
from tvm_shuffle import build, passes, targets
from tvm_shuffle.schedules import cpu, default_schedule, fuse_shuffles, kernels
from tvm_shuffle.schedules.analysis import child_blocks
from tvm_shuffle.schedules.constants import cpu_constants
from tvm_shuffle.tvm_compat import Constant, Schedule, relax, tvm


def kernel(mod, spec, name_part: str):
    """The one PrimFunc of ``mod`` lowered for ``spec`` whose name contains ``name_part``."""
    (func,) = [f for gv, f in build.lower(mod, spec).functions.items()
               if isinstance(f, tvm.tirx.PrimFunc) and name_part in gv.name_hint]
    return func


def classifier(classes: int = 10, features: int = 30):
    """``x @ W + b`` on a (1, features) input."""
    rng = np.random.default_rng(0)
    weight = relax.const((rng.standard_normal((features, classes)) / np.sqrt(features)).astype("float32"))
    bias = relax.const(rng.standard_normal((classes,)).astype("float32"))
    return relax_graph(lambda bb, x: bb.emit(relax.op.add(relax.op.matmul(x, weight), bias)), (1, features))


def max_pool(size: int = 8):
    return relax_graph(lambda bb, x: bb.emit(relax.op.nn.max_pool2d(x, 3, strides=2, padding=1)), (N, C, size, size))


def single_conv(size: int, **conv):
    return relax_graph(lambda bb, x: bb.emit(conv_layer(x, C, **conv)), (N, C, size, size))


# ---------------------------------------------------------------------------
# Which kernels a rule takes


def _not_their_kind():
    """(rule, graph, kernel name part, target): the rule must return None for that kernel."""
    pointwise = single_conv(8, relu=True)
    return {
        "conv-rule/classifier": (cpu.Conv2dNCHW(), classifier(), "matmul", "x86"),
        "conv-rule/max-pool": (cpu.Conv2dNCHW(), max_pool(), "max_pool", "x86"),
        "conv-rule/cuda": (cpu.Conv2dNCHW(), pointwise, "conv2d", "cuda-sm_80"),
        # A 1x1 plane: no output row to vectorize, and no loop for the epilogue.
        "conv-rule/depthwise-1x1-plane": (cpu.Conv2dNCHW(), single_conv(2, kernel=3, groups=C, stride=2), "conv2d",
                                          "x86"),
        "dense-rule/conv": (cpu.Dense(), pointwise, "conv2d", "x86"),
        "pool-rule/conv": (cpu.Pool2d(), single_conv(8, kernel=3, groups=C), "conv2d", "x86"),
        "pool-rule/classifier": (cpu.Pool2d(), classifier(), "matmul", "x86"),
    }


@pytest.mark.parametrize("case", list(_not_their_kind()))
def test_a_rule_returns_none_for_a_kernel_not_its_own(case):
    rule, graph, name_part, target = _not_their_kind()[case]
    spec = targets.get(target)
    assert rule.apply(kernel(graph, spec, name_part), spec.tvm_target(), False) is None


def _their_kind():
    """(rule, graph, kernel name part): the rule schedules that kernel on this host."""
    return {
        "conv-rule/pointwise": (cpu.Conv2dNCHW(), single_conv(8, relu=True), "conv2d"),
        "conv-rule/depthwise": (cpu.Conv2dNCHW(), single_conv(8, kernel=3, groups=C, stride=2), "conv2d"),
        "dense-rule": (cpu.Dense(), classifier(), "matmul"),
        "pool-rule": (cpu.Pool2d(), max_pool(), "max_pool"),
    }


@pytest.mark.parametrize("case", list(_their_kind()))
def test_a_rule_that_takes_a_kernel_and_then_fails_raises(case, monkeypatch):
    """No rule catches a failing schedule primitive to decline after the fact: the failure reaches the caller."""
    rule, graph, name_part = _their_kind()[case]
    spec = host_spec()
    func = kernel(graph, spec, name_part)
    assert rule.apply(func, spec.tvm_target(), False) is not None

    def broken(*args, **kwargs):
        raise RuntimeError("decompose_reduction broke")

    monkeypatch.setattr(Schedule, "decompose_reduction", broken)
    with pytest.raises(RuntimeError, match="decompose_reduction broke"):
        rule.apply(func, spec.tvm_target(), False)
    with pytest.raises(RuntimeError, match="decompose_reduction broke"):
        default_schedule(func, spec.tvm_target())


def test_a_failing_rule_fails_the_build(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("decompose_reduction broke")

    monkeypatch.setattr(Schedule, "decompose_reduction", broken)
    with pytest.raises(Exception, match="decompose_reduction broke"):
        build.build(single_conv(8, relu=True), host_spec())


@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512", "arm-rpi4"])
def test_every_conv_kernel_gets_a_default_schedule(target):
    spec = targets.get(target)
    mods = {"v2": fuse_shuffles(v2_units()), "stride2": fuse_shuffles(stride2_unit()), "v1": fuse_shuffles(v1_unit(4))}
    for name, mod in mods.items():
        kernels = conv_kernels(mod, spec)
        assert any("gathered" in k for k, _ in kernels), name
        for kernel_name, func in kernels:
            assert default_schedule(func, spec.tvm_target()) is not None, f"{name}: {kernel_name}"


@pytest.mark.parametrize("target, isa, lanes", [("x86-avx2", "avx2", 8), ("x86-avx512", "avx512", 16),
                                                ("arm-rpi4", "neon", 4), ("arm-graviton2", "neon", 4)])
def test_tile_constants_follow_the_vector_isa(target, isa, lanes):
    constants = cpu_constants(targets.get(target).tvm_target())
    assert (constants.isa, constants.lanes()) == (isa, lanes)


# ---------------------------------------------------------------------------
# Convolutions: results


@pytest.mark.parametrize("kernel_size, groups, stride, bias, size", [
    (1, 1, 1, False, 6),  # pointwise writing the function's output directly
    (1, 1, 1, True, 7),  # odd plane: padded to whole vectors (AVX-512), else row-sized ones
    (1, 3, 1, True, 8),
    (1, 3, 1, True, 7),  # grouped on an odd plane: not an einsum, so scheduled unpadded
    (3, C, 1, True, 6),  # depthwise
    (3, C, 2, True, 8),  # depthwise stride 2: de-interleaved columns
    (3, C, 1, True, 14),  # depthwise rows of 14 computed as 16 (AVX-512)
    (3, C, 2, True, 14),  # depthwise stride 2 rows of 7 computed as 8
    (3, 1, 2, True, 8),  # dense 3x3 stride 2, like the stem
])
def test_default_schedules_compute_the_convolution(kernel_size, groups, stride, bias, size):
    """Scheduled kernels against TVM's own unscheduled lowering of the same graph."""
    mod = single_conv(size, kernel=kernel_size, groups=groups, stride=stride, bias=bias, relu=bias)
    spec = host_spec()
    kernels = conv_kernels(mod, spec)
    assert kernels and all(default_schedule(f, spec.tvm_target()) is not None for _, f in kernels)
    assert_matches_unscheduled(mod, random_input((N, C, size, size)))


def test_channel_tiles_need_not_divide_the_output_channels():
    """29 output channels (prime, like ShuffleNet's 58 = 2 x 29): the last tile of 8 is partly empty."""
    mod = relax_graph(lambda bb, x: bb.emit(conv_layer(x, 29, relu=True)), (N, C, 8, 8))
    assert_matches_unscheduled(mod, random_input((N, C, 8, 8)))


def test_a_depthwise_conv_reading_two_tensors_copies_its_padding_interior_with_vectors():
    """Stride 1 over shuffle(concat(a, b)): the gathered padding picks a source per channel and still decomposes."""

    def body(bb, x):
        halves = [bb.emit(conv_layer(x, C // 2, relu=True)), bb.emit(conv_layer(x, C // 2, relu=True))]
        shuffled = shuffle2(bb, bb.emit(relax.op.concat(halves, axis=1)))
        return bb.emit(conv_layer(bb.emit(conv_layer(shuffled, C, kernel=3, groups=C)), 8))

    mod = fuse_shuffles(relax_graph(body, (N, C, 8, 8)))
    spec = host_spec()
    (func,) = [f for name, f in conv_kernels(mod, spec) if "gathered" in name]
    assert len(func.params) == 5  # two sources, the weight, the bias, the output
    assert "DecomposePadding" in [inst.kind.name for inst in default_schedule(func, spec.tvm_target()).trace.insts]
    assert_matches_unscheduled(mod, random_input((N, C, 8, 8)))


@pytest.mark.parametrize("graph, size", [(stride2_unit, 8), (lambda: v2_units(shape=(N, C, 7, 7)), 7)])
def test_a_neon_padding_that_gathers_several_tensors_copies_one_source_at_a_time(graph, size, monkeypatch):
    """With NEON's constants, the padding of a gathered stride-2 depthwise conv (columns apart) and of a gathered
    1x1 conv on an odd plane is one loop per source tensor (LoopPartition), and still computes the same numbers.

    The numbers are checked on this host: the NEON constants are forced on its build.
    """
    mod = fuse_shuffles(graph())
    arm = targets.get("arm-rpi4")
    gathered = [f for name, f in conv_kernels(mod, arm) if "gathered" in name]
    partitioned = ["LoopPartition" in [i.kind.name for i in default_schedule(f, arm.tvm_target()).trace.insts]
                   for f in gathered]
    assert gathered and any(partitioned)
    avx512 = targets.get("x86-avx512")  # x86 keeps one loop (no reloads there to remove)
    assert not any("LoopPartition" in str(default_schedule(f, avx512.tvm_target()).trace)
                   for name, f in conv_kernels(mod, avx512) if "gathered" in name)
    neon = cpu_constants(arm.tvm_target())
    monkeypatch.setattr(cpu, "cpu_constants", lambda target: neon)
    assert_matches_unscheduled(mod, random_input((N, C, size, size)))


def test_a_stride2_padding_with_columns_apart_keeps_its_bounds_test():
    """decompose_padding needs a box-shaped interior, which even and odd columns stored apart are not."""
    spec = host_spec()
    func = kernel(single_conv(8, kernel=3, groups=C, stride=2), spec, "conv2d")
    insts = [inst.kind.name for inst in default_schedule(func, spec.tvm_target()).trace.insts]
    assert "TransformLayout" in insts and "DecomposePadding" not in insts


@pytest.mark.parametrize("size, stride, wide, avx512_wide", [
    (14, 1, 16, 16), (7, 1, 8, 8), (14, 2, 8, None), (8, 2, 8, None), (56, 2, 32, 32), (16, 1, None, None)])
def test_depthwise_rows_are_computed_in_whole_registers(size, stride, wide, avx512_wide):
    """Output rows of 28, 14 and 7 become 32, 16 and 8 columns (``row_multiple`` 8); rows that already fill
    registers stay. On AVX-512 a stride-2 row narrower than 16 columns stays as it is (``strided_row_from``)."""
    mod = single_conv(size, kernel=3, groups=C, stride=stride, bias=False)
    widened = passes.pad_depthwise_rows(mod, 8)
    assert passes.op_histogram(widened)["relax.nn.conv2d"] == (1 if wide is None else 0)
    assert passes.pad_depthwise_rows(mod, 1) is mod
    avx512 = targets.get("x86-avx512")  # lowering only: any host can, whatever its own vector ISA
    func = kernel(mod, avx512, "conv2d")
    assert (kernels.ROW_CROP in func.script()) == (avx512_wide is not None)
    rows = _row_lengths(func)
    assert (avx512_wide in rows) if avx512_wide else max(rows) <= size + 3  # the padded input is the widest
    assert_matches_unscheduled(mod, random_input((N, C, size, size)))


def test_depthwise_channels_are_shared_out_in_runs():
    """The parallel loop runs over DEPTHWISE_CHUNKS runs of channels (29: the last run is short), so each thread
    allocates its padded plane once per run, not once per channel; the results stay exact."""
    channels, size = 29, 14
    mod = relax_graph(lambda bb, x: bb.emit(conv_layer(x, channels, kernel=3, groups=channels)),
                      (N, channels, size, size))
    spec = host_spec()
    (func,) = [f for _, f in conv_kernels(mod, spec)]
    script = default_schedule(func, spec.tvm_target()).mod.script()
    assert f"T.parallel(T.int64({cpu.DEPTHWISE_CHUNKS})" in script
    assert_matches_unscheduled(mod, random_input((N, channels, size, size)))


def _row_lengths(func) -> set[int]:
    """The last dimension of every buffer a block of ``func`` reads or writes."""
    sch = Schedule(func)
    regions = [r for block in child_blocks(sch) for r in (*sch.get(block).reads, *sch.get(block).writes)]
    return {int(r.source.shape[-1]) for r in regions}


# ---------------------------------------------------------------------------
# 1x1 convolutions: tiles, padded planes, packed weights


def _pointwise_kernels(mod, spec) -> list:
    return [(name, f) for name, f in conv_kernels(mod, spec) if any(is_1x1_weight(p) for p in f.params)]


def test_part_filled_row_vectors_are_taken_two_at_a_time():
    """14x14 planes on AVX-512: tiles of 2 rows of 14 pixels (one register each) x 8 channels, not 1 row x 16."""
    mod = fuse_shuffles(v2_units(shape=(N, C, 14, 14)))
    avx512 = targets.get("x86-avx512")
    pointwise = _pointwise_kernels(mod, avx512)
    assert any("gathered" in name for name, _ in pointwise)
    for name, func in pointwise:
        script = default_schedule(func, avx512.tvm_target()).mod.script()
        assert re.search(r"in T\.unroll\(T\.int64\(2\)\):\s+for \w+ in T\.vectorized\(T\.int64\(14\)\)", script), name
        assert "T.unroll(T.int64(8))" in script, name
    assert_matches_unscheduled(mod, random_input((N, C, 14, 14)))


def test_odd_planes_run_padded_to_whole_vectors():
    """7x7 planes (49 pixels) run as 64 on AVX-512, in the stock and the gathered 1x1 convolutions alike."""
    mod = fuse_shuffles(v2_units(shape=(N, C, 7, 7)))
    avx512 = targets.get("x86-avx512")
    pointwise = _pointwise_kernels(mod, avx512)
    assert any("gathered" in name for name, _ in pointwise)
    for name, func in pointwise:
        assert "pad_einsum" in str(default_schedule(func, avx512.tvm_target()).trace), name
    assert_matches_unscheduled(mod, random_input((N, C, 7, 7)))


def test_a_grouped_1x1_conv_on_an_odd_plane_is_not_padded():
    """A grouped conv reads its input channel as ``group * k + rc``: no einsum, so pad_einsum does not apply."""
    avx512 = targets.get("x86-avx512")
    grouped = kernel(single_conv(7, groups=3, relu=True), avx512, "conv2d")
    dense = kernel(single_conv(7, relu=True), avx512, "conv2d")
    assert "pad_einsum" not in str(default_schedule(grouped, avx512.tvm_target()).trace)
    assert "pad_einsum" in str(default_schedule(dense, avx512.tvm_target()).trace)


@pytest.mark.parametrize("size", [14, 7])
def test_pointwise_weights_are_packed_once_at_build_time(size):
    """Each 1x1 conv reads its weights as tiles of output channels side by side ([O/t, K, 1, 1, t]).

    The packing is a preprocessing block of the schedule; the build runs it on
    the constant weights, so the library holds packed weights and no kernel repacks them per call.
    """
    mod = fuse_shuffles(v2_units(shape=(N, C, size, size)))
    avx512 = targets.get("x86-avx512")
    pointwise = _pointwise_kernels(mod, avx512)
    assert any("gathered" in name for name, _ in pointwise) and any("gathered" not in name for name, _ in pointwise)
    for name, func in pointwise:
        sch = default_schedule(func, avx512.tvm_target())
        packs = [b for b in child_blocks(sch) if cpu.LAYOUT_REWRITE_PREPROC in sch.get(b).annotations]
        assert [len(sch.get(b).writes[0].source.shape) for b in packs] == [5], name
    with avx512.tvm_target(), tvm.transform.PassContext(opt_level=3):
        built = tvm.transform.Sequential([*build.tir_passes(avx512), *build.schedule_passes(avx512),
                                          *build.weight_packing_passes()])(mod)
    assert not [gv.name_hint for gv in built.get_global_vars() if build.WEIGHT_PACKING_SUFFIX in gv.name_hint]
    packed_weights = [p for f in built.functions.values() if isinstance(f, tvm.tirx.PrimFunc) for p in f.params
                      if len(getattr(p, "shape", ())) == 5]
    assert len(packed_weights) == len(pointwise)
    # a last, partial tile's padding is zeros, not whatever the heap held (24 and 12 channels, tiles of 16 or 7)
    weights = _packed_weights(built["main"])
    assert len(weights) >= len(pointwise) and any(w.shape[0] * w.shape[4] > channels for w, channels in weights)
    for w, channels in weights:
        lanes = np.moveaxis(w, 4, 1).reshape(-1, *w.shape[1:4])  # [G * t, K, 1, 1], channel by channel
        assert lanes[:channels].any() and not lanes[channels:].any()
    assert_matches_unscheduled(mod, random_input((N, C, size, size)))


def _packed_weights(func) -> list[tuple[np.ndarray, int]]:
    """(5-D constant argument, output channels) of every kernel call in ``func``."""
    bindings = [b for block in func.body.blocks for b in block.bindings]
    bound = {b.var: b.value for b in bindings if isinstance(b.value, Constant)}  # a folded packing is bound to a var
    calls = [b.value for b in bindings if isinstance(b.value, relax.Call)]
    arguments = [(bound.get(a, a), call) for call in calls for arg in call.args if isinstance(arg, relax.Tuple)
                 for a in arg.fields]
    return [(a.value.numpy(), int(call.ty.shape.values[1])) for a, call in arguments
            if isinstance(a, Constant) and len(a.ty.shape) == 5]


# ---------------------------------------------------------------------------
# Pools and the classifier


@pytest.mark.parametrize("size", [8, 7])
def test_max_pool_gets_a_default_schedule(size):
    """The stem's 3x3 stride-2 max-pool: scheduled by Pool2d, and equal to TVM's unscheduled lowering."""
    spec = host_spec()
    assert cpu.Pool2d().apply(kernel(max_pool(size), spec, "max_pool"), spec.tvm_target(), False) is not None
    assert_matches_unscheduled(max_pool(size), random_input((N, C, size, size)))


def test_average_pools_are_shared_out_among_threads():
    """v1's 3x3 stride-2 shortcut pool and the global pool: parallel, and equal to TVM's unscheduled lowering."""
    def pools(bb, x):
        shortcut = bb.emit(relax.op.nn.avg_pool2d(x, 3, strides=2, padding=1))
        return bb.emit(relax.op.mean(shortcut, axis=[2, 3]))

    mod = relax_graph(pools, (N, C, 8, 8))
    spec = host_spec()
    kernels = [f for name, f in build.lower(mod, spec).functions.items()
               if isinstance(f, tvm.tirx.PrimFunc) and ("pool" in name.name_hint or "mean" in name.name_hint)]
    assert len(kernels) == 2
    for func in kernels:
        assert "T.parallel" in default_schedule(func, spec.tvm_target()).mod.script()
    assert_matches_unscheduled(mod, random_input((N, C, 8, 8)))


@pytest.mark.parametrize("classes, features", [(1000, 1024), (10, 30)])
def test_classifier_sums_slices_of_weight_rows(classes, features):
    """``x @ W + b``: the reduction cut into row blocks (4 and 3 here), summed at the end, equal to TVM's own."""
    mod = classifier(classes, features)
    spec = host_spec()
    assert "rfactor" in str(default_schedule(kernel(mod, spec, "matmul"), spec.tvm_target()).trace)
    assert_matches_unscheduled(mod, random_input((1, features)))


@pytest.mark.parametrize("width, lanes, tile", [(56, 16, 8), (112, 16, 16), (14, 16, 14), (28, 8, 4), (7, 4, 1)])
def test_pooled_rows_take_a_smaller_register_before_a_partial_one(width, lanes, tile):
    assert cpu._row_tile(width, lanes) == tile


# ---------------------------------------------------------------------------
# ARM


def test_arm_build_runs_every_convolution_on_neon_vectors():
    """Cross-compiled for a Cortex-A72: each conv kernel's loop body multiplies and adds 4-lane NEON vectors."""
    spec = targets.get("arm-rpi4")
    mod = fuse_shuffles(stride2_unit())
    asm = build.build(mod, spec).mod.imports[0].inspect_source("asm")
    bodies = dict(re.findall(r"^(\w*conv2d\w*)_compute_:\n(.*?)^\.Lfunc_end", asm, re.M | re.S))
    assert len(bodies) == len(conv_kernels(mod, spec))
    for name, body in bodies.items():
        assert re.search(r"\bfmla\s+v\d+\.4s", body), name
