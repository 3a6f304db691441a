"""The static code check: objdump parsing, innermost loops, instruction classes, and a real aarch64 build.

The snippets are cut from ``objdump -d --no-show-raw-insn`` of libraries
tvm_shuffle built (ShuffleNetV2 1.0x for arm-rpi4 and znver4), with a few
lines changed so that each class occurs in a known number.
"""

from __future__ import annotations

import shutil

import pytest

from tvm_shuffle import static_check as sc
from tvm_shuffle.errors import UserError

# A kernel body: a copy loop (0x29474-0x294ec), a shared epilogue reached by a
# backward branch (0x29528: not a loop, it returns), and an outer loop
# (0x29554-0x295f0) around an FMA loop (0x295a0-0x295dc) with a spill, a
# reload and a scalar FMA in it.
AARCH64 = """
model.so:     file format elf64-littleaarch64


Disassembly of section .text:

0000000000029340 <fused_conv2d10_add6_relu5_prepacked_compute_>:
   29340:	sub	sp, sp, #0x70
   29344:	stp	x30, x23, [sp, #64]
   29470:	add	x10, x10, #0x60
   29474:	ldur	q0, [x10, #-96]
   29478:	stur	q0, [x9, #-204]
   2947c:	ldr	s0, [x10, #96]
   29480:	subs	w8, w8, #0x1
   29484:	stur	s0, [x9, #-12]
   294ec:	b.ne	29474 <fused_conv2d10_add6_relu5_prepacked_compute_+0x134>  // b.any
   294f0:	mov	w0, wzr
   29510:	ldp	x30, x23, [sp, #64]
   29514:	add	sp, sp, #0x70
   29518:	ret
   2951c:	mov	w0, #0xffffffff            	// #-1
   29528:	b	29510 <fused_conv2d10_add6_relu5_prepacked_compute_+0x1d0>
   29554:	smull	x18, w8, w13
   29598:	nop
   295a0:	ldr	q19, [x4], #208
   295a4:	ldp	s20, s21, [x3, #-16]
   295a8:	fmla	v16.4s, v19.4s, v20.s[0]
   295ac:	fmla	v7.4s, v19.4s, v21.s[0]
   295b0:	ld1r	{v22.4s}, [x3]
   295b4:	fmla	v18.4s, v19.4s, v22.4s
   295b8:	fmadd	s17, s19, s21, s17
   295bc:	str	q17, [sp, #32]
   295c0:	ldr	q17, [sp, #48]
   295c2:	ldr	x11, [sp, #56]
   295c4:	st1	{v16.4s}, [x5]
   295d4:	subs	x0, x0, #0x1
   295dc:	b.ne	295a0 <fused_conv2d10_add6_relu5_prepacked_compute_+0x260>  // b.any
   295e0:	lsl	w0, w18, #3
   295ec:	cmp	w8, w9
   295f0:	b.ne	29554 <fused_conv2d10_add6_relu5_prepacked_compute_+0x214>  // b.any
   295f4:	ret

00000000000295f8 <__tvm_ffi_fused_conv2d10_add6_relu5_prepacked>:
   295f8:	sub	sp, sp, #0x10
   295fc:	ret
"""

# The same shape in AT&T syntax: an FMA loop (0x31650-0x3170c) with a folded
# reload, a spill, a scalar FMA and a plain reload, inside an outer loop.
X86 = """
0000000000031500 <fused_conv2d5_add6_relu5_prepacked_compute_>:
   31500:	push   %rbp
   31602:	mov    (%rcx),%rsi
   31647:	nopw   0x0(%rax,%rax,1)
   31650:	vmovups -0x61c(%rax),%zmm1
   3165a:	vbroadcastss (%rdx),%zmm2
   31660:	vfmadd231ps %zmm1,%zmm2,%zmm3
   31666:	vfmadd231ps 0xd0(%rsp),%zmm2,%zmm4
   3166c:	vfmadd231ps (%rdx){1to16},%zmm1,%zmm5
   31672:	vfmadd231ss %xmm1,%xmm2,%xmm6
   31678:	vmovups %zmm3,0x40(%rsp)
   3167e:	mov    0x8(%rsp),%r9
   31684:	vmovups %zmm4,(%rcx)
   3168a:	vmovss %xmm6,(%rcx)
   31690:	lea    0x10(%rsp),%rdi
   31700:	add    $0x620,%rax
   3170c:	jne    31650 <fused_conv2d5_add6_relu5_prepacked_compute_+0x150>
   31712:	cmp    %r8d,%edx
   31718:	jl     31602 <fused_conv2d5_add6_relu5_prepacked_compute_+0x102>
   3171e:	ret
"""

KERNEL = "fused_conv2d10_add6_relu5"


def test_parse_objdump_splits_functions_and_reads_branch_targets():
    functions = sc.parse_objdump(AARCH64)
    assert set(functions) == {f"{KERNEL}_prepacked_compute_", f"__tvm_ffi_{KERNEL}_prepacked"}
    body = functions[f"{KERNEL}_prepacked_compute_"]
    branch = next(i for i in body if i.address == 0x295DC)
    assert (branch.mnemonic, branch.operands, branch.target) == ("b.ne", "295a0", 0x295A0)
    mov = next(i for i in body if i.address == 0x2951C)
    assert mov.operands == "w0, #0xffffffff"  # the "// #-1" comment is gone


def test_innermost_loops_skip_outer_loops_and_branches_to_a_shared_epilogue():
    body = sc.parse_objdump(AARCH64)[f"{KERNEL}_prepacked_compute_"]
    loops = sc.innermost_loops(body, sc.ISAS["aarch64"].is_branch)
    assert [(loop[0].address, loop[-1].address) for loop in loops] == [(0x29474, 0x294EC), (0x295A0, 0x295DC)]


def test_aarch64_instruction_classes():
    body = sc.parse_objdump(AARCH64)[f"{KERNEL}_prepacked_compute_"]
    copy, fma = (sc.count_loop(loop, sc.ISAS["aarch64"]) for loop in sc.innermost_loops(body, sc.ISAS["aarch64"].is_branch))
    assert fma == sc.LoopCounts(instructions=13, vector_fma=3, scalar_fma=1, vector_loads=2, vector_stores=1,
                                spills=1, reloads=2, vector_spills=2)
    assert fma.fma_share == pytest.approx(4 / 13)
    assert copy == sc.LoopCounts(instructions=6, vector_loads=1, vector_stores=1)


def test_x86_instruction_classes():
    body = sc.parse_objdump(X86)["fused_conv2d5_add6_relu5_prepacked_compute_"]
    (loop,) = sc.innermost_loops(body, sc.ISAS["x86_64"].is_branch)
    counts = sc.count_loop(loop, sc.ISAS["x86_64"])
    # loads: vmovups, vbroadcastss, the {1to16} broadcast; the 0xd0(%rsp) operand is a reload
    assert counts == sc.LoopCounts(instructions=13, vector_fma=3, scalar_fma=1, vector_loads=3, vector_stores=1,
                                   spills=1, reloads=2, vector_spills=2)


def test_a_kernel_is_its_compute_function_under_its_prepacked_name():
    functions = sc.parse_objdump(AARCH64)
    code = sc.kernel_functions(functions, KERNEL)
    assert code[0].address == 0x29340
    assert sc.kernel_functions(functions, "mean") is None
    analyzed = sc.analyze_kernel(code, sc.ISAS["aarch64"])
    assert analyzed.hot.vector_fma == 3 and analyzed.inner_spills == 3 and analyzed.inner_scalar_fma == 1
    assert analyzed.inner.vector_spills == 2


def test_pair_kernels_by_call_position():
    arm = ["conv1", "dw", "conv2", "dw", "mean"]
    x86 = ["conv1", "dw_wide", "conv2", "dw_wide", "mean"]
    assert sc.pair_kernels(arm, x86) == {"conv1": "conv1", "dw": "dw_wide", "conv2": "conv2", "mean": "mean"}
    assert sc.pair_kernels(["a", "a"], ["b", "c"]) == {}  # one kernel, two partners: no pair
    assert sc.pair_kernels(arm, x86[:-1]) == {}
    # x86's fused stem takes the place of the stem's convolution and max-pool, which pair with nothing
    stem = ["stem_conv", "max_pool2d"]
    assert sc.pair_kernels(stem + arm, ["stem_pool"] + x86) == sc.pair_kernels(arm, x86)


def test_markdown_flags_spills_and_scalar_fmas():
    rows = [{"kernel": "good", "flops": 2e6, "calls": 3, **sc._side(sc.KernelCode((sc.LoopCounts(10, 5),)), "arm"),
             "x86_found": False},
            {"kernel": "bad", "flops": None, "calls": 1,
             **sc._side(sc.KernelCode((bad := sc.LoopCounts(10, 2, 1, spills=1, reloads=1, vector_spills=1),), bad),
                        "arm")}]
    for row in rows:
        row["flags"] = sc.flags(row)
    text = sc.markdown(rows)
    assert "static analysis" in text and "1 of 2 kernels flagged" in text
    assert "| `good` | 3 | 2.00 | 5 / not found |" in text
    assert ("1 vector-register spills/reloads in inner loops; 1 general-register spills/reloads in inner loops; "
            "1 scalar FMAs in inner loops") in text
    assert sc.flagged(rows) == ["bad"]


def test_a_missing_objdump_names_its_package(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="apt-get install binutils-aarch64-linux-gnu"):
        sc.disassemble(tmp_path / "model.so", "aarch64")


ARM_TOOLS = shutil.which(sc.ISAS["aarch64"].objdump) and shutil.which("aarch64-linux-gnu-g++")


@pytest.mark.arm
@pytest.mark.skipif(not ARM_TOOLS, reason="needs binutils-aarch64-linux-gnu and g++-aarch64-linux-gnu")
@pytest.mark.parametrize("target", ["arm-rpi4", "arm-graviton3"])
def test_static_check_of_a_real_aarch64_build(tiny_module, tmp_path, target):
    """The tiny model built for a board and for x86: every kernel is found in both, and its convs use vector FMAs."""
    from tvm_shuffle import frontends, targets
    from conftest import TINY_SHAPE

    imported = frontends.from_torch_module(tiny_module, TINY_SHAPE, name="tiny")
    result = sc.analyze(imported, targets.get(target), tmp_path, x86_spec=targets.get("x86-avx2"), log=lambda _: None)
    rows = {r["kernel"]: r for r in result["rows"]}
    assert rows and all(r["arm_found"] and r["x86_found"] for r in rows.values())
    convs = [r for name, r in rows.items() if "conv2d" in name]
    assert convs and all(r["arm_vector_fma"] > 0 and r["x86_vector_fma"] > 0 for r in convs)
    assert all(r["flops"] > 0 for r in convs)
    assert result["flagged"] == [r["kernel"] for r in result["rows"] if r["flags"]]
    assert "static analysis" in sc.markdown(result["rows"])


QEMU = shutil.which("qemu-aarch64")


@pytest.mark.arm
@pytest.mark.slow
@pytest.mark.skipif(not (ARM_TOOLS and QEMU and shutil.which("cmake")), reason="needs the aarch64 toolchain, "
                    "qemu-user and cmake")
@pytest.mark.parametrize("model", ["shufflenet_v2_x1_0", "shufflenet_v1_g3_x1_0"])
def test_the_neon_schedules_compute_what_pytorch_computes(model, tmp_path):
    """The depthwise row pieces the static check led to (7, 14 and 28 columns at 224x224), run under qemu."""
    import numpy as np
    import torch

    import tvm_shuffle as ts
    from tvm_shuffle import models, targets
    from test_bundle import build_app, run_clean

    arm = targets.get("arm-rpi4")
    bundle = ts.compile(model, arm, quiet=True).save(tmp_path / "arm")
    app = build_app(bundle, tmp_path / "build")
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype("float32")
    x.tofile(tmp_path / "x.bin")
    done = run_clean(QEMU, *arm.emulator[1:], app, bundle, tmp_path / "x.bin", "--repeat", 1,
                     "--dump", tmp_path / "y.bin", timeout=600)
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        expected = models.build_model(model)(torch.from_numpy(x)).numpy().ravel()
    np.testing.assert_allclose(np.fromfile(tmp_path / "y.bin", "float32"), expected, atol=1e-3, rtol=1e-3)


@pytest.mark.arm
@pytest.mark.slow
@pytest.mark.skipif(not ARM_TOOLS, reason="needs binutils-aarch64-linux-gnu and g++-aarch64-linux-gnu")
@pytest.mark.parametrize("model, target", [("shufflenet_v2_x1_0", "arm-rpi4"), ("shufflenet_v2_x1_0", "arm-graviton2"),
                                           ("shufflenet_v1_g3_x1_0", "arm-rpi4")])
def test_no_shufflenet_kernel_spills_or_runs_a_scalar_fma_in_an_inner_loop(model, target, tmp_path):
    """Issue 18's ARM goal, kept: no kernel of either model flagged (the last three were gathers' padding copies)."""
    from tvm_shuffle import frontends, targets

    imported = frontends.import_model(model)
    result = sc.analyze(imported, targets.get(target), tmp_path, log=lambda _: None)
    assert result["rows"] and result["flagged"] == [], sc.markdown(result["rows"])
