"""``precision="bf16"``: 1x1 convolutions with bf16 weights and inputs and fp32 sums; inputs and outputs stay fp32.

Tolerance: the relative logit error ``|out - ref| / |ref|`` against fp32
PyTorch stays below the registry's ``tolerance`` for bf16 (2e-2: bf16 keeps 8
significant bits, a relative rounding error of at most 2^-9 per input and
weight), and the zoo model's top-1 class is PyTorch's. The native kernel's
inner loop is ``vdpbf16ps`` (checked in the exported library's
disassembly); a target without AVX512_BF16 builds the same model storage
only and says so. ``tune(precision="bf16")`` tunes the bf16 kernels, with
records of their own that ``compile(work_dir=..., precision="bf16")`` builds from.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import tvm_shuffle as ts
from conftest import runs_natively
from tvm_shuffle import api, precisions, targets
from tvm_shuffle.errors import MissingRecords, UserError

BF16 = precisions.get("bf16")


native_host = runs_natively("avx512_bf16")


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def torch_reference(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def bf16_spec() -> targets.TargetSpec:
    """An x86 target with AVX512_BF16 whatever this host is (Zen 4), for code that is only inspected."""
    return dataclasses.replace(targets.get("x86-avx512"), name="x86-znver4",
                               target={**targets.get("x86-avx512").target, "mcpu": "znver4"})


def test_every_precision_is_described_and_fp32_is_the_default():
    assert precisions.DEFAULT == "fp32" and set(precisions.PRECISIONS) >= {"fp32", "bf16"}
    for precision in precisions.PRECISIONS.values():
        assert precision.description and precision.tolerance > 0


def test_native_only_where_the_target_has_the_instructions():
    assert BF16.mode(bf16_spec()) == "native"
    assert BF16.mode(targets.get("x86-avx2")) == "storage-only"
    assert BF16.mode(targets.get("x86-avx512")) == "storage-only"  # Skylake-SP: AVX-512 without BF16
    assert precisions.get("fp32").mode(targets.get("x86-avx2")) == "native"


def test_a_bad_precision_is_one_user_error(tiny_module, tiny_input):
    with pytest.raises(UserError, match="unknown precision 'fp8'.*bf16, fp16, fp32"):
        ts.compile(tiny_module, example_inputs=(torch.from_numpy(tiny_input),), precision="fp8", quiet=True)


def test_the_cli_rejects_a_bad_precision(capsys):
    import tvm_shuffle.compile

    with pytest.raises(SystemExit) as exit_:
        tvm_shuffle.compile.main(["--model", "shufflenet_v2_x0_5", "--precision", "fp8", "--out", "/tmp/x"])
    assert exit_.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err


BF16_TRIALS = 8


@native_host
def test_tuning_in_bf16_tunes_the_bf16_kernels_and_compile_builds_from_their_records(tiny_module, tiny_input,
                                                                                      tmp_path):
    from tvm_shuffle.frontends import import_model
    from tvm_shuffle.tuning import database

    example = (torch.from_numpy(tiny_input),)
    work = tmp_path / "work"
    tuned = ts.tune(tiny_module, example_inputs=example, precision="bf16", trials=BF16_TRIALS, work_dir=work,
                    progress=False)
    directory = api.records_dir(import_model(tiny_module, example_inputs=example), tuned.spec, work, "fused", "bf16")
    assert tuned.tuning.outcome.directory == directory and database.own_trials(directory) == BF16_TRIALS
    assert any("conv2d_bf16" in name for name in tuned.tuning.outcome.workloads)  # tasks of the bf16 build
    assert all(task.best_seconds is not None for task in tuned.tuning.outcome.tasks)  # every task measured
    assert tuned.manifest["precision"]["name"] == "bf16" and tuned.manifest["tuned"]
    ref = torch_reference(tiny_module, tiny_input)
    assert relative_error(tuned(tiny_input)[0], ref) < BF16.tolerance

    rebuilt = ts.compile(tiny_module, example_inputs=example, precision="bf16", work_dir=work, quiet=True)
    assert rebuilt.records["database"] == str(directory)
    assert rebuilt.manifest["precision"]["name"] == "bf16"
    assert rebuilt.manifest["tuning_database_digest"] == database.digest(directory)
    assert relative_error(rebuilt(tiny_input)[0], ref) < BF16.tolerance
    with pytest.raises(MissingRecords, match="no tuning database"):  # fp32 records are elsewhere
        ts.compile(tiny_module, example_inputs=example, work_dir=work, quiet=True)


def test_records_are_kept_apart_by_precision(tiny_module, tiny_input, tmp_path):
    from tvm_shuffle.frontends import import_model

    imported = import_model(tiny_module, example_inputs=(torch.from_numpy(tiny_input),))
    spec = targets.get("x86")
    assert (api.records_dir(imported, spec, tmp_path, "fused", "bf16")
            != api.records_dir(imported, spec, tmp_path, "fused", "fp32")
            == api.records_dir(imported, spec, tmp_path, "fused"))


def test_bf16_tiny_model_within_tolerance_and_the_manifest_says_bf16(tiny_module, tiny_input, tmp_path):
    compiled = ts.compile(tiny_module, example_inputs=(torch.from_numpy(tiny_input),), precision="bf16", quiet=True)
    (y,) = compiled(tiny_input)
    assert y.dtype == np.float32
    assert relative_error(y, torch_reference(tiny_module, tiny_input)) < BF16.tolerance
    assert compiled.manifest["precision"] == {"name": "bf16", "mode": BF16.mode(compiled.spec)}
    names = [gv.name_hint for gv in compiled._built.mod.functions]
    assert any("conv2d_bf16" in name for name in names), names
    out = compiled.save(tmp_path / "bundle")
    assert '"precision"' in (out / "manifest.json").read_text()
    np.testing.assert_array_equal(ts.load(out)(tiny_input)[0], y)


def test_storage_only_on_a_cpu_without_bf16_says_so_and_matches(tiny_module, tiny_input, capfd):
    compiled = ts.compile(tiny_module, "x86-avx2", example_inputs=(torch.from_numpy(tiny_input),), precision="bf16",
                          quiet=True)
    assert "x86-avx2 has no bf16 instructions" in capfd.readouterr().err
    assert compiled.manifest["precision"] == {"name": "bf16", "mode": "storage-only"}
    (y,) = compiled(tiny_input)
    assert relative_error(y, torch_reference(tiny_module, tiny_input)) < BF16.tolerance


def _innermost_loops(disassembly: str, function: str) -> list[list[str]]:
    """The instructions of each backward branch's loop body in ``function`` (objdump -d text)."""
    body = disassembly.split(f"<{function}>:", 1)[1].split("\n\n", 1)[0]
    rows = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"^\s*([0-9a-f]+):\s+(.*)$", body, re.M)]
    loops = []
    for address, text in rows:
        jump = re.match(r"j\w+\s+([0-9a-f]+)", text)
        if jump and int(jump.group(1), 16) < address:
            loops.append([t for a, t in rows if int(jump.group(1), 16) <= a <= address])
    return loops


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_the_inner_loop_of_a_bf16_convolution_is_vdpbf16ps(tiny_module, tiny_input, tmp_path):
    compiled = ts.compile(tiny_module, bf16_spec(), example_inputs=(torch.from_numpy(tiny_input),), precision="bf16",
                          quiet=True)
    library = compiled.save(tmp_path / "bundle") / "model.so"
    disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True,
                                 text=True, check=True).stdout
    functions = [name for name in re.findall(r"^[0-9a-f]+ <([^>]+)>:", disassembly, re.M)
                 if "conv2d_bf16" in name and "compute_" in name]
    assert functions
    for function in functions:
        loops = _innermost_loops(disassembly, function)
        innermost = min((loop for loop in loops if any("vdpbf16ps" in t for t in loop)), key=len, default=None)
        assert innermost is not None, f"no loop of {function} computes with vdpbf16ps"
        assert not any(re.match(r"v?fmadd|vfmadd", t) for t in innermost)


@pytest.mark.slow
@pytest.mark.parametrize("target", [pytest.param("x86", marks=native_host), "x86-avx2"])
def test_zoo_model_bf16_against_fp32_pytorch(target):
    from tvm_shuffle.models import build_model, randomize_batchnorm

    torch.manual_seed(0)
    module = randomize_batchnorm(build_model("shufflenet_v2_x0_5")).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype("float32")
    compiled = ts.compile(module, target, example_inputs=(torch.from_numpy(x),), precision="bf16", quiet=True)
    (y,) = compiled(x)
    ref = torch_reference(module, x)
    assert relative_error(y, ref) < BF16.tolerance
    assert y.argmax(1).tolist() == ref.argmax(1).tolist()
