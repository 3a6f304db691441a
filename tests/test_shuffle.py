"""Channel-shuffle detection and fusion (``tvm_shuffle.schedules``).

Structure: small Relax graphs in every form the frontends produce, checked by
what :func:`find_shuffles` reports and by the operators left after
:func:`fuse_shuffles`. Numerics: the fused graph against the stock one (and
PyTorch eager for the zoo models test_zoo does not build, in the slow test), fp32 within atol=1e-4,
rtol=1e-4: fusion permutes weights and sums the same products, so results
move by reassociation only (~1e-7 seen).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from conftest import zoo_at_full_size
from tvm_shuffle import build, frontends, models, passes, targets, tvm_compat
from tvm_shuffle.schedules import FusionReport, default_candidates, default_schedule, find_shuffles, fuse_shuffles
from tvm_shuffle.schedules import cpu
from tvm_shuffle.schedules.analysis import child_blocks, conv_shape
from tvm_shuffle.schedules.constants import GPU, GPUConstants, cpu_constants
from tvm_shuffle.schedules.gpu import DirectConv, channels_per_thread
from tvm_shuffle.tuning import tasks
from tvm_shuffle.tuning.builder import compile_candidate
from tvm_shuffle.tvm_compat import Constant, Schedule, Trace, ms, relax, tvm

ATOL = RTOL = 1e-4
X86 = targets.get("x86")
DATA_MOVEMENT = ("relax.reshape", "relax.permute_dims", "relax.concat", "relax.split", "relax.strided_slice",
                 "relax.take")

N, C, H, W = 1, 24, 6, 6  # 24 channels: 2, 3, 4, 6, 8 and 12 groups all divide them


# ---------------------------------------------------------------------------
# Graph builders: one Relax function, weights random but fixed


def _rng():
    return np.random.default_rng(0)


def _conv(x, out_channels, *, kernel=1, groups=1, stride=1, bias=True, relu=False):
    in_channels = int(x.ty.shape.values[1])
    fan_in = in_channels // groups * kernel * kernel  # keeps activations near 1 through many layers
    w = _rng().standard_normal((out_channels, in_channels // groups, kernel, kernel)) / np.sqrt(fan_in)
    w = relax.const(w.astype("float32"))
    y = relax.op.nn.conv2d(x, w, strides=stride, padding=kernel // 2, groups=groups)
    if bias:
        y = relax.op.add(y, relax.const(_rng().standard_normal((1, out_channels, 1, 1)).astype("float32")))
    return relax.op.nn.relu(y) if relu else y


def _graph(body, shape=(N, C, H, W)) -> "tvm.IRModule":
    """``main(x)`` returning ``body(bb, x)``; ``body`` emits with ``bb`` and returns the output."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def shuffle_5d(bb, x, groups):
    """torch.export and ONNX: reshape (N, g, C/g, H, W) -> swap -> reshape."""
    n, c, h, w = (int(d) for d in x.ty.shape.values)
    y = bb.emit(relax.op.reshape(x, (n, groups, c // groups, h, w)))
    y = bb.emit(relax.op.permute_dims(y, [0, 2, 1, 3, 4]))
    return bb.emit(relax.op.reshape(y, (n, c, h, w)))


def shuffle_4d(bb, x, groups):
    """ONNX's 4-D form: spatial dims flattened, reshape (N, g, C/g, H*W) -> swap -> reshape."""
    n, c, h, w = (int(d) for d in x.ty.shape.values)
    y = bb.emit(relax.op.reshape(x, (n, groups, c // groups, h * w)))
    y = bb.emit(relax.op.permute_dims(y, [0, 2, 1, 3]))
    return bb.emit(relax.op.reshape(y, (n, c, h, w)))


def even_odd(bb, x):
    """The authors' v2 release: reshape(b*c//2, 2, h*w).permute(1, 0, 2).reshape(2, -1, c//2, h, w); x[0], x[1]."""
    n, c, h, w = (int(d) for d in x.ty.shape.values)
    y = bb.emit(relax.op.reshape(x, (n * c // 2, 2, h * w)))
    y = bb.emit(relax.op.permute_dims(y, [1, 0, 2]))
    y = bb.emit(relax.op.reshape(y, (2, n, c // 2, h, w)))
    return (bb.emit(relax.op.take(y, relax.const(0, "int64"), axis=0)),
            bb.emit(relax.op.take(y, relax.const(1, "int64"), axis=0)))


def halves_split(bb, x):
    """torch.export's ``chunk(2, dim=1)``."""
    parts = bb.emit(relax.op.split(x, 2, axis=1))
    return bb.emit(relax.TupleGetItem(parts, 0)), bb.emit(relax.TupleGetItem(parts, 1))


def halves_slice(bb, x):
    """The classic ONNX exporter's Slice pair."""
    c = int(x.ty.shape.values[1])
    return (bb.emit(relax.op.strided_slice(x, axes=[1], begin=[0], end=[c // 2])),
            bb.emit(relax.op.strided_slice(x, axes=[1], begin=[c // 2], end=[c])))


def v2_units(shuffle, halves, units=3, shape=(N, C, H, W)):
    """Stem, then ShuffleNet v2 stride-1 units: split, branch on one half, concat, shuffle; a head conv."""

    def body(bb, x):
        x = bb.emit(_conv(x, C, relu=True))
        for _ in range(units):
            keep, branch = halves(bb, x)
            y = bb.emit(_conv(branch, C // 2, relu=True))
            y = bb.emit(_conv(y, C // 2, kernel=3, groups=C // 2))
            y = bb.emit(_conv(y, C // 2, relu=True))
            x = shuffle(bb, bb.emit(relax.op.concat([keep, y], axis=1)))
        return bb.emit(_conv(x, 8))

    return _graph(body, shape)


def v2_megvii(units=3):
    """The release's unit: even/odd split first, then branch and concat (no separate shuffle op)."""

    def body(bb, x):
        x = bb.emit(_conv(x, C, relu=True))
        for _ in range(units):
            keep, branch = even_odd(bb, x)
            y = bb.emit(_conv(branch, C // 2, relu=True))
            y = bb.emit(_conv(y, C // 2, kernel=3, groups=C // 2))
            x = bb.emit(relax.op.concat([keep, bb.emit(_conv(y, C // 2, relu=True))], axis=1))
        return bb.emit(_conv(x, 8))

    return _graph(body)


def v1_unit(groups):
    """ShuffleNet v1: grouped 1x1 conv, shuffle, depthwise 3x3, grouped 1x1 conv, residual."""

    def body(bb, x):
        y = bb.emit(_conv(x, C, groups=groups, relu=True))
        y = shuffle_5d(bb, y, groups)
        y = bb.emit(_conv(y, C, kernel=3, groups=C))
        y = bb.emit(_conv(y, C, groups=groups))
        return bb.emit(relax.op.nn.relu(relax.op.add(x, y)))

    return _graph(body)


def stride2_unit():
    """A v2 stride-2 unit fed by a shuffled tensor: both branches read all of it (depthwise and 1x1)."""

    def body(bb, x):
        x = shuffle_5d(bb, bb.emit(relax.op.concat([bb.emit(_conv(x, C // 2, relu=True)),
                                                      bb.emit(_conv(x, C // 2, relu=True))], axis=1)), 2)
        left = bb.emit(_conv(bb.emit(_conv(x, C, kernel=3, groups=C, stride=2)), C // 2, relu=True))
        right = bb.emit(_conv(x, C // 2, relu=True))
        right = bb.emit(_conv(bb.emit(_conv(right, C // 2, kernel=3, groups=C // 2, stride=2)), C // 2, relu=True))
        return shuffle_5d(bb, bb.emit(relax.op.concat([left, right], axis=1)), 2)

    return _graph(body, (N, C, 8, 8))


def run(mod, x: np.ndarray, spec=X86, database=None) -> np.ndarray:
    vm = relax.VirtualMachine(build.build(mod, spec, database=database), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def assert_matches_unscheduled(mod, x: np.ndarray, database=None, spec=X86) -> None:
    """Our build for ``spec`` (defaults, tuned schedules from ``database``) against TVM's unscheduled lowering."""
    unscheduled = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    np.testing.assert_allclose(run(mod, x, spec=spec, database=database),
                               unscheduled["main"](tvm.runtime.tensor(x)).numpy(), atol=ATOL, rtol=RTOL)


def fused_and_report(mod):
    report = FusionReport()
    return fuse_shuffles(mod, report), report


def data_movement(mod) -> dict:
    counts = passes.op_histogram(mod)
    return {op: counts[op] for op in DATA_MOVEMENT if counts[op]}


def _input(shape=(N, C, H, W)) -> np.ndarray:
    return np.random.default_rng(1).standard_normal(shape).astype("float32")


# ---------------------------------------------------------------------------
# Detection


@pytest.mark.parametrize("groups", [2, 3, 4, 8])
@pytest.mark.parametrize("form", [shuffle_5d, shuffle_4d], ids=["5d", "4d"])
def test_detects_a_shuffle_of_any_group_count(form, groups):
    (match,) = find_shuffles(_graph(lambda bb, x: form(bb, x, groups))["main"])
    assert (match.groups, match.channels, match.form) == (groups, C, "shuffle")


def test_detects_the_authors_even_odd_split_as_shuffle_then_split():
    (match,) = find_shuffles(_graph(lambda bb, x: bb.emit(relax.Tuple(list(even_odd(bb, x)))))["main"])
    # Even then odd channels are the two halves of a shuffle with C/2 groups of 2.
    assert (match.groups, match.form, match.windows) == (C // 2, "shuffle+split into 2", ((0, 12), (12, 24)))


@pytest.mark.parametrize("halves", [halves_split, halves_slice], ids=["split", "strided_slice"])
def test_detects_each_unit_of_a_v2_stage(halves):
    matches = find_shuffles(v2_units(lambda bb, x: shuffle_5d(bb, x, 2), halves)["main"])
    assert [(m.groups, m.form) for m in matches] == [(2, "shuffle")] * 3


def test_detects_shuffles_in_what_each_frontend_produces(tiny_module, tiny_onnx, tiny_onnx_classic):
    """torch.export, ONNX (dynamo) and the classic ONNX exporter: one 2-group shuffle each."""
    for imported in (frontends.from_torch_module(tiny_module, (1, 3, 16, 16)), frontends.from_onnx_file(tiny_onnx),
                     frontends.from_onnx_file(tiny_onnx_classic)):
        mod = passes.optimize(imported.mod, shuffle="stock")
        assert [(m.groups, m.channels) for m in find_shuffles(mod["main"])] == [(2, 16)], imported.source


def _reversed_channels(bb, x):
    return bb.emit(relax.op.take(x, relax.const(np.arange(C)[::-1].copy()), axis=1))


def _bit_reversal(bb, x):
    # (2, 2, 6) channel digits reversed: a channel permutation, but no g gives it.
    y = bb.emit(relax.op.reshape(x, (N, 2, 2, 6, H, W)))
    y = bb.emit(relax.op.permute_dims(y, [0, 3, 2, 1, 4, 5]))
    return bb.emit(relax.op.reshape(y, (N, C, H, W)))


def _spatial_transpose(bb, x):
    # Same reshape -> permute -> reshape shape as a shuffle, but it moves rows, not channels.
    y = bb.emit(relax.op.reshape(x, (N, C, 2, 3, W)))
    y = bb.emit(relax.op.permute_dims(y, [0, 1, 3, 2, 4]))
    return bb.emit(relax.op.reshape(y, (N, C, H, W)))


def _plain_halves(bb, x):
    a, b = halves_split(bb, x)
    return bb.emit(relax.op.concat([b, a], axis=1))


@pytest.mark.parametrize("body", [_reversed_channels, _bit_reversal, _spatial_transpose, _plain_halves],
                         ids=["reversed", "bit-reversal", "spatial", "swap-halves"])
def test_other_permutations_are_not_shuffles_and_stay_stock(body):
    mod = _graph(lambda bb, x: bb.emit(_conv(body(bb, bb.emit(_conv(x, C))), 8)))
    assert find_shuffles(mod["main"]) == []
    fused, report = fused_and_report(mod)
    assert fused is mod
    assert "none found" in report.summary()


@pytest.mark.parametrize("shuffle, expected", [
    ("fused", "channel shuffles: 3 found (groups 2), 3 fused, 0 left as a copy"),
    ("stock", "channel shuffles: 3 found (groups 2), 0 fused, 3 left as a copy"),
])
def test_verbose_compile_says_what_fusion_did(shuffle, expected, tmp_path, capsys):
    imported = frontends.Imported(mod=v2_units(lambda bb, x: shuffle_5d(bb, x, 2), halves_split), name="units",
                                  source="torch", input_name="x", input_shape=(N, C, H, W))
    build.compile_imported(imported, X86, tmp_path, shuffle=shuffle, verbose=True)
    assert expected in capsys.readouterr().err


def test_verbose_compile_of_a_model_without_shuffles_says_so(tmp_path, capsys):
    imported = frontends.Imported(mod=_graph(lambda bb, x: bb.emit(_conv(x, 8))), name="plain", source="torch",
                                  input_name="x", input_shape=(N, C, H, W))
    build.compile_imported(imported, X86, tmp_path, verbose=True)
    assert "channel shuffles: none found (module unchanged)" in capsys.readouterr().err


def test_a_model_without_shuffles_is_returned_unchanged():
    mod = _graph(lambda bb, x: bb.emit(_conv(bb.emit(_conv(x, C, relu=True)), 8)))
    fused, report = fused_and_report(mod)
    assert fused is mod and report.shuffles == [] and passes.optimize(mod, shuffle="fused").script() == \
        passes.optimize(mod, shuffle="stock").script()


# ---------------------------------------------------------------------------
# Fusion: structure and numerics


@pytest.mark.parametrize("shuffle", [shuffle_5d, shuffle_4d], ids=["5d", "4d"])
@pytest.mark.parametrize("halves", [halves_split, halves_slice], ids=["split", "strided_slice"])
def test_v2_stage_leaves_no_data_movement(shuffle, halves):
    mod = v2_units(lambda bb, x: shuffle(bb, x, 2), halves)
    fused, report = fused_and_report(mod)
    assert (len(report.shuffles), report.fused, report.materialized) == (3, 3, [])
    # Only the first unit's split is left: it splits the stem, which no shuffle
    # produced, so it is not the pass's business (in the zoo a stage starts
    # with a stride-2 unit instead).
    first_split = data_movement(mod)
    assert data_movement(fused) == {op: 1 if op == "relax.split" else 2 for op in first_split
                                    if op in ("relax.split", "relax.strided_slice")}
    # The branch convs of units 2 and 3 and the head read the pieces where they are.
    assert report.gathered == 3
    x = _input()
    np.testing.assert_allclose(run(fused, x), run(mod, x), atol=ATOL, rtol=RTOL)


def test_even_odd_release_form_leaves_no_data_movement():
    mod = v2_megvii()
    fused, report = fused_and_report(mod)
    assert (report.fused, report.materialized, data_movement(fused)) == (3, [], {})
    x = _input()
    np.testing.assert_allclose(run(fused, x), run(mod, x), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("groups", [2, 3, 4, 8])
def test_v1_shuffle_moves_into_the_depthwise_conv(groups):
    mod = v1_unit(groups)
    fused, report = fused_and_report(mod)
    assert (report.fused, report.materialized, data_movement(fused)) == (1, [], {})
    # The depthwise conv reads its planes through the shuffle formula; the
    # grouped conv after it stays a plain conv2d.
    assert (report.absorbed, report.gathered) == (0, 1)
    assert passes.op_histogram(fused)["relax.nn.conv2d"] == 2
    x = _input()
    np.testing.assert_allclose(run(fused, x), run(mod, x), atol=ATOL, rtol=RTOL)


def test_stride2_unit_reads_the_shuffled_input_in_both_branches():
    mod = stride2_unit()
    fused, report = fused_and_report(mod)
    # The last shuffle is the function's output: materialized once, by one
    # gather from the two branch outputs (concat + take, fused into one kernel).
    assert data_movement(fused) == {"relax.concat": 1, "relax.take": 1}
    assert report.fused == 1 and len(report.stock) == 1 and len(report.materialized) == 1
    x = _input((N, C, 8, 8))
    np.testing.assert_allclose(run(fused, x), run(mod, x), atol=ATOL, rtol=RTOL)


def test_a_shuffled_output_is_materialized_exactly_once():
    mod = _graph(lambda bb, x: bb.emit(relax.Tuple([shuffle_5d(bb, bb.emit(_conv(x, C)), 4)])))
    fused, report = fused_and_report(mod)
    assert data_movement(fused) == {"relax.take": 1}
    assert "is read by" in report.summary()
    x = _input()
    np.testing.assert_allclose(run(fused, x), run(mod, x), atol=ATOL, rtol=RTOL)


def test_a_shuffle_before_pooling_moves_into_the_classifier():
    """conv -> shuffle -> mean over H, W -> scale per channel -> matmul: the classifier's rows absorb it."""

    def body(bb, x):
        pooled = bb.emit(relax.op.mean(shuffle_5d(bb, bb.emit(_conv(x, C, relu=True)), 3), axis=[2, 3]))
        scaled = bb.emit(relax.op.multiply(pooled, relax.const(_rng().standard_normal(C).astype("float32"))))
        return bb.emit(relax.op.matmul(scaled, relax.const(_rng().standard_normal((C, 5)).astype("float32"))))

    mod = _graph(body)
    fused, report = fused_and_report(mod)
    assert (report.fused, report.absorbed, data_movement(fused)) == (1, 1, {})
    x = _input()
    np.testing.assert_allclose(run(fused, x), run(mod, x), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("fixture", ["tiny_module", "tiny_onnx", "tiny_onnx_classic"])
def test_fused_equals_stock_for_each_frontend(fixture, request, tiny_input):
    source = request.getfixturevalue(fixture)
    imported = (frontends.from_torch_module(source, tiny_input.shape) if fixture == "tiny_module"
                else frontends.from_onnx_file(source))
    stock = passes.optimize(imported.mod, shuffle="stock")
    fused = passes.optimize(imported.mod, shuffle="fused")
    # The tiny unit's shuffle feeds a mean, which needs it whole: it is gathered
    # once (concat + take) instead of concat, reshape, permute, reshape.
    moved = data_movement(fused)
    assert moved["relax.concat"] == moved["relax.take"] == 1
    assert "relax.reshape" not in moved and "relax.permute_dims" not in moved
    np.testing.assert_allclose(run(fused, tiny_input), run(stock, tiny_input), atol=ATOL, rtol=RTOL)


# ---------------------------------------------------------------------------
# Default schedules


def _conv_kernels(mod, spec):
    lowered = build.lower(mod, spec)
    return [(gv.name_hint, f) for gv, f in lowered.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint]


@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512", "arm-rpi4"])
def test_every_conv_kernel_gets_a_default_schedule(target):
    spec = targets.get(target)
    mods = {"v2": fuse_shuffles(v2_units(lambda bb, x: shuffle_5d(bb, x, 2), halves_split)),
            "stride2": fuse_shuffles(stride2_unit()), "v1": fuse_shuffles(v1_unit(4))}
    for name, mod in mods.items():
        kernels = _conv_kernels(mod, spec)
        assert any("gathered" in k for k, _ in kernels), name
        for kernel, func in kernels:
            assert default_schedule(func, spec.tvm_target()) is not None, f"{name}: {kernel}"


@pytest.mark.parametrize("graph, size", [
    (stride2_unit, 8),
    (lambda: v2_units(lambda bb, x: shuffle_5d(bb, x, 2), halves_split, shape=(N, C, 7, 7)), 7),  # padded planes
])
def test_default_schedules_seed_a_tuning_database(graph, size):
    """Measured default candidates replay from the database at build time (how tuning starts from them)."""
    mod = fuse_shuffles(graph())
    target = X86.tvm_target()
    database = ms.database.MemoryDatabase()
    seeded = 0
    for task in ms.relax_integration.extract_tasks(build.lower(mod, X86), target):
        for candidate in default_candidates(task.dispatched[0], target):
            # measurable as MetaSchedule measures it: compiled by its builder, called on arguments made from args_info
            kernel = compile_candidate(candidate.sch.mod, target)
            kernel["main"](*[tvm.runtime.tensor(np.zeros([int(d) for d in a.shape], a.dtype)) for a in candidate.args_info])
            # MetaSchedule's feature extractor strips a weight packing block, which must be a plain copy for it
            ms.arg_info.ArgInfo.from_entry_func(candidate.sch.mod, remove_preproc=True)
            workload = database.commit_workload(task.dispatched[0])
            database.commit_tuning_record(ms.database.TuningRecord(candidate.sch.trace, workload, [1e-3], target,
                                                                   candidate.args_info))
            seeded += 1
    assert seeded >= 5  # every convolution task
    x = _input((N, C, size, size))
    vm = relax.VirtualMachine(build.build(mod, X86, database=database), tvm.cpu())
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), run(graph(), x), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("tile", range(len(cpu_constants(targets.get("x86-avx512").tvm_target()).padded_tiles)))
def test_each_tile_of_a_padded_plane_is_a_tuning_candidate_that_computes_the_same(tile):
    """On AVX-512 a 7x7 1x1 conv is seeded with one schedule per tile of ``padded_tiles``; each is correct."""
    graph = v2_units(lambda bb, x: shuffle_5d(bb, x, 2), halves_split, shape=(N, C, 7, 7))
    spec = targets.get("x86-avx512")
    target = spec.tvm_target()
    tiles = cpu_constants(target).padded_tiles
    database = ms.database.MemoryDatabase()
    offered = []
    for task in ms.relax_integration.extract_tasks(build.lower(graph, spec), target):
        candidates = default_candidates(task.dispatched[0], target)
        offered.append(len(candidates))
        if not candidates:  # not a convolution: the build schedules it by itself
            continue
        chosen = candidates[tile] if len(candidates) == len(tiles) else candidates[0]
        workload = database.commit_workload(task.dispatched[0])
        database.commit_tuning_record(ms.database.TuningRecord(chosen.sch.trace, workload, [1e-3], target,
                                                               chosen.args_info))
    assert offered.count(len(tiles)) >= 2  # the stock and the gathered 1x1 convs of the padded planes
    assert_matches_unscheduled(graph, _input((N, C, 7, 7)), database=database, spec=spec)


@pytest.mark.parametrize("size", [8, 7])
def test_max_pool_gets_a_default_schedule(size):
    """The stem's 3x3 stride-2 max-pool: scheduled, and equal to TVM's unscheduled lowering."""
    mod = _graph(lambda bb, x: bb.emit(relax.op.nn.max_pool2d(x, 3, strides=2, padding=1)), (N, C, size, size))
    (pool,) = [f for name, f in build.lower(mod, X86).functions.items() if "max_pool" in name.name_hint]
    assert default_schedule(pool, X86.tvm_target()) is not None
    x = _input((N, C, size, size))
    assert_matches_unscheduled(mod, x)


def test_average_pools_are_shared_out_among_threads():
    """v1's 3x3 stride-2 shortcut pool and the global pool: parallel, and equal to TVM's unscheduled lowering."""
    def pools(bb, x):
        shortcut = bb.emit(relax.op.nn.avg_pool2d(x, 3, strides=2, padding=1))
        return bb.emit(relax.op.mean(shortcut, axis=[2, 3]))

    mod = _graph(pools, (N, C, 8, 8))
    kernels = [f for name, f in build.lower(mod, X86).functions.items()
               if isinstance(f, tvm.tirx.PrimFunc) and ("pool" in name.name_hint or "mean" in name.name_hint)]
    assert len(kernels) == 2
    for func in kernels:
        assert "T.parallel" in default_schedule(func, X86.tvm_target()).mod.script()
    assert_matches_unscheduled(mod, _input((N, C, 8, 8)))


def test_channel_tiles_need_not_divide_the_output_channels():
    """29 output channels (prime, like ShuffleNet's 58 = 2 x 29): the last tile of 8 is partly empty."""
    mod = _graph(lambda bb, x: bb.emit(_conv(x, 29, relu=True)), (N, C, 8, 8))
    x = _input((N, C, 8, 8))
    assert_matches_unscheduled(mod, x)


@pytest.mark.parametrize("kernel, groups, stride, bias, size", [
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
def test_default_schedules_compute_the_convolution(kernel, groups, stride, bias, size):
    """Scheduled kernels against TVM's own unscheduled lowering of the same graph."""
    mod = _graph(lambda bb, x: bb.emit(_conv(x, C, kernel=kernel, groups=groups, stride=stride, bias=bias, relu=bias)),
                 (N, C, size, size))
    kernels = _conv_kernels(mod, X86)
    assert kernels and all(default_schedule(f, X86.tvm_target()) is not None for _, f in kernels)
    x = _input((N, C, size, size))
    assert_matches_unscheduled(mod, x)


@pytest.mark.parametrize("size, stride, wide", [(14, 1, 16), (14, 2, 8), (16, 1, None), (8, 2, 8)])
def test_depthwise_rows_are_computed_in_whole_registers(size, stride, wide):
    """Output rows of 14 and 7 become 16 and 8 columns on AVX-512; rows that already fill registers stay."""
    mod = _graph(lambda bb, x: bb.emit(_conv(x, C, kernel=3, groups=C, stride=stride)), (N, C, size, size))
    widened = passes.pad_depthwise_rows(mod, 8)
    assert passes.op_histogram(widened)["relax.nn.conv2d"] == (1 if wide is None else 0)
    assert passes.pad_depthwise_rows(mod, 1) is mod
    avx512 = targets.get("x86-avx512")  # lowering only: any host can, whatever its own vector ISA
    (func,) = [f for name, f in build.lower(mod, avx512).functions.items() if "conv2d" in name.name_hint]
    rows = _row_lengths(func)
    assert (wide in rows) if wide else max(rows) == size + 2  # the padded input is the widest
    assert_matches_unscheduled(mod, _input((N, C, size, size)))


def _packed_weights(func) -> list[tuple[np.ndarray, int]]:
    """(5-D constant argument, output channels) of every kernel call in ``func``."""
    bindings = [b for block in func.body.blocks for b in block.bindings]
    bound = {b.var: b.value for b in bindings if isinstance(b.value, Constant)}  # a folded packing is bound to a var
    calls = [b.value for b in bindings if isinstance(b.value, relax.Call)]
    arguments = [(bound.get(a, a), call) for call in calls for arg in call.args if isinstance(arg, relax.Tuple)
                 for a in arg.fields]
    return [(a.value.numpy(), int(call.ty.shape.values[1])) for a, call in arguments
            if isinstance(a, Constant) and len(a.ty.shape) == 5]


def _row_lengths(func) -> set[int]:
    """The last dimension of every buffer a block of ``func`` reads or writes."""
    sch = Schedule(func)
    regions = [r for block in child_blocks(sch) for r in (*sch.get(block).reads, *sch.get(block).writes)]
    return {int(r.source.shape[-1]) for r in regions}


@pytest.mark.parametrize("width, lanes, tile", [(56, 16, 8), (112, 16, 16), (14, 16, 14), (28, 8, 4), (7, 4, 1)])
def test_pooled_rows_take_a_smaller_register_before_a_partial_one(width, lanes, tile):
    assert cpu._row_tile(width, lanes) == tile


def _is_1x1_weight(buffer) -> bool:
    shape = [int(d) for d in buffer.shape]
    return len(shape) == 4 and shape[0] > 1 and shape[2:] == [1, 1]


def test_part_filled_row_vectors_are_taken_two_at_a_time():
    """14x14 planes on AVX-512: tiles of 2 rows of 14 pixels (one register each) x 8 channels, not 1 row x 16."""
    mod = fuse_shuffles(v2_units(lambda bb, x: shuffle_5d(bb, x, 2), halves_split, shape=(N, C, 14, 14)))
    avx512 = targets.get("x86-avx512")
    pointwise = [(name, f) for name, f in _conv_kernels(mod, avx512) if any(_is_1x1_weight(p) for p in f.params)]
    assert any("gathered" in name for name, _ in pointwise)
    for name, func in pointwise:
        script = default_schedule(func, avx512.tvm_target()).mod.script()
        assert re.search(r"in T\.unroll\(T\.int64\(2\)\):\s+for \w+ in T\.vectorized\(T\.int64\(14\)\)", script), name
        assert "T.unroll(T.int64(8))" in script, name
    assert_matches_unscheduled(mod, _input((N, C, 14, 14)))


def test_odd_planes_run_padded_to_whole_vectors():
    """7x7 planes (49 pixels) run as 64 on AVX-512, in the stock and the gathered 1x1 convolutions alike."""
    mod = fuse_shuffles(v2_units(lambda bb, x: shuffle_5d(bb, x, 2), halves_split, shape=(N, C, 7, 7)))
    avx512 = targets.get("x86-avx512").tvm_target()
    pointwise = [(name, f) for name, f in _conv_kernels(mod, X86) if any(_is_1x1_weight(p) for p in f.params)]
    assert any("gathered" in name for name, _ in pointwise)
    for name, func in pointwise:
        assert "pad_einsum" in str(default_schedule(func, avx512).trace), name
    x = _input((N, C, 7, 7))
    assert_matches_unscheduled(mod, x)


@pytest.mark.parametrize("size", [14, 7])
def test_pointwise_weights_are_packed_once_at_build_time(size):
    """Each 1x1 conv reads its weights as tiles of output channels side by side ([O/t, K, 1, 1, t]).

    The packing is a preprocessing block of the schedule; the build runs it on
    the constant weights, so the library holds packed weights and no kernel repacks them per call.
    """
    mod = fuse_shuffles(v2_units(lambda bb, x: shuffle_5d(bb, x, 2), halves_split, shape=(N, C, size, size)))
    avx512 = targets.get("x86-avx512")
    pointwise = [(name, f) for name, f in _conv_kernels(mod, avx512) if any(_is_1x1_weight(p) for p in f.params)]
    assert any("gathered" in name for name, _ in pointwise) and any("gathered" not in name for name, _ in pointwise)
    for name, func in pointwise:
        sch = default_schedule(func, avx512.tvm_target())
        packs = [b for b in child_blocks(sch) if cpu.LAYOUT_REWRITE_PREPROC in sch.get(b).annotations]
        assert [len(sch.get(b).writes[0].source.shape) for b in packs] == [5], name
    with avx512.tvm_target(), tvm.transform.PassContext(opt_level=3):
        built = tvm.transform.Sequential([*build.tir_passes(avx512), *build.schedule_passes(avx512),
                                          *build.weight_packing_passes()])(mod)
    assert not [gv.name_hint for gv in built.get_global_vars() if "weight_prepack" in gv.name_hint]
    packed_weights = [p for f in built.functions.values() if isinstance(f, tvm.tirx.PrimFunc) for p in f.params
                      if len(getattr(p, "shape", ())) == 5]
    assert len(packed_weights) == len(pointwise)
    # a last, partial tile's padding is zeros, not whatever the heap held (24 and 12 channels, tiles of 16 or 7)
    weights = _packed_weights(built["main"])
    assert len(weights) >= len(pointwise) and any(w.shape[0] * w.shape[4] > channels for w, channels in weights)
    for w, channels in weights:
        lanes = np.moveaxis(w, 4, 1).reshape(-1, *w.shape[1:4])  # [G * t, K, 1, 1], channel by channel
        assert lanes[:channels].any() and not lanes[channels:].any()
    assert_matches_unscheduled(mod, _input((N, C, size, size)))


def _param_shapes(func) -> list[list[int]]:
    return [[int(d) for d in p.shape] for p in func.params]


def test_metaschedule_weight_layouts_are_packed_once_at_build_time():
    """MetaSchedule's candidates store weights and bias the way their tiles read them, as ours do.

    ``tir_passes`` marks a kernel's constant arguments layout-free, so its
    ``RewriteLayout`` postprocessor adds packing blocks to a candidate; the
    build runs them on the constants (29 output channels: tiles may pad).
    """
    mod = _graph(lambda bb, x: bb.emit(_conv(x, 29, relu=True)), (N, C, 8, 8))
    target = tasks.tuning_target(X86, host_cores=2)
    (task,) = [t for t in tasks.extract(build.lower(mod, X86), target) if "conv2d" in t.name]
    tvm_compat.import_tensor_intrinsics()
    context = ms.TuneContext(mod=task.mod, target=target, space_generator="post-order-apply",
                             search_strategy="replay-trace", rand_state=0, num_threads=1)
    context.pre_tuning(max_trials=8, num_trials_per_iter=8, design_spaces=context.generate_design_space())
    candidate = next(c for c in context.search_strategy.generate_measure_candidates()
                     if any(cpu.LAYOUT_REWRITE_PREPROC in c.sch.get(b).annotations for b in child_blocks(c.sch)))
    database = ms.database.MemoryDatabase()
    database.commit_tuning_record(ms.database.TuningRecord(candidate.sch.trace, database.commit_workload(task.mod),
                                                           [1e-3], target, candidate.args_info))
    with target, tvm.transform.PassContext(opt_level=3), database:
        built = tvm.transform.Sequential([*build.tir_passes(X86), *build.schedule_passes(X86, database=database),
                                          *build.weight_packing_passes()])(mod)
    assert not [gv.name_hint for gv in built.get_global_vars() if build.WEIGHT_PACKING_SUFFIX in gv.name_hint]
    (kernel,) = [f for gv, f in built.functions.items() if gv.name_hint.startswith(task.name)]
    assert _param_shapes(kernel) != _param_shapes(task.mod["main"])  # it takes the rewritten weights
    assert_matches_unscheduled(mod, _input((N, C, 8, 8)), database=database)


@pytest.mark.parametrize("classes, features", [(1000, 1024), (10, 30)])
def test_classifier_sums_slices_of_weight_rows(classes, features):
    """``x @ W + b``: the reduction cut into row blocks (4 and 3 here), summed at the end, equal to TVM's own."""
    weight = _rng().standard_normal((features, classes)) / np.sqrt(features)
    bias = _rng().standard_normal((classes,))
    mod = _graph(lambda bb, x: bb.emit(relax.op.add(relax.op.matmul(x, relax.const(weight.astype("float32"))),
                                                    relax.const(bias.astype("float32")))), (1, features))
    (dense,) = [f for gv, f in build.lower(mod, X86).functions.items() if "matmul" in gv.name_hint]
    assert "rfactor" in str(default_schedule(dense, X86.tvm_target()).trace)
    assert_matches_unscheduled(mod, _input((1, features)))


@pytest.mark.parametrize("target, isa, lanes", [("x86-avx2", "avx2", 8), ("x86-avx512", "avx512", 16),
                                                ("arm-rpi4", "neon", 4), ("arm-graviton2", "neon", 4)])
def test_tile_constants_follow_the_vector_isa(target, isa, lanes):
    constants = cpu_constants(targets.get(target).tvm_target())
    assert (constants.isa, constants.lanes()) == (isa, lanes)


def test_arm_build_compiles_with_the_default_schedules():
    assert build.build(fuse_shuffles(stride2_unit()), targets.get("arm-rpi4")) is not None


def test_cuda_build_compiles_the_gathered_kernels():
    mod = fuse_shuffles(v2_units(lambda bb, x: shuffle_5d(bb, x, 2), halves_split))
    assert build.build(mod, targets.get("cuda-sm_80")) is not None


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


@pytest.mark.parametrize("constants", [GPU, GPUConstants(threads_per_block=32, channels_per_thread=4, min_blocks=1)],
                         ids=["default", "channel-tiles"])
def test_cuda_convolutions_give_each_thread_its_own_outputs(constants):
    """Stock and gathered, depthwise (stride 1 and 2) and 1x1 kernels: one thread per output (tile), exact results."""
    spec = targets.get("cuda-sm_80")
    target = spec.tvm_target()
    graphs = [stride2_unit(), v1_unit(3), v2_units(lambda bb, x: shuffle_5d(bb, x, 2), halves_split)]
    kernels = [k for mod in graphs for k in _conv_kernels(fuse_shuffles(mod), spec)]
    ours = {name: (func, sch) for name, func in kernels
            if (sch := DirectConv(constants).apply(func, target, False)) is not None}
    kinds = {name: conv_shape(Schedule(func))[3] for name, (func, _) in ours.items()}
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
        blocks, threads = _thread_extents(sch.mod["main"])
        assert threads == min(constants.threads_per_block, outputs) and blocks == -(-outputs // threads), name
        args = [rng.standard_normal([int(d) for d in info.shape]).astype(str(info.dtype))
                for info in ms.arg_info.ArgInfo.from_prim_func(func)]
        expected = run_kernel(func, [a.copy() for a in args])
        assert np.abs(expected).max() > 0, name
        np.testing.assert_allclose(run_kernel(without_thread_bindings(sch, func), args), expected,
                                   atol=ATOL, rtol=RTOL, err_msg=name)
    assert max(tiles) == (1 if constants is GPU else 4)  # these graphs are small: the default keeps one channel


def test_gpu_threads_sum_several_channels_only_while_the_gpu_stays_full():
    assert channels_per_thread(116, 14 * 14, GPU) == 1  # ShuffleNetV2 1.0x stage 3: 178 blocks at one channel
    assert channels_per_thread(58, 56 * 56, GPU) == 2  # 58 = 2 x 29
    assert channels_per_thread(232, 56 * 56, GPU) == 4


def _thread_extents(func) -> list[int]:
    """Extents of the loops bound to GPU threads and blocks, outermost first."""
    return [int(extent) for extent in re.findall(r"T\.thread_binding\((?:T\.int64\()?(\d+)", func.script())]


def test_cuda_untuned_and_tuning_start_from_our_convolution_schedule():
    """The build's schedule passes and the tuning seeds both use our rule where it applies (dlight's otherwise)."""
    spec = targets.get("cuda-sm_80")
    target = spec.tvm_target()
    kernels = _conv_kernels(fuse_shuffles(stride2_unit()), spec)
    for name, func in kernels:
        ours = DirectConv().apply(func, target, False)
        seeded = default_schedule(func, target)
        assert (seeded is None) == (ours is None), name
        if ours is not None:
            assert str(seeded.trace) == str(ours.trace), name


# ---------------------------------------------------------------------------
# Every zoo model


def _fused_zoo_model(name: str, x: np.ndarray):
    """(zoo model with randomized BatchNorm, its fused Relax graph for ``x``, the fusion report)."""
    torch.manual_seed(0)
    module = models.randomize_batchnorm(models.build_model(name), seed=1)
    report = FusionReport()
    mod = fuse_shuffles(passes.optimize(frontends.from_torch_module(module, x.shape).mod, shuffle="stock"), report)
    return module, mod, report


@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_shuffle_of_a_zoo_model_is_fused(name):
    _module, _mod, report = _fused_zoo_model(name, _input((1, 3, 32, 32)))
    # v1 with one group has no shuffle; every other model has one per unit, all fused.
    spec = models.MODELS[name]
    assert len(report.shuffles) == (0 if spec.groups == 1 else 16 if spec.family == "v2" else 15)
    assert report.stock == {} and report.materialized == []


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in models.MODELS if name not in zoo_at_full_size()])
def test_fused_zoo_model_matches_pytorch(name):
    """Fused graph, default schedules, 1x3x32x32: equal to eager PyTorch with randomized BatchNorm.

    The zoo models test_zoo builds at full size (fused: the CLI's default) are not built again here.
    """
    x = _input((1, 3, 32, 32))
    module, mod, _report = _fused_zoo_model(name, x)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(mod, x), expected, atol=ATOL, rtol=RTOL)
