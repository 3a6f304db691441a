"""The compile CLI: user errors are one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tvm_shuffle import compile as compile_cli


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tvm_shuffle.compile", *args], capture_output=True, text=True,
                          timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_explains_the_flags():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--model", "--onnx", "--torch", "--input-shape", "--weights", "--target", "--out", "examples:"):
        assert flag in result.stdout


def test_unknown_model_lists_valid_ones(tmp_path):
    result = run_cli("--model", "resnet50", "--out", str(tmp_path))
    assert_one_line_error(result, "unknown model 'resnet50'", "shufflenet_v2_x1_0", "shufflenet_v1_g3_x1_0")


def test_unknown_target_lists_valid_ones(tmp_path):
    result = run_cli("--model", "shufflenet_v2_x0_5", "--target", "riscv", "--out", str(tmp_path))
    assert_one_line_error(result, "unknown target 'riscv'", "x86", "arm", "cuda")


def test_missing_onnx_file(tmp_path):
    assert_one_line_error(run_cli("--onnx", str(tmp_path / "nope.onnx"), "--out", str(tmp_path)),
                          "ONNX model not found")


def test_text_file_named_onnx(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("hello\n")
    assert_one_line_error(run_cli("--onnx", str(path), "--out", str(tmp_path / "o")), "is not a valid ONNX model")


def test_two_model_sources(tmp_path):
    assert_one_line_error(run_cli("--model", "a", "--onnx", "b", "--out", str(tmp_path)), "exactly one of")


def test_mismatching_weights(tmp_path):
    import torch

    from tvm_shuffle import models

    path = tmp_path / "w.pt"
    torch.save(models.build_model("shufflenet_v2_x0_5").state_dict(), path)
    result = run_cli("--model", "shufflenet_v2_x1_0", "--weights", str(path), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "does not match shufflenet_v2_x1_0")


def test_cli_compiles_onnx_with_verbose_pass_summary(tiny_onnx, tmp_path, capsys):
    assert compile_cli.main(["--onnx", str(tiny_onnx), "--out", str(tmp_path / "o"), "-v"]) == 0
    captured = capsys.readouterr()
    assert "graph passes:" in captured.err and "built x86" in captured.out
    assert (tmp_path / "o" / "model.so").is_file() and (tmp_path / "o" / "manifest.json").is_file()


@pytest.mark.parametrize("shape", ["1,3,64,64", "1x3x64x64"])
def test_cli_input_shape_for_zoo_model(shape, tmp_path):
    from tvm_shuffle import runtime

    assert compile_cli.main(["--model", "shufflenet_v2_x0_5", "--input-shape", shape, "--out", str(tmp_path)]) == 0
    assert runtime.load(tmp_path).input_shape == (1, 3, 64, 64)
