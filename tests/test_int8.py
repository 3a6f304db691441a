"""``precision="int8"`` (``--quantize int8``): post-training static int8 1x1 convolutions, fp32 elsewhere.

Tolerances: against fp32 PyTorch the relative logit error ``|out - ref| /
|ref|`` stays below the registry's ``tolerance`` for int8 (5e-2), and on the
same weights and calibration set it is at most 1.5x that of the QDQ model
``onnxruntime.quantization.quantize_static`` writes (per-channel s8 weights,
u8 activations, MinMax): both quantize the same tensors to 8 bits, so ours
should be no worse than ONNX Runtime's, whose error also counts its
quantized depthwise convolutions. The native kernel's inner loop is
``vpdpbusd`` (the exported library's disassembly); a target without AVX-512
VNNI computes the same integers with 32-bit multiply-adds and says so.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import tvm_shuffle as ts
from conftest import cpu_has, runs_natively
from tvm_shuffle import api, precisions, quantize, targets
from tvm_shuffle.errors import MissingRecords, UserError
from tvm_shuffle.schedules import int8

INT8 = precisions.get("int8")


native_host = runs_natively("avx512_vnni")


def vnni_spec() -> targets.TargetSpec:
    """An x86 target with AVX-512 VNNI whatever this host is (Zen 4), for code that is only inspected."""
    base = targets.get("x86-avx512")
    return dataclasses.replace(base, name="x86-znver4", target={**base.target, "mcpu": "znver4"})


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def torch_reference(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


# ---------------------------------------------------------------------------
# Registry, flags, calibration sets


def test_int8_is_a_calibrated_precision_native_with_vnni_only():
    assert INT8.calibrated and not precisions.get("bf16").calibrated
    assert INT8.mode(vnni_spec()) == "native"
    assert INT8.mode(targets.get("x86-avx2")) == "integer"
    assert quantize.CALIBRATORS == precisions.CALIBRATORS == ("minmax", "percentile")


@pytest.mark.parametrize("data, message", [
    (np.zeros((2, 3, 8, 8), np.float32), "must be Nx3x16x16 for this model, not 2x3x8x8"),
    (np.zeros((2, 3, 16, 16), np.int64), "must be floating point"),
    (np.zeros((0, 3, 16, 16), np.float32), "empty"),
    (np.full((1, 3, 16, 16), np.nan, np.float32), "NaN"),
])
def test_a_bad_calibration_set_is_one_user_error(data, message):
    with pytest.raises(UserError, match=message):
        quantize.load_calibration(data, (1, 3, 16, 16))


def test_calibration_files_are_checked(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        quantize.load_calibration(tmp_path / "missing.npy", (1, 3, 16, 16))
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(UserError, match=r"\.npy file or a directory"):
        quantize.load_calibration(tmp_path / "x.txt", (1, 3, 16, 16))
    np.save(tmp_path / "c.npy", np.ones((3, 3, 16, 16), np.float32))
    assert quantize.load_calibration(tmp_path / "c.npy", (1, 3, 16, 16)).data.shape == (3, 3, 16, 16)
    with pytest.raises(UserError, match="no images"):
        quantize.load_calibration(tmp_path, (1, 3, 16, 16))
    with pytest.raises(UserError, match="unknown calibrator 'kl'"):
        quantize.load_calibration(None, (1, 3, 16, 16), calibrator="kl")


def test_a_directory_of_images_is_preprocessed_as_torchvision_does(tmp_path):
    """Short side resized to 256/224 of the crop, center crop, ImageNet normalization, CHW."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 30), (17, 64), (16, 16)]):  # (width, height): landscape, portrait, square
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    Image.new("RGB", (20, 20), (255, 255, 255)).save(tmp_path / "white.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    data = quantize.load_calibration(tmp_path, (1, 3, 16, 16)).data
    assert data.shape == (4, 3, 16, 16) and data.dtype == np.float32
    white = data[3]  # sorted names: 0.png, 1.png, 2.png, white.jpg
    expected = (1.0 - np.array(quantize.IMAGENET_MEAN)) / np.array(quantize.IMAGENET_STD)
    np.testing.assert_allclose(white[:, 8, 8], expected, rtol=1e-5)
    assert np.isfinite(data).all() and -2.2 < data.min() and data.max() < 2.7


def test_no_calibration_set_warns_and_uses_seeded_noise():
    with pytest.warns(UserWarning, match="synthetic N\\(0, 1\\) images"):
        first = quantize.load_calibration(None, (1, 3, 16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second = quantize.load_calibration(None, (1, 3, 16, 16))
    assert first.data.shape == (quantize.SYNTHETIC_IMAGES, 3, 16, 16) and np.array_equal(first.data, second.data)


def test_weights_are_symmetric_per_output_channel():
    weight = np.array([[1.0, -2.0], [0.5, 0.25], [0.0, 0.0]], np.float32).reshape(3, 2, 1, 1)
    quantized, scale = quantize.quantize_weights(weight)
    assert quantized.dtype == np.int8 and np.abs(quantized).max() == 127
    np.testing.assert_allclose(scale, [2 / 127, 0.5 / 127, 1.0])
    assert quantize.input_quant(-1.0, 3.0) == quantize.int8.InputQuant(4 / 255, 64)
    assert quantize.input_quant(0.5, 2.0).zero_point == 0  # the range widened to hold 0


def test_the_cli_flags_map_onto_the_precision(capsys):
    import argparse

    from tvm_shuffle import cli

    parser = argparse.ArgumentParser()
    cli.add_target_arguments(parser)
    args = parser.parse_args(["--quantize", "int8", "--calibration", "c.npy", "--calibrator", "percentile"])
    assert cli.precision(args) == "int8"
    assert cli.quantization(args) == {"calibration": "c.npy", "calibrator": "percentile"}
    with pytest.raises(UserError, match="--quantize int8 and --precision bf16 disagree"):
        cli.precision(parser.parse_args(["--quantize", "int8", "--precision", "bf16"]))
    with pytest.raises(UserError, match="--calibration applies to --quantize int8"):
        cli.precision(parser.parse_args(["--calibration", "c.npy"]))


INT8_TRIALS = 8


@native_host
def test_tuning_int8_tunes_the_int8_kernels_and_compile_builds_from_their_records(tiny_module, tiny_input, tmp_path):
    from tvm_shuffle.frontends import import_model
    from tvm_shuffle.schedules import default_candidates, int8
    from tvm_shuffle.tuning import database

    example = (torch.from_numpy(tiny_input),)
    calibration = np.random.default_rng(1).standard_normal((4, *tiny_input.shape[1:])).astype(np.float32)
    work = tmp_path / "work"
    tuned = ts.tune(tiny_module, example_inputs=example, precision="int8", calibration=calibration,
                    trials=INT8_TRIALS, work_dir=work, progress=False)
    directory = api.records_dir(import_model(tiny_module, example_inputs=example), tuned.spec, work, "fused", "int8")
    assert tuned.tuning.outcome.directory == directory and database.own_trials(directory) == INT8_TRIALS
    int8_tasks = {name: mod for name, mod in tuned.tuning.outcome.workloads.items() if int8.CONV in name}
    assert int8_tasks  # the tasks are those of the int8 build
    # Each int8 task's first candidates: the default schedule and its distinct tile alternatives.
    assert all(1 <= len(default_candidates(mod, tuned.spec.tvm_target())) <= 1 + len(int8.TILE_ALTERNATIVES)
               for mod in int8_tasks.values())
    assert tuned.manifest["precision"]["name"] == "int8" and tuned.manifest["tuned"]
    assert tuned.manifest["precision"]["calibration"]["source"] == "array"
    ref = torch_reference(tiny_module, tiny_input)
    assert relative_error(tuned(tiny_input)[0], ref) < INT8.tolerance

    # A fresh process parses every record (their traces name our tensor intrinsics: registered on reading).
    script = ("import sys; from tvm_shuffle.tuning import database; "
              "db = database.open_database(database.Path(sys.argv[1])); print(len(db.get_all_tuning_records()))")
    fresh = subprocess.run([sys.executable, "-c", script, str(directory)], capture_output=True, text=True, check=True)
    assert int(fresh.stdout.split()[-1]) == INT8_TRIALS and "unreadable" not in fresh.stderr, fresh.stderr
    rebuilt = ts.compile(tiny_module, example_inputs=example, precision="int8", calibration=calibration,
                         work_dir=work, quiet=True)
    assert rebuilt.manifest["tuning_database_digest"] == database.digest(directory)
    np.testing.assert_array_equal(rebuilt(tiny_input)[0], tuned(tiny_input)[0])
    with pytest.raises(MissingRecords, match="no tuning database"):  # fp32 records are elsewhere
        ts.compile(tiny_module, example_inputs=example, work_dir=work, quiet=True)


# ---------------------------------------------------------------------------
# Builds


def test_a_vnni_target_computes_the_1x1_convolutions_with_vpdpbusd(tmp_path, tiny_module, tiny_input):
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("no objdump")
    calibration = np.random.default_rng(1).standard_normal((4, *tiny_input.shape[1:])).astype(np.float32)
    compiled = ts.compile(tiny_module, vnni_spec(), example_inputs=(torch.from_numpy(tiny_input),), quiet=True,
                          precision="int8", calibration=calibration)
    manifest = compiled.manifest["precision"]
    assert manifest["name"] == "int8" and manifest["mode"] == "native"
    assert manifest["calibration"]["source"] == "array" and manifest["calibration"]["int8_convs"] > 0
    library = compiled.save(tmp_path / "b") / "model.so"
    code = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True).stdout
    assert re.search(r"\svpdpbusd\s", code), "no vpdpbusd in the library"


@pytest.mark.slow
@native_host
def test_the_search_tunes_a_kernel_whose_channels_are_no_whole_quads(tmp_path):
    """MetaSchedule's own candidates (past the seeds) on a conv of 6 input channels: the padded-weight stage's case."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(6, 16, 1), torch.nn.ReLU()).eval()
    x = np.random.default_rng(0).standard_normal((1, 6, 8, 8)).astype(np.float32)
    calibration = np.random.default_rng(1).standard_normal((4, 6, 8, 8)).astype(np.float32)
    tuned = ts.tune(module, example_inputs=(torch.from_numpy(x),), precision="int8", calibration=calibration,
                    trials=40, work_dir=tmp_path, progress=False)
    assert relative_error(tuned(x)[0], torch_reference(module, x)) < INT8.tolerance


class Classifier(torch.nn.Module):
    """A 1x1 conv, global pooling and a fully connected layer of 70 outputs from 30 features (neither a whole vector nor quads)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 30, 1)
        self.fc = torch.nn.Linear(30, 70)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("spec", [vnni_spec(), targets.get("x86-avx2")], ids=["vnni", "avx2"])
def test_the_classifier_is_an_int8_dense_kernel(spec, tiny_input):
    from tvm_shuffle.schedules import int8_dense

    torch.manual_seed(0)
    module = Classifier().eval()
    calibration = np.random.default_rng(1).standard_normal((8, *tiny_input.shape[1:])).astype(np.float32)
    compiled = ts.compile(module, spec, example_inputs=(torch.from_numpy(tiny_input),), quiet=True,
                          precision="int8", calibration=calibration)
    assert compiled.manifest["precision"]["calibration"]["int8_dense"] == 1
    kernels = [gv.name_hint for gv in build_lowered(compiled).functions]
    assert any(name.startswith(f"fused_{int8_dense.DENSE}") for name in kernels), kernels
    assert not any("matmul" in name for name in kernels), kernels
    if cpu_has("avx512_vnni") or spec.name == "x86-avx2":
        out = compiled(tiny_input)[0]
        assert out.shape == (1, 70)
        assert relative_error(out, torch_reference(module, tiny_input)) < INT8.tolerance


def build_lowered(compiled):
    from tvm_shuffle import build

    return build.lower(compiled._built.mod, compiled.spec)


def test_a_target_without_vnni_says_so_and_computes_integers(capsys, tiny_module, tiny_input):
    with pytest.warns(UserWarning, match="synthetic"):
        compiled = ts.compile(tiny_module, "x86-avx2", example_inputs=(torch.from_numpy(tiny_input),), quiet=True,
                              precision="int8")
    assert compiled.manifest["precision"]["mode"] == "integer"
    assert "has no int8 instructions" in capsys.readouterr().err
    if cpu_has("avx2"):  # Haswell code runs on any AVX2 host
        assert relative_error(compiled(tiny_input)[0], torch_reference(tiny_module, tiny_input)) < INT8.tolerance


@native_host
def test_the_tiny_model_in_int8_matches_pytorch(tiny_module, tiny_input):
    calibration = np.random.default_rng(1).standard_normal((8, *tiny_input.shape[1:])).astype(np.float32)
    compiled = ts.compile(tiny_module, example_inputs=(torch.from_numpy(tiny_input),), quiet=True, precision="int8",
                          calibration=calibration, calibrator="percentile")
    assert compiled.manifest["precision"]["calibration"]["calibrator"] == "percentile"
    assert relative_error(compiled(tiny_input)[0], torch_reference(tiny_module, tiny_input)) < INT8.tolerance
    fp32 = ts.compile(tiny_module, example_inputs=(torch.from_numpy(tiny_input),), quiet=True)
    # The 1x1 convolutions' weights shrink 4x (s8, plus a scale and an offset per output channel); the rest stays.
    assert compiled.weight_bytes < fp32.weight_bytes


@pytest.mark.slow
@native_host
def test_shufflenet_v2_int8_is_as_close_to_fp32_as_onnx_runtime_quantize_static(tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    import onnxruntime as ort

    from tvm_shuffle import models, peers

    torch.manual_seed(0)
    module = models.randomize_batchnorm(models.build_model("shufflenet_v2_x0_5")).eval()
    shape = (1, 3, 64, 64)
    rng = np.random.default_rng(1)
    calibration = rng.standard_normal((16, *shape[1:])).astype(np.float32)
    inputs = rng.standard_normal((4, *shape[1:])).astype(np.float32)
    compiled = ts.compile(module, input_shape=shape, quiet=True, precision="int8", calibration=calibration)
    onnx_file = tmp_path / "m.onnx"
    torch.onnx.export(module, (torch.zeros(shape),), str(onnx_file), dynamo=False, opset_version=13,
                      input_names=["x"], output_names=["y"])
    qdq = peers.ort_quantize_static(onnx_file, calibration, tmp_path / "m.qdq.onnx")
    session = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
    ours, theirs = [], []
    for x in inputs:
        x = x[None]
        ref = torch_reference(module, x)
        out = compiled(x)[0]
        ours.append(relative_error(out, ref))
        theirs.append(relative_error(session.run(None, {"x": x})[0], ref))
        assert out.argmax() == ref.argmax()
    assert max(ours) < INT8.tolerance
    assert np.mean(ours) <= 1.5 * np.mean(theirs), (ours, theirs)


@pytest.mark.parametrize("batch, plane, merged", [(1, 4, False), (1, 49, False), (8, 4, True), (8, 49, True),
                                                  (8, 1, True), (8, 64, False), (8, 196, False), (40, 784, False)])
def test_a_batch_of_small_planes_is_one_pixel_axis(batch, plane, merged):
    # 2x2, 1x1 and 7x7 planes padded one by one waste 75 %, 94 % and 23 % of the vectors; 14x14 wastes 6 %.
    assert int8.merges_batch(batch, plane) == merged


@pytest.mark.slow
@native_host
def test_shufflenet_v2_int8_at_batch_8_on_small_planes_matches_pytorch():
    """Batch 8 on 64x64: stage 4's 2x2 planes (gathered convolutions of the fused shuffles among them) are merged."""
    from tvm_shuffle import models

    torch.manual_seed(0)
    module = models.randomize_batchnorm(models.build_model("shufflenet_v2_x0_5")).eval()
    shape = (8, 3, 64, 64)
    rng = np.random.default_rng(1)
    calibration = rng.standard_normal((16, *shape[1:])).astype(np.float32)  # whole batches: 2 of 8
    x = rng.standard_normal(shape).astype(np.float32)
    compiled = ts.compile(module, input_shape=shape, quiet=True, precision="int8", calibration=calibration)
    out, ref = compiled(x)[0], torch_reference(module, x)
    errors = [relative_error(o, r) for o, r in zip(out, ref)]  # each image: a mix-up of images fails here
    assert max(errors) < INT8.tolerance, errors
    assert (out.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("images", [1, 3, 5])
def test_every_calibration_image_counts_at_any_batch(images):
    """A model of batch 4 calibrates on 1, 3 or 5 images as a batch-1 model does on the same images: a set shorter
    than the batch, or a last short chunk, is not skipped."""
    from tvm_shuffle import passes
    from tvm_shuffle.frontends import import_model

    from conftest import TinyShuffleUnit

    torch.manual_seed(0)
    module = TinyShuffleUnit().eval()
    data = np.random.default_rng(0).standard_normal((images, 3, 16, 16)).astype(np.float32) * 3
    quants = {}
    for batch in (1, 4):
        imported = import_model(module, example_inputs=(torch.zeros(batch, 3, 16, 16),))
        mod = passes.optimize(imported.mod)
        quants[batch] = quantize.calibrate(mod, quantize.Calibration(data, "minmax", "array"))
    assert quants[4] and quants[4] == quants[1]
