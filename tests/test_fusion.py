"""The fuse passes (``schedules.fuse``): shuffles, splits and concats stop being copies, and results stay equal.

Structure: the data-movement operators left after :func:`fuse_shuffles` and
what its :class:`FusionReport` says. Numerics: the fused graph against the
stock one, both built with the default schedules (conftest's ``TOLERANCE``),
and every zoo model not built by test_zoo against eager PyTorch (slow).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import (C, N, TOLERANCE, conv_layer, halves_slice, halves_split, host_spec, random_input, relax_graph,
                      run, shuffle2, shuffle_4d, shuffle_5d, stride2_unit, v1_unit, v2_megvii, v2_units,
                      zoo_at_full_size)
from tvm_shuffle import build, frontends, models, passes
from tvm_shuffle.schedules import FusionReport, fuse, fuse_shuffles
from tvm_shuffle.tvm_compat import relax

DATA_MOVEMENT = ("relax.reshape", "relax.permute_dims", "relax.concat", "relax.split", "relax.strided_slice",
                 "relax.take")


def fused_and_report(mod):
    report = FusionReport()
    return fuse_shuffles(mod, report), report


def data_movement(mod) -> dict:
    counts = passes.op_histogram(mod)
    return {op: counts[op] for op in DATA_MOVEMENT if counts[op]}


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
    x = random_input()
    np.testing.assert_allclose(run(fused, x), run(mod, x), **TOLERANCE)


def test_even_odd_release_form_leaves_no_data_movement():
    mod = v2_megvii()
    fused, report = fused_and_report(mod)
    assert (report.fused, report.materialized, data_movement(fused)) == (3, [], {})
    x = random_input()
    np.testing.assert_allclose(run(fused, x), run(mod, x), **TOLERANCE)


@pytest.mark.parametrize("groups", [2, 3, 4, 8])
def test_v1_shuffle_moves_into_the_depthwise_conv(groups):
    mod = v1_unit(groups)
    fused, report = fused_and_report(mod)
    assert (report.fused, report.materialized, data_movement(fused)) == (1, [], {})
    # The depthwise conv reads its planes through the shuffle formula; the
    # grouped conv after it stays a plain conv2d.
    assert (report.absorbed, report.gathered) == (0, 1)
    assert passes.op_histogram(fused)["relax.nn.conv2d"] == 2
    x = random_input()
    np.testing.assert_allclose(run(fused, x), run(mod, x), **TOLERANCE)


def test_stride2_unit_reads_the_shuffled_input_in_both_branches():
    mod = stride2_unit()
    fused, report = fused_and_report(mod)
    # The last shuffle is the function's output: materialized once, by one
    # gather from the two branch outputs (concat + take, fused into one kernel).
    assert data_movement(fused) == {"relax.concat": 1, "relax.take": 1}
    assert report.fused == 1 and len(report.stock) == 1 and len(report.materialized) == 1
    x = random_input((N, C, 8, 8))
    np.testing.assert_allclose(run(fused, x), run(mod, x), **TOLERANCE)


def test_a_shuffled_output_is_materialized_exactly_once():
    mod = relax_graph(lambda bb, x: bb.emit(relax.Tuple([shuffle_5d(bb, bb.emit(conv_layer(x, C)), 4)])))
    fused, report = fused_and_report(mod)
    assert data_movement(fused) == {"relax.take": 1}
    assert "is read by" in report.summary()
    x = random_input()
    np.testing.assert_allclose(run(fused, x), run(mod, x), **TOLERANCE)


def test_a_shuffle_before_pooling_moves_into_the_classifier():
    """conv -> shuffle -> mean over H, W -> scale per channel -> matmul: the classifier's rows absorb it."""
    rng = np.random.default_rng(0)

    def body(bb, x):
        pooled = bb.emit(relax.op.mean(shuffle_5d(bb, bb.emit(conv_layer(x, C, relu=True)), 3), axis=[2, 3]))
        scaled = bb.emit(relax.op.multiply(pooled, relax.const(rng.standard_normal(C).astype("float32"))))
        return bb.emit(relax.op.matmul(scaled, relax.const(rng.standard_normal((C, 5)).astype("float32"))))

    mod = relax_graph(body)
    fused, report = fused_and_report(mod)
    assert (report.fused, report.absorbed, data_movement(fused)) == (1, 1, {})
    x = random_input()
    np.testing.assert_allclose(run(fused, x), run(mod, x), **TOLERANCE)


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
    np.testing.assert_allclose(run(fused, tiny_input), run(stock, tiny_input), **TOLERANCE)


def test_a_model_without_shuffles_is_returned_unchanged():
    mod = relax_graph(lambda bb, x: bb.emit(conv_layer(bb.emit(conv_layer(x, C, relu=True)), 8)))
    fused, report = fused_and_report(mod)
    assert fused is mod and report.shuffles == []
    assert passes.optimize(mod, shuffle="fused").script() == passes.optimize(mod, shuffle="stock").script()
    assert report.summary() == "channel shuffles: none found (module unchanged)"


def test_a_main_the_rewrite_does_not_handle_stays_stock_and_says_why():
    """A constant bound to a variable is no binding the rewrite re-emits: decided before rewriting anything."""

    def body(bb, x):
        ones = bb.emit(relax.const(np.ones((1, C, 1, 1), "float32")))
        return bb.emit(relax.op.add(shuffle2(bb, x), ones))

    mod = relax_graph(body)
    fused, report = fused_and_report(mod)
    assert fused is mod and len(report.shuffles) == 1 and report.fused == 0
    assert "left stock: main binds" in report.summary()


def test_a_rewrite_that_fails_raises_instead_of_leaving_the_model_stock(monkeypatch):
    """Once the rewrite has taken a function, an error in it is a bug to see, not a reason to fall back."""

    def broken(self, var, call):
        raise RuntimeError("conv2d rewrite broke")

    monkeypatch.setattr(fuse._Rewriter, "_conv2d", broken)
    with pytest.raises(RuntimeError, match="conv2d rewrite broke"):
        fuse_shuffles(v2_units())


@pytest.mark.parametrize("shuffle, expected", [
    ("fused", "channel shuffles: 3 found (groups 2), 3 fused, 0 left as a copy"),
    ("stock", "channel shuffles: 3 found (groups 2), 0 fused, 3 left as a copy"),
])
def test_verbose_compile_says_what_fusion_did(shuffle, expected, capsys):
    imported = frontends.Imported(mod=v2_units(), name="units", source="torch", input_name="x",
                                  input_shape=(N, C, 6, 6))
    build.compile_imported(imported, host_spec(), shuffle=shuffle, verbose=True)
    assert expected in capsys.readouterr().err


def test_verbose_compile_of_a_model_without_shuffles_says_so(capsys):
    imported = frontends.Imported(mod=relax_graph(lambda bb, x: bb.emit(conv_layer(x, 8))), name="plain",
                                  source="torch", input_name="x", input_shape=(N, C, 6, 6))
    build.compile_imported(imported, host_spec(), verbose=True)
    assert "channel shuffles: none found (module unchanged)" in capsys.readouterr().err


def fused_zoo_model(name: str, x: np.ndarray):
    """(zoo model with randomized BatchNorm, its fused Relax graph for ``x``, the fusion report)."""
    torch.manual_seed(0)
    module = models.randomize_batchnorm(models.build_model(name), seed=1)
    report = FusionReport()
    mod = fuse_shuffles(passes.optimize(frontends.from_torch_module(module, x.shape).mod, shuffle="stock"), report)
    return module, mod, report


@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_shuffle_of_a_zoo_model_is_found_and_fused(name):
    _module, _mod, report = fused_zoo_model(name, random_input((1, 3, 32, 32)))
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
    x = random_input((1, 3, 32, 32))
    module, mod, _report = fused_zoo_model(name, x)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(mod, x), expected, **TOLERANCE)
