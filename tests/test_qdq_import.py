"""Already-quantized ONNX: QDQ models, QLinearConv, QLinearMatMul and ConvInteger build int8 from their own parameters.

Tolerances, against ONNX Runtime running the same file:

* a 1x1 convolution the int8 kernel computes sums the same u8 x s8 products
  as ONNX Runtime's integer convolution; ONNX Runtime then rounds the result
  to the output's 8-bit grid and we do not (the Q/DQ pair after it is
  dropped), so they differ by at most half an output step (plus fp32
  rounding): ``s_y / 2 + 1e-5``; so does a 2-D QLinearMatMul, an int8 dense
  kernel. ConvInteger's sums are integers: equal.
* a convolution or matmul that stays fp32 reads its input unrounded where
  ONNX Runtime reads it rounded to the input's grid, at most ``s_x / 2``
  apart per element: its outputs differ by at most
  ``s_x / 2 * sum_k |w[o, k]|`` plus half an output step.
* the QDQ ShuffleNetV2 drops about a hundred such roundings, each at most
  half a step, and they spread through the network: its logits stay within
  3 output steps of ONNX Runtime's (about 1 was seen), within 2 % relative,
  with the same top-1; against fp32 they are at least as close as ONNX
  Runtime's (our unrounded activations are nearer fp32 than its rounded ones).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_shuffle as ts
from conftest import runs_natively
from tvm_shuffle import build, frontends, qdq
from tvm_shuffle.errors import UserError

ort = pytest.importorskip("onnxruntime")


native_host = runs_natively("avx512_vnni")


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def onnx_runtime(model, x: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def model_of(nodes, inits, x_shape, y_shape, name="quantized"):
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(np.asarray(value), key) for key, value in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


# Scales and zero points of the small models: s_x, zp_x (u8 or s8), s_y, zp_y.
S_X, S_Y = 0.02, 0.05
ZERO_POINTS = {np.uint8: (120, 100), np.int8: (3, -5)}


def qlinear_conv(*, kernel=1, activation=np.uint8, per_channel=True, bias=True, channels=8, out=16, size=6):
    """x -> QuantizeLinear -> QLinearConv -> DequantizeLinear -> y, random s8 weights and int32 bias."""
    rng = np.random.default_rng(0)
    zp_x, zp_y = ZERO_POINTS[activation]
    inits = {"s_x": np.float32(S_X), "zp_x": activation(zp_x), "s_y": np.float32(S_Y), "zp_y": activation(zp_y),
             "w": rng.integers(-127, 128, (out, channels, kernel, kernel)).astype(np.int8),
             "s_w": (rng.uniform(0.5, 2, out) * 0.01).astype(np.float32) if per_channel else np.float32(0.01),
             "zp_w": np.zeros(out if per_channel else (), np.int8),
             "b": rng.integers(-2000, 2000, out).astype(np.int32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["xq"]),
             helper.make_node("QLinearConv", ["xq", "s_x", "zp_x", "w", "s_w", "zp_w", "s_y", "zp_y"]
                              + (["b"] if bias else []), ["yq"], kernel_shape=[kernel, kernel], pads=[kernel // 2] * 4),
             helper.make_node("DequantizeLinear", ["yq", "s_y", "zp_y"], ["y"])]
    return model_of(nodes, inits, [1, channels, size, size], [1, out, size, size]), inits


def qlinear_matmul(shape=(1, 1, 4, 16)):
    """x -> QuantizeLinear -> QLinearMatMul with s8 (16, 10) weights, per-column scales -> DequantizeLinear."""
    rng = np.random.default_rng(0)
    inits = {"s_x": np.float32(S_X), "zp_x": np.uint8(128), "s_y": np.float32(S_Y), "zp_y": np.uint8(128),
             "w": rng.integers(-127, 128, (16, 10)).astype(np.int8),
             "s_w": (rng.uniform(0.5, 2, 10) * 0.01).astype(np.float32), "zp_w": np.zeros(10, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["xq"]),
             helper.make_node("QLinearMatMul", ["xq", "s_x", "zp_x", "w", "s_w", "zp_w", "s_y", "zp_y"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s_y", "zp_y"], ["y"])]
    return model_of(nodes, inits, list(shape), [*shape[:-1], 10]), inits


def conv_integer(*, cast=True):
    """x -> QuantizeLinear -> ConvInteger (s8 weights) -> Cast to float -> Mul by the scales, as quantizers write it."""
    rng = np.random.default_rng(0)
    inits = {"s_x": np.float32(S_X), "zp_x": np.uint8(120), "w": rng.integers(-127, 128, (16, 8, 1, 1)).astype(np.int8),
             "scale": np.float32(S_X * 0.01)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["xq"]),
             helper.make_node("ConvInteger", ["xq", "w", "zp_x"], ["sums"], kernel_shape=[1, 1])]
    if cast:
        nodes += [helper.make_node("Cast", ["sums"], ["sums_f"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["sums_f", "scale"], ["y"])]
    else:  # the int32 sums read as integers
        inits["three"] = np.int32(3)
        nodes += [helper.make_node("Mul", ["sums", "three"], ["sums3"]),
                  helper.make_node("Cast", ["sums3"], ["y"], to=TensorProto.FLOAT)]
    return model_of(nodes, inits, [1, 8, 6, 6], [1, 16, 6, 6])


def input_rounding_bound(weights: np.ndarray, axis) -> np.ndarray:
    """How far an fp32 operator's outputs move when each input moves by at most half an input step.

    ``weights`` are the real ones; ``axis`` the axes an output sums over.
    """
    return S_X / 2 * np.abs(weights.astype(np.float64)).sum(axis=axis)


def compile_quietly(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no synthetic-calibration warning: nothing is calibrated
        return ts.compile(model, quiet=True, **kwargs)


X = np.random.default_rng(1).standard_normal((1, 8, 6, 6)).astype(np.float32) * 2


# ---------------------------------------------------------------------------
# Quantized operators against ONNX Runtime


@native_host
@pytest.mark.parametrize("activation, per_channel, bias", [(np.uint8, True, True), (np.int8, True, True),
                                                          (np.uint8, False, False)])
def test_a_1x1_qlinear_conv_is_an_int8_kernel_within_half_an_output_step_of_onnx_runtime(activation, per_channel, bias):
    model, _ = qlinear_conv(activation=activation, per_channel=per_channel, bias=bias)
    compiled = compile_quietly(model)
    quantization = compiled.manifest["precision"]["quantization"]
    assert compiled.manifest["precision"]["name"] == "int8" and quantization["source"] == "model"
    assert quantization["int8_convs"] == 1 and quantization["fp32_ops"] == []
    assert np.abs(compiled(X)[0] - onnx_runtime(model, X)).max() <= S_Y / 2 + 1e-5


@native_host
def test_an_opset_10_qlinear_conv_with_per_channel_weights_imports():
    """Per-channel DequantizeLinear needs opset 13: the rewritten model is converted."""
    model, _ = qlinear_conv()
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 10))
    model.ir_version = 5
    compiled = compile_quietly(model)
    assert compiled.manifest["precision"]["quantization"]["int8_convs"] == 1
    assert np.abs(compiled(X)[0] - onnx_runtime(model, X)).max() <= S_Y / 2 + 1e-5


@native_host
def test_a_3x3_qlinear_conv_runs_in_fp32_within_its_input_rounding_of_onnx_runtime():
    model, inits = qlinear_conv(kernel=3)
    compiled = compile_quietly(model)
    assert compiled.manifest["precision"]["quantization"]["fp32_ops"] == ["conv2d 3x3 dense (1)"]
    weights = inits["w"] * inits["s_w"].reshape(-1, 1, 1, 1)
    bound = input_rounding_bound(weights, axis=(1, 2, 3)).reshape(1, -1, 1, 1) + S_Y / 2 + 1e-5
    assert (np.abs(compiled(X)[0] - onnx_runtime(model, X)) <= bound).all()


@native_host
def test_a_2d_qlinear_matmul_is_an_int8_dense_kernel_within_half_an_output_step_of_onnx_runtime():
    model, _ = qlinear_matmul((3, 16))
    x = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    compiled = compile_quietly(model)
    quantization = compiled.manifest["precision"]["quantization"]
    assert quantization["int8_dense"] == 1 and quantization["fp32_ops"] == []
    assert np.abs(compiled(x)[0] - onnx_runtime(model, x)).max() <= S_Y / 2 + 1e-5


@native_host
def test_a_4d_qlinear_matmul_runs_in_fp32_within_its_input_rounding_of_onnx_runtime():
    model, inits = qlinear_matmul()
    x = np.random.default_rng(2).standard_normal((1, 1, 4, 16)).astype(np.float32)
    compiled = compile_quietly(model)
    assert compiled.manifest["precision"]["quantization"]["fp32_ops"] == ["matmul (1)"]
    bound = input_rounding_bound(inits["w"] * inits["s_w"], axis=0) + S_Y / 2 + 1e-5
    assert (np.abs(compiled(x)[0] - onnx_runtime(model, x)) <= bound).all()


@native_host
def test_conv_integer_cast_to_float_is_an_int8_kernel_with_onnx_runtime_s_exact_sums():
    model = conv_integer()
    compiled = compile_quietly(model)
    assert compiled.manifest["precision"]["quantization"]["int8_convs"] == 1
    np.testing.assert_array_equal(compiled(X)[0], onnx_runtime(model, X))


def test_conv_integer_read_as_integers_is_one_user_error():
    with pytest.raises(UserError, match="ConvInteger .*read as integers"):
        frontends.from_onnx_model(conv_integer(cast=False))


def test_an_unsupported_quantized_operator_is_named_in_one_user_error():
    model, _ = qlinear_conv()
    model.graph.node.append(helper.make_node("QLinearAdd", ["yq", "s_y", "zp_y", "yq", "s_y", "zp_y", "s_y", "zp_y"],
                                             ["zq"], domain="com.microsoft"))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UserError, match=r"quantized ONNX operator\(s\) tvm_shuffle cannot import: "
                                        r"QLinearAdd \(com.microsoft\)"):
        frontends.from_onnx_model(model)


# ---------------------------------------------------------------------------
# The graph pass


def test_the_qdq_pass_leaves_no_quantize_or_dequantize_and_keeps_the_model_s_parameters():
    model, inits = qlinear_conv(activation=np.int8)
    quantization = qdq.ModelQuantization()
    mod = qdq.rewrite_qdq(frontends.from_onnx_model(model).mod, quantization)
    assert quantization.fake == [] and not qdq.carries_quantization(mod)
    # An s8 activation is its u8 image: the zero point shifted by 128.
    assert list(quantization.table.values()) == [qdq.int8.InputQuant(float(np.float32(S_X)), 3 + 128)]
    assert quantization.clamps == 1  # the output's pair: its clamp to [(-128 - zp) s, (127 - zp) s]


def test_constants_are_quantized_and_dequantized_with_onnx_s_semantics():
    params = qdq._Params(np.array([0.5, 2.0], np.float32), np.array([1, -2], np.int8), 0, "int8")
    values = np.array([[3.0, -1.25], [300.0, 3.0]], np.float32)
    quantized = qdq.quantize_constant(values, params)
    np.testing.assert_array_equal(quantized, [[7, -1], [127, 0]])  # -2.5 -> -2 and 1.5 -> 2 (half to even), saturate
    np.testing.assert_array_equal(qdq.dequantize_constant(quantized, params), [[3.0, -1.0], [258.0, 4.0]])


# ---------------------------------------------------------------------------
# What the caller asks for


def test_a_quantized_model_builds_int8_by_default_and_says_so(capsys):
    model, _ = qlinear_conv()
    compiled = compile_quietly(model, verbose=True)
    err = capsys.readouterr().err
    assert "is quantized (QDQ): building int8 with its own scales and zero points instead of the default fp32" in err
    assert "int8: 1 1x1 convolutions" in err and "no calibration" in err
    assert compiled.manifest["precision"]["quantization"]["requested"] == "fp32"
    again = compile_quietly(model, precision="int8")  # and --quantize int8 does not calibrate on top
    assert again.manifest["precision"]["quantization"]["requested"] == "int8"
    assert "calibration" not in again.manifest["precision"]


def test_a_calibration_set_or_another_precision_with_a_quantized_model_is_one_user_error():
    model, _ = qlinear_conv()
    with pytest.raises(UserError, match="already quantized .* takes no calibration set"):
        ts.compile(model, quiet=True, precision="int8", calibration=np.zeros((2, 8, 6, 6), np.float32))
    with pytest.raises(UserError, match="builds in int8 from its own scales and zero points, not in bf16"):
        ts.compile(model, quiet=True, precision="bf16")
    with pytest.raises(UserError, match="tuning it is not supported yet"):
        ts.tune(model, trials=0)


def test_the_cli_prints_the_fp32_operators(tmp_path, capsys):
    from tvm_shuffle.compile import main

    model, _ = qlinear_conv(kernel=3)
    onnx.save(model, tmp_path / "q.onnx")
    assert main(["--onnx", str(tmp_path / "q.onnx"), "--out", str(tmp_path / "out"), "-v"]) == 0
    assert "stay fp32 (no int8 kernel): conv2d 3x3 dense (1)" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# ShuffleNetV2 as onnxruntime.quantization.quantize_static writes it


@pytest.fixture(scope="module")
def shufflenet_qdq(tmp_path_factory):
    """ShuffleNetV2 0.5x (randomized BatchNorm) at 1x3x64x64: its fp32 ONNX file and the QDQ file of quantize_static."""
    pytest.importorskip("onnxruntime.quantization")
    import torch

    from tvm_shuffle import models, peers

    directory = tmp_path_factory.mktemp("qdq")
    torch.manual_seed(0)
    module = models.randomize_batchnorm(models.build_model("shufflenet_v2_x0_5")).eval()
    shape = (1, 3, 64, 64)
    fp32 = directory / "v2.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(shape),), str(fp32), dynamo=False, opset_version=13,
                          input_names=["x"], output_names=["y"])
        calibration = np.random.default_rng(1).standard_normal((16, *shape[1:])).astype(np.float32)
        quantized = peers.ort_quantize_static(fp32, calibration, directory / "v2.qdq.onnx")
    return fp32, quantized


def output_step(model_file: Path) -> float:
    """The scale of the QuantizeLinear that makes the model's output (its logits' 8-bit grid)."""
    model = onnx.load(str(model_file))
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    dequantize = producer[model.graph.output[0].name]
    return float(inits[dequantize.input[1]])


def int8_kernels(compiled) -> list[str]:
    """The kernels of the library that compute a ``conv2d_int8`` stage (u8 x s8 -> s32 sums)."""
    from tvm_shuffle.schedules import int8
    from tvm_shuffle.schedules.analysis import child_blocks
    from tvm_shuffle.tvm_compat import Schedule, tvm

    names = []
    for gv, func in build.lower(compiled._built.mod, compiled.spec).functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            sch = Schedule(func)
            if any(sch.get(block).name_hint == int8.CONV for block in child_blocks(sch)):
                names.append(gv.name_hint)
    return names


@pytest.mark.slow
@native_host
def test_shufflenet_v2_qdq_matches_onnx_runtime_with_integer_kernels(shufflenet_qdq, tmp_path):
    fp32, quantized = shufflenet_qdq
    compiled = ts.compile(quantized, quiet=True)
    quantization = compiled.manifest["precision"]["quantization"]
    assert compiled.manifest["precision"]["name"] == "int8" and quantization["source"] == "model"
    assert quantization["int8_convs"] == 36 and quantization["int8_dense"] == 1  # every 1x1 conv, the classifier
    assert quantization["fp32_ops"] == ["conv2d 3x3 dense (1)", "conv2d 3x3 depthwise (19)", "max_pool2d (1)", "mean (1)"]
    assert "fake_quantization_kept" not in quantization
    assert len(int8_kernels(compiled)) == 36  # the fused kernels of the 1x1 convolutions are int8 ones
    step = output_step(quantized)
    ours, theirs = [], []
    for x in np.random.default_rng(2).standard_normal((4, 1, 3, 64, 64)).astype(np.float32):
        out, ref, fp = compiled(x)[0], onnx_runtime(quantized, x), onnx_runtime(fp32, x)
        assert np.abs(out - ref).max() <= 3 * step and relative_error(out, ref) < 0.02
        assert out.argmax() == ref.argmax() == fp.argmax()
        ours.append(relative_error(out, fp))
        theirs.append(relative_error(ref, fp))
    assert np.mean(ours) <= np.mean(theirs), (ours, theirs)
    objdump = shutil.which("objdump")
    if objdump is not None:
        library = compiled.save(tmp_path / "b") / "model.so"
        code = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(library)], capture_output=True,
                              text=True).stdout
        assert re.search(r"\svpdpbusd\s", code), "no vpdpbusd in the library"
