"""Tuning seeds: the default schedules (and their tile alternatives) as MetaSchedule candidates, replayed at build time.

A seed is measured like any candidate, so it must compile with MetaSchedule's
builder and take the arguments its ``args_info`` names; committed to a
database, it must replay at build time and compute what TVM's unscheduled
lowering does (conftest's ``assert_matches_unscheduled``).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import (C, N, TOLERANCE, assert_matches_unscheduled, conv_kernels, conv_layer, host_spec, random_input,
                      relax_graph, run, stride2_unit, v2_units)
from tvm_shuffle import build, targets, tvm_compat
from tvm_shuffle.schedules import cpu, default_candidates, fuse_shuffles
from tvm_shuffle.schedules.analysis import child_blocks
from tvm_shuffle.schedules.constants import cpu_constants
from tvm_shuffle.tuning import tasks
from tvm_shuffle.tuning.builder import compile_candidate
from tvm_shuffle.tvm_compat import ms, tvm

AVX512 = "x86-avx512"


@pytest.mark.parametrize("graph, size", [
    (stride2_unit, 8),
    (lambda: v2_units(shape=(N, C, 7, 7)), 7),  # padded planes
], ids=["stride2", "padded-planes"])
def test_default_schedules_seed_a_tuning_database(graph, size):
    """Measured default candidates replay from the database at build time (how tuning starts from them)."""
    mod = fuse_shuffles(graph())
    spec = host_spec()
    target = spec.tvm_target()
    database = ms.database.MemoryDatabase()
    seeded = 0
    for task in ms.relax_integration.extract_tasks(build.lower(mod, spec), target):
        for candidate in default_candidates(task.dispatched[0], target):
            # measurable as MetaSchedule measures it: compiled by its builder, called on arguments made from args_info
            kernel = compile_candidate(candidate.sch.mod, target)
            kernel["main"](*[tvm.runtime.tensor(np.zeros([int(d) for d in a.shape], a.dtype))
                             for a in candidate.args_info])
            # MetaSchedule's feature extractor strips a weight packing block, which must be a plain copy for it
            ms.arg_info.ArgInfo.from_entry_func(candidate.sch.mod, remove_preproc=True)
            workload = database.commit_workload(task.dispatched[0])
            database.commit_tuning_record(ms.database.TuningRecord(candidate.sch.trace, workload, [1e-3], target,
                                                                   candidate.args_info))
            seeded += 1
    assert seeded >= 5  # every convolution task
    x = random_input((N, C, size, size))
    np.testing.assert_allclose(run(mod, x, database=database), run(graph(), x), **TOLERANCE)


def test_only_a_padded_plane_has_tile_alternatives():
    """On AVX-512 a 1x1 conv on a 7x7 plane gets one alternative per other padded tile; 8x8 and depthwise get none."""
    avx512 = targets.get(AVX512)
    target = avx512.tvm_target()
    alternatives = len(cpu_constants(target).padded_tiles) - 1
    ((_, padded),) = conv_kernels(relax_graph(lambda bb, x: bb.emit(conv_layer(x, C, relu=True)), (N, C, 7, 7)),
                                  avx512)
    schedules = cpu.tile_alternatives(padded, target)
    assert alternatives > 0 and len(schedules) == alternatives
    assert all("pad_einsum" in str(sch.trace) for sch in schedules)
    for shape, conv in [((N, C, 8, 8), {}), ((N, C, 7, 7), {"kernel": 3, "groups": C})]:
        ((name, func),) = conv_kernels(relax_graph(lambda bb, x: bb.emit(conv_layer(x, C, relu=True, **conv)), shape),
                                       avx512)
        assert cpu.tile_alternatives(func, target) == [], name
        assert len(default_candidates(tvm.IRModule({"main": func}), target)) == 1, name


@pytest.mark.parametrize("tile", range(len(cpu_constants(targets.get(AVX512).tvm_target()).padded_tiles)))
def test_each_tile_of_a_padded_plane_is_a_tuning_candidate_that_computes_the_same(tile):
    """On AVX-512 a 7x7 1x1 conv is seeded with one schedule per tile of ``padded_tiles``; each is correct."""
    graph = v2_units(shape=(N, C, 7, 7))
    spec = targets.get(AVX512)
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
    assert_matches_unscheduled(graph, random_input((N, C, 7, 7)), database=database, spec=spec)


def _param_shapes(func) -> list[list[int]]:
    return [[int(d) for d in p.shape] for p in func.params]


def test_metaschedule_weight_layouts_are_packed_once_at_build_time():
    """MetaSchedule's candidates store weights and bias the way their tiles read them, as ours do.

    ``tir_passes`` marks a kernel's constant arguments layout-free, so its
    ``RewriteLayout`` postprocessor adds packing blocks to a candidate; the
    build runs them on the constants (29 output channels: tiles may pad).
    """
    mod = relax_graph(lambda bb, x: bb.emit(conv_layer(x, 29, relu=True)), (N, C, 8, 8))
    spec = host_spec()
    target = tasks.tuning_target(spec, host_cores=2)
    (task,) = [t for t in tasks.extract(build.lower(mod, spec), target) if "conv2d" in t.name]
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
        built = tvm.transform.Sequential([*build.tir_passes(spec), *build.schedule_passes(spec, database=database),
                                          *build.weight_packing_passes()])(mod)
    assert not [gv.name_hint for gv in built.get_global_vars() if build.WEIGHT_PACKING_SUFFIX in gv.name_hint]
    (kernel,) = [f for gv, f in built.functions.items() if gv.name_hint.startswith(task.name)]
    assert _param_shapes(kernel) != _param_shapes(task.mod["main"])  # it takes the rewritten weights
    assert_matches_unscheduled(mod, random_input((N, C, 8, 8)), database=database)
