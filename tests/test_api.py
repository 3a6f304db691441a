"""The Python API: every model source compiles, runs, saves and loads; bad input is one UserError.

Numerics: the tiny model's outputs match PyTorch (ONNX Runtime for ONNX input)
within atol = rtol = 1e-4, and a saved bundle gives bit-identical outputs.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

import tvm_shuffle as ts
from tvm_shuffle import api

ATOL = RTOL = 1e-4


def torch_reference(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def onnxruntime_reference(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def assert_saved_bundle_matches(compiled: api.Compiled, x: np.ndarray, directory) -> None:
    (expected,) = compiled(x)
    out = compiled.save(directory)
    assert (out / "model.so").is_file() and (out / "lib").is_dir() and (out / "include" / "tvm_shuffle.h").is_file()
    np.testing.assert_array_equal(ts.load(out)(x)[0], expected)


def test_import_tvm_shuffle_loads_neither_torch_nor_the_compiler():
    code = ("import sys, tvm_shuffle as ts; ts.compile; ts.tune; ts.load; "
            "bad = [m for m in ('torch', 'tvm', 'onnx') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_commands_stay_commands_and_are_the_api_functions():
    import tvm_shuffle.compile

    assert callable(ts.compile) and callable(ts.compile.main) and ts.compile is tvm_shuffle.compile
    assert callable(ts.tune.main) and callable(ts.report.main)


def test_module_with_example_inputs(tiny_module, tiny_input, tmp_path):
    compiled = ts.compile(tiny_module, example_inputs=(torch.from_numpy(tiny_input),), quiet=True)
    (y,) = compiled(tiny_input)
    np.testing.assert_allclose(y, torch_reference(tiny_module, tiny_input), atol=ATOL, rtol=RTOL)
    assert compiled.manifest["inputs"][0]["shape"] == list(tiny_input.shape)
    assert compiled.manifest["target"]["name"] == "x86" and not compiled.manifest["tuned"]
    assert_saved_bundle_matches(compiled, tiny_input, tmp_path / "m")


def test_module_with_input_shape_and_exported_program(tiny_module, tiny_input):
    by_shape = ts.compile(tiny_module, input_shape=tiny_input.shape, quiet=True)
    program = torch.export.export(tiny_module, (torch.from_numpy(tiny_input),))
    by_program = ts.compile(program, quiet=True)
    expected = torch_reference(tiny_module, tiny_input)
    for compiled in (by_shape, by_program):
        np.testing.assert_allclose(compiled(tiny_input)[0], expected, atol=ATOL, rtol=RTOL)


def test_onnx_path_and_model_proto(tiny_onnx, tiny_input, tmp_path):
    expected = onnxruntime_reference(tiny_onnx, tiny_input)
    from_path = ts.compile(str(tiny_onnx), quiet=True)
    from_proto = ts.compile(onnx.load(str(tiny_onnx)), quiet=True)
    for compiled in (from_path, from_proto):
        np.testing.assert_allclose(compiled(tiny_input)[0], expected, atol=ATOL, rtol=RTOL)
    assert_saved_bundle_matches(from_proto, tiny_input, tmp_path / "proto")


@pytest.mark.slow
def test_zoo_name_matches_pytorch_and_profiles(tmp_path):
    from tvm_shuffle import models

    shape = (1, 3, 64, 64)
    compiled = ts.compile("shufflenet_v2_x0_5", input_shape=shape, quiet=True)
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    reference = torch_reference(models.build_model("shufflenet_v2_x0_5").eval(), x)
    np.testing.assert_allclose(compiled(x)[0], reference, atol=1e-3, rtol=1e-3)
    rows = compiled.profile(x)
    assert sum(r.share for r in rows) == pytest.approx(1.0)
    assert any(r.flops > 0 and r.name.startswith("fused_conv2d") for r in rows)
    assert_saved_bundle_matches(compiled, x, tmp_path / "zoo")


def test_module_without_example_inputs_or_shape(tiny_module):
    with pytest.raises(ts.UserError, match="needs example_inputs"):
        ts.compile(tiny_module, quiet=True)


@pytest.mark.parametrize("target, message", [("riscv", "unknown target 'riscv'"), (3, "not int 3")])
def test_unknown_target(tiny_module, target, message):
    with pytest.raises(ts.UserError, match=message):
        ts.compile(tiny_module, target, input_shape=(1, 3, 16, 16), quiet=True)


@pytest.mark.parametrize("model, message", [
    ("resnet50", "unknown model 'resnet50'"), ("no/such/model.onnx", "ONNX model not found"),
    (42, "cannot compile int 42"), ("shufflenet_v2_x0_5.bin", "no such file")])
def test_unknown_model_source(model, message):
    with pytest.raises(ts.UserError, match=message):
        ts.compile(model, quiet=True)


def test_bad_inputs_to_a_compiled_model(tiny_module, tiny_input):
    compiled = ts.compile(tiny_module, input_shape=tiny_input.shape, quiet=True)
    with pytest.raises(ts.UserError, match="must be a numpy array, not list"):
        compiled(tiny_input.tolist())
    with pytest.raises(ts.UserError, match=r"input shape \(1, 3, 8, 8\) does not match"):
        compiled(np.zeros((1, 3, 8, 8), "float32"))
    with pytest.raises(ts.UserError, match="dtype float64"):
        compiled(tiny_input.astype("float64"))


def test_a_model_built_for_another_machine_says_where_it_runs(tiny_module):
    compiled = ts.compile(tiny_module, "cuda", input_shape=(1, 3, 16, 16), quiet=True)
    with pytest.raises(ts.UserError, match="runs on a GPU"):
        compiled(np.zeros((1, 3, 16, 16), "float32"))


def test_compile_from_missing_records_names_them(tiny_module, tmp_path):
    from tvm_shuffle.errors import MissingRecords

    with pytest.raises(MissingRecords, match=r"no tuning database in .* \(records of tinyshuffleunit on x86\)"):
        ts.compile(tiny_module, input_shape=(1, 3, 16, 16), work_dir=tmp_path, quiet=True)


def test_tune_rejects_bad_budgets_and_lone_rpc_keys(tiny_module):
    with pytest.raises(ts.UserError, match="trials must be >= 0"):
        ts.tune(tiny_module, trials=-1, input_shape=(1, 3, 16, 16))
    with pytest.raises(ts.UserError, match="rpc_key needs rpc_tracker"):
        ts.tune(tiny_module, rpc_key="rpi4", input_shape=(1, 3, 16, 16))


def test_report_rejects_bad_settings_before_measuring(tiny_module):
    with pytest.raises(ts.UserError, match="unknown engine 'tensorrt'"):
        ts.report(tiny_module, input_shape=(1, 3, 16, 16), peers=["tensorrt"])
    with pytest.raises(ts.UserError, match="repeat must be at least 1"):
        ts.report(tiny_module, input_shape=(1, 3, 16, 16), repeat=0)


def test_readme_api_snippet_runs(tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = re.search(r"<!-- snippet:api -->\s*```python\n(.*?)```\s*<!-- /snippet:api -->", readme, re.S)
    assert section, "README.md lacks the <!-- snippet:api --> block (section 'Python API')"
    done = subprocess.run([sys.executable, "-c", section.group(1)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"slowest kernel: \w+, [\d.]+ us per inference, [\d.]+ GFLOP/s\n", done.stdout), done.stdout
    assert (tmp_path / "out" / "api" / "manifest.json").is_file()
