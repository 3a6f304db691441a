"""Channel-shuffle detection (``schedules.detect``): which values are shuffles, in every form the frontends produce.

Small Relax graphs (conftest's builders) are checked by what
:func:`find_shuffles` reports; nothing is built. That every unit of every
zoo model is found, and fused, is test_fusion's; so is what fusion does
with a shuffle once it is found.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import (C, H, N, TINY_SHAPE, W, conv_layer, even_odd, halves_slice, halves_split, relax_graph,
                      shuffle_4d, shuffle_5d, v2_units)
from tvm_shuffle import frontends, passes
from tvm_shuffle.schedules import find_shuffles, fuse_shuffles
from tvm_shuffle.tvm_compat import relax


@pytest.mark.parametrize("groups", [2, 3, 4, 8])
@pytest.mark.parametrize("form", [shuffle_5d, shuffle_4d], ids=["5d", "4d"])
def test_detects_a_shuffle_of_any_group_count(form, groups):
    (match,) = find_shuffles(relax_graph(lambda bb, x: form(bb, x, groups))["main"])
    assert (match.groups, match.channels, match.form) == (groups, C, "shuffle")


def test_detects_the_authors_even_odd_split_as_shuffle_then_split():
    (match,) = find_shuffles(relax_graph(lambda bb, x: bb.emit(relax.Tuple(list(even_odd(bb, x)))))["main"])
    # Even then odd channels are the two halves of a shuffle with C/2 groups of 2.
    assert (match.groups, match.form, match.windows) == (C // 2, "shuffle+split into 2", ((0, 12), (12, 24)))


@pytest.mark.parametrize("halves", [halves_split, halves_slice], ids=["split", "strided_slice"])
def test_detects_each_unit_of_a_v2_stage(halves):
    matches = find_shuffles(v2_units(halves=halves)["main"])
    assert [(m.groups, m.form) for m in matches] == [(2, "shuffle")] * 3


def test_detects_shuffles_in_what_each_frontend_produces(tiny_module, tiny_onnx, tiny_onnx_classic):
    """torch.export, ONNX (dynamo) and the classic ONNX exporter: one 2-group shuffle each."""
    for imported in (frontends.from_torch_module(tiny_module, TINY_SHAPE), frontends.from_onnx_file(tiny_onnx),
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


def _swapped_halves(bb, x):
    a, b = halves_split(bb, x)
    return bb.emit(relax.op.concat([b, a], axis=1))


@pytest.mark.parametrize("body", [_reversed_channels, _bit_reversal, _spatial_transpose, _swapped_halves],
                         ids=["reversed", "bit-reversal", "spatial", "swap-halves"])
def test_other_permutations_are_not_shuffles_and_stay_stock(body):
    mod = relax_graph(lambda bb, x: bb.emit(conv_layer(body(bb, bb.emit(conv_layer(x, C))), 8)))
    assert find_shuffles(mod["main"]) == []
    assert fuse_shuffles(mod) is mod

