"""Import -> passes -> build -> run on tiny models, for every importer.

Tolerance: fp32 outputs within atol=1e-4, rtol=1e-4 of the reference (PyTorch
eager, or ONNX Runtime for ONNX input); BN folding and TVM's reassociation of
sums move results by ~1e-6 relative.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tvm_shuffle import api, build, bundle_format, frontends, passes, runtime, targets
from tvm_shuffle.errors import UserError

ATOL = RTOL = 1e-4
X86 = targets.get("x86")


def torch_reference(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def ort_reference(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def compile_and_run(imported, x, out_dir, **kwargs) -> np.ndarray:
    model = runtime.load(api.compile(imported, X86, quiet=True, **kwargs).save(out_dir))
    (y,) = model(x)
    return y


@pytest.mark.parametrize("shuffle", ["fused", "stock"])
def test_torch_module_matches_eager(tiny_module, tiny_input, tmp_path, shuffle):
    imported = frontends.from_torch_module(tiny_module, tiny_input.shape, name="tiny")
    y = compile_and_run(imported, tiny_input, tmp_path, shuffle=shuffle)
    np.testing.assert_allclose(y, torch_reference(tiny_module, tiny_input), atol=ATOL, rtol=RTOL)


def test_pt2_round_trip(tiny_module, tiny_input, tmp_path):
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(tiny_module, (torch.from_numpy(tiny_input),)), str(path))
    imported = frontends.from_pt2(path, input_shape=tiny_input.shape)
    assert imported.input_shape == tiny_input.shape and imported.source == "pt2"
    y = compile_and_run(imported, tiny_input, tmp_path / "out")
    np.testing.assert_allclose(y, torch_reference(tiny_module, tiny_input), atol=ATOL, rtol=RTOL)
    with pytest.raises(UserError, match=r"exported for input shape \(1, 3, 16, 16\), not \(1, 3, 24, 24\)"):
        frontends.from_pt2(path, input_shape=(1, 3, 24, 24))


@pytest.mark.parametrize("fixture", ["tiny_onnx", "tiny_onnx_classic"])
def test_onnx_matches_onnxruntime(fixture, tiny_input, tmp_path, request):
    path = request.getfixturevalue(fixture)
    imported = frontends.from_onnx_file(path)
    assert imported.input_shape == tiny_input.shape
    y = compile_and_run(imported, tiny_input, tmp_path / "out")
    np.testing.assert_allclose(y, ort_reference(path, tiny_input), atol=ATOL, rtol=RTOL)


def test_manifest_describes_the_library(tiny_module, tiny_input, tmp_path):
    imported = frontends.from_torch_module(tiny_module, tiny_input.shape, name="tiny")
    out = api.compile(imported, X86, quiet=True).save(tmp_path)
    _, manifest = bundle_format.read_manifest(out)
    assert manifest["model"] == "tiny"
    assert manifest["inputs"] == [{"name": imported.input_name, "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "output0", "shape": [1, 10], "dtype": "float32"}]
    assert manifest["target"]["tvm"]["mcpu"] == X86.target["mcpu"] != "host"
    assert manifest["tvm_version"].startswith("0.27") and manifest["tuned"] is False
    assert (out / manifest["library"]).stat().st_size > 0


def test_batchnorm_folds_in_both_forms(tiny_module, tiny_input):
    """torch.export gives conv->BN; the stem conv has a bias, so conv+add->BN is covered too."""
    mod = frontends.from_torch_module(tiny_module, tiny_input.shape).mod
    before = passes.op_histogram(mod)
    after = passes.op_histogram(passes.fold_batchnorm(mod))
    assert before["relax.nn.batch_norm"] == 2 and after["relax.nn.batch_norm"] == 0
    assert after["relax.nn.conv2d"] == before["relax.nn.conv2d"]


def test_batchnorm_folds_in_onnx_form(tmp_path, tiny_input):
    """ONNX Conv with bias followed by BatchNormalization, as non-torch exporters write it."""
    path = _onnx_conv_bn(tmp_path / "conv_bn.onnx")
    imported = frontends.from_onnx_file(path)
    folded = passes.optimize(imported.mod)
    assert passes.op_histogram(imported.mod)["relax.nn.batch_norm"] == 1
    assert not {"relax.nn.batch_norm", "relax.multiply", "relax.divide", "relax.sqrt"} & set(passes.op_histogram(folded))
    y = compile_and_run(imported, tiny_input, tmp_path / "out")
    np.testing.assert_allclose(y, ort_reference(path, tiny_input), atol=ATOL, rtol=RTOL)


def _onnx_conv_bn(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, array):
        return numpy_helper.from_array(array.astype("float32"), name)

    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], epsilon=1e-3)]
    graph = helper.make_graph(
        nodes, "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        [init("w", rng.standard_normal((8, 3, 3, 3))), init("b", rng.standard_normal(8)),
         init("gamma", rng.uniform(0.5, 1.5, 8)), init("beta", rng.standard_normal(8)),
         init("mean", rng.standard_normal(8) * 0.5), init("var", rng.uniform(0.5, 2.0, 8))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_fold_is_numerically_exact_at_relax_level(tiny_module, tiny_input):
    """Optimized vs unoptimized module through the Relax VM, no export involved."""
    from tvm_shuffle.tvm_compat import relax, tvm

    mod = frontends.from_torch_module(tiny_module, tiny_input.shape).mod

    def run(m):
        ex = build.build(m, X86)
        vm = relax.VirtualMachine(ex, tvm.cpu())
        return vm["main"](tvm.runtime.tensor(tiny_input))[0].numpy()

    np.testing.assert_allclose(run(passes.optimize(mod)), run(mod), atol=1e-5, rtol=1e-5)


# --- bad input -------------------------------------------------------------

def test_runtime_rejects_wrong_shape_and_dtype(tiny_module, tiny_input, tmp_path):
    imported = frontends.from_torch_module(tiny_module, tiny_input.shape)
    model = runtime.load(api.compile(imported, X86, quiet=True).save(tmp_path))
    with pytest.raises(UserError, match=r"shape \(1, 3, 32, 32\) does not match the model's \(1, 3, 16, 16\)"):
        model(np.zeros((1, 3, 32, 32), "float32"))
    with pytest.raises(UserError, match="dtype float64 does not match the model's float32"):
        model(tiny_input.astype("float64"))


def test_runtime_rejects_a_directory_without_manifest(tmp_path):
    with pytest.raises(UserError, match="no manifest.json"):
        runtime.load(tmp_path)


@pytest.mark.parametrize("content, message", [
    (None, "ONNX model not found"),
    (b"this is not a model\n", "is not a valid ONNX model"),
])
def test_onnx_missing_or_text(tmp_path, content, message):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        frontends.from_onnx_file(path)


def test_onnx_truncated(tiny_onnx, tmp_path):
    data = tiny_onnx.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="is not a valid ONNX model"):
        frontends.from_onnx_file(path)


def test_onnx_unsupported_operator_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Celu", ["x"], ["y"])], "celu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    path = tmp_path / "celu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(UserError, match="not supported by TVM's importer: Celu"):
        frontends.from_onnx_file(path)


@pytest.mark.parametrize("text", ["1,3,a,4", "1,3,224", "0,3,224,224"])
def test_bad_input_shape_text(text):
    with pytest.raises(UserError, match="--input-shape"):
        frontends.parse_shape(text)


def test_unknown_target_lists_valid_ones():
    with pytest.raises(UserError, match=r"unknown target 'riscv'; valid targets: .*arm.*x86"):
        targets.get("riscv")


def test_inference_imports_neither_torch_onnx_nor_the_compiler(tiny_module, tiny_input, tmp_path):
    import subprocess
    import sys

    imported = frontends.from_torch_module(tiny_module, tiny_input.shape)
    out = api.compile(imported, X86, quiet=True).save(tmp_path)
    np.save(tmp_path / "x.npy", tiny_input)
    script = (
        "import sys, numpy as np\n"
        "from tvm_shuffle import runtime\n"
        f"(y,) = runtime.load({str(out)!r})(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
        "print(sorted(m for m in ('torch', 'onnx', 'tvm') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), torch_reference(tiny_module, tiny_input),
                               atol=ATOL, rtol=RTOL)


def test_benchmarks_refuse_a_checkout_python_does_not_import(tmp_path):
    """A benchmark in one clone must not measure another clone's installed code."""
    import pathlib

    import tvm_shuffle
    from tvm_shuffle import checkout

    here = pathlib.Path(tvm_shuffle.__file__).resolve().parents[1]
    checkout.require_checkout(here)
    with pytest.raises(SystemExit, match=f"imports tvm_shuffle from {here}"):
        checkout.require_checkout(tmp_path)


def test_benchmarks_record_the_revision_they_measured(tmp_path):
    import pathlib
    import subprocess

    import tvm_shuffle
    from tvm_shuffle import checkout

    here = pathlib.Path(tvm_shuffle.__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert head.stdout.strip()[:7] in checkout.revision(here)
    assert checkout.revision(tmp_path) == "unknown"
