"""Channel-shuffle detection, fusion and the schedules of the fused kernels.

Laid out like TVM's dlight rules:

* :mod:`.detect` finds channel shuffles (an analysis; it rewrites nothing);
* :mod:`.fuse` removes them, and the splits and concats around them, from
  the graph (:func:`fuse_shuffles`, called by ``passes.optimize``);
* :mod:`.kernels` defines the convolutions that read through a gather;
* :mod:`.analysis` tells what kind of kernel a function is (which
  convolution, its producers and epilogue), for the rules of both;
* :mod:`.cpu` holds the default schedules of the convolutions (stock and
  gathered) for x86 and ARM, with per-ISA tile sizes in :mod:`.constants`;
* :mod:`.bf16` computes and schedules the bf16 1x1 convolutions of
  ``--precision bf16`` (AVX512_BF16 dot products on x86), :mod:`.bf16_arm`
  on aarch64 with ``bfdot``;
* :mod:`.int8` computes and schedules the int8 1x1 convolutions of
  ``--quantize int8`` (AVX-512 VNNI dot products on x86; :mod:`.int8_arm`
  ``sdot``/``usdot`` on aarch64);
* :mod:`.gpu` schedules depthwise and 1x1 convolutions for CUDA (each
  thread a pixel of one or a few channels) and gives every other kernel
  ``tvm.s_tir.dlight``'s GPU rules; :mod:`.int8_gpu` the int8 kernels
  with ``dp4a``; :mod:`.tensorcore` the fp16 and bf16 1x1 convolutions
  with tensor-core ``wmma``.
"""

from __future__ import annotations

from tvm_shuffle.schedules.detect import ChannelMap, ShuffleMatch, analyze, find_shuffles
from tvm_shuffle.schedules.fuse import FusionReport, fuse_shuffles, report_stock

__all__ = ["ChannelMap", "ShuffleMatch", "analyze", "find_shuffles", "FusionReport", "fuse_shuffles", "report_stock",
           "default_schedule_passes", "default_schedule", "default_candidates", "register_intrinsics"]

CPU_FAMILIES = ("x86", "arm")


def default_schedule_passes(spec) -> list:
    """Passes that schedule, for ``spec``'s target family, every kernel no earlier pass scheduled.

    Run them after ``MetaScheduleApplyDatabase`` (tuned kernels are marked
    scheduled and skipped) and under the target. On CPUs a kernel no rule
    takes stays unscheduled (LLVM still compiles it); on GPUs every kernel
    gets a thread binding.
    """
    from tvm_shuffle.schedules import gpu
    from tvm_shuffle.tvm_compat import dlight

    rules = cpu_rules() if spec.family in CPU_FAMILIES else gpu.default_rules()
    return [dlight.ApplyDefaultSchedule(*rules)]


def register_intrinsics(records: str | bytes = b"") -> None:
    """Register every tensor intrinsic our schedules tensorize with (each module's once).

    A tuning record's trace names its intrinsics: reading records in a
    process that has not scheduled such a kernel yet needs them registered,
    or the records do not parse (and would be taken for damaged lines).
    The aarch64 int8 intrinsics are made per block shape: those named in
    ``records`` (:func:`.int8_arm.register_named`).
    """
    from tvm_shuffle.schedules import bf16, bf16_arm, int8, int8_arm, int8_dense, int8_gpu, tensorcore

    for module in (bf16, bf16_arm, int8, int8_dense, int8_gpu, tensorcore):
        module.register_intrinsics()
    int8_arm.register_named(records)


def cpu_rules() -> tuple:
    """The CPU rules: the bf16 and int8 kernels' own (:mod:`.bf16_arm`, :mod:`.bf16`, :mod:`.int8`, :mod:`.int8_dense`), the fused stem's (:mod:`.stem`), then :func:`.cpu.default_rules`.

    :mod:`.bf16_arm`'s rule takes the bf16 kernels of aarch64 targets with
    ``+bf16`` and leaves every other target's to :mod:`.bf16`'s (x86's
    ``vdpbf16ps``, or storage only).
    """
    from tvm_shuffle.schedules import bf16, bf16_arm, cpu, int8, int8_dense, stem

    return (bf16_arm.PointwiseBF16Neon(), bf16.PointwiseBF16(), int8.PointwiseInt8(), int8_dense.DenseInt8(),
            stem.StemPool(), *cpu.default_rules())


def default_schedule(func, target):
    """The default schedule of one PrimFunc by our own rules (a ``Schedule``), or None when none applies."""
    from tvm_shuffle.schedules import gpu

    for rule in cpu_rules() + gpu.custom_rules():
        sch = rule.apply(func, target, False)
        if sch is not None:
            return sch
    return None


def default_candidates(task_mod, target) -> list:
    """The default schedule of a tuning task, then its tile alternatives, as MetaSchedule measure candidates.

    A search strategy that measures these first puts them in the database,
    where the evolutionary search picks its initial population from, so
    tuning starts from the default schedules and the build keeps them
    wherever tuning finds nothing faster. The alternatives
    (``cpu.tile_alternatives``, ``int8.tile_alternatives``) are tiles that
    win on other cores of the same ISA or on other planes. Empty when no
    rule of ours applies.
    """
    import tvm_ffi

    from tvm_shuffle.schedules import cpu, int8
    from tvm_shuffle.tvm_compat import ms

    func = task_mod["main"]
    sch = default_schedule(func, target)
    if sch is None:
        return []
    candidates, seen = [], set()
    for sch in [sch, *cpu.tile_alternatives(func, target), *int8.tile_alternatives(func, target)]:
        key = tvm_ffi.structural_hash(sch.mod)
        if key not in seen:
            seen.add(key)
            # The arguments as MetaSchedule's builder compiles the kernel: a 1x1
            # schedule's weight-packing block removed, the kernel takes packed weights.
            candidates.append(ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_entry_func(sch.mod,
                                                                                            remove_preproc=True)))
    return candidates
