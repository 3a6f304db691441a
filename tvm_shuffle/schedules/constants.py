"""Target-specific constants of the schedules, apart from the schedules themselves (as in dlight).

The tile sizes follow the register file of the ISA. A 1x1 convolution keeps
``output channels x pixel vectors`` partial sums in registers: a quarter of
the register file (AVX-512 and NEON have 32 vector registers, AVX2 16),
which leaves room for inputs, weights and the unrolled loop's temporaries
(more accumulators spill); twice that when a tile is less than one vector
wide (a 7-pixel row), so that part-filled registers still do enough work.

A plane padded to whole vectors has no partial vector and no gather left in
its loop, so its tile may span several vectors (``padded_tiles``). Which of
those tiles wins depends on the core, not only on its ISA (on the 7x7
planes of ShuffleNetV2, 7 channels x 4 vectors is fastest on some x86 cores
and twice as slow as 8 x 2 on others), and a tile whose channel count does
not divide the convolution's (232, 464, 1024) leaves a costly partial tile.
So the first tile is the default and the others are tuning candidates:
MetaSchedule measures them beside it on the machine at hand
(``tile_alternatives`` in :mod:`.cpu`).

The stem's 3x3 convolution (3 input channels) also loads only whole vectors,
so its tile may hold more accumulators (``wide_tile``): all 24 output
channels x 1 vector, so each input vector feeds 24 FMAs. Depthwise rows of 7,
14 and 28 floats are no whole number of registers: LLVM builds each such
vector from three loads and two inserts and leaves its spare lanes
undefined, so on AVX-512 the rows are computed rounded up to
``row_multiple`` columns (8: one 256-bit register). A stride-2 row is
rounded up only from ``strided_row_from`` columns (28 to 32, not 14 or 7):
its padding stage stores even and odd columns apart with a test per
element, and the extra columns make that scalar copy dearer than the
partial vectors they save (at 14 columns LLVM even turns it into gathers
and scatters).

On NEON a depthwise row is 7 vectors of 4 lanes (28 columns), and LLVM
unrolls a channel's whole row loop when the plane is small: 7 to 14
accumulators, 9 weights and the loads in flight then exceed the 32 vector
registers and spill. So rows are rounded up to 8 columns too (7, 14 and 28
to 8, 16 and 32: 2, 4 and 8 vectors) and computed in pieces of at most
``depthwise_vectors`` vectors (4 accumulators and 9 weights), each piece an
iteration of the parallel loop, whose runtime bounds LLVM cannot unroll
(:func:`.cpu._row_pieces`; ``tvm_shuffle.static_check`` reads the spills in
the built code).

On NEON a padding stage that gathers several tensors (a stride-2 depthwise
conv's, whose copy keeps its bounds test, or a gathered 1x1 conv's on a
7x7 plane) is copied one loop per source tensor (``pad_per_source``): in one
loop, all the sources' pointers stay live across each row's copy and LLVM
reloads some from the stack (up to 9 sources in ShuffleNetV2 1.0x). The x86
builds had no such reloads there, and keep one loop.

The measurements behind these choices, with their machines, are in
``benchmarks/results/schedule_choices.md``.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CPUConstants:
    """Tile sizes of the CPU convolution schedule for one vector ISA."""

    isa: str
    vector_bits: int
    accumulators: int  # full vector registers kept for partial sums (output channels x pixel vectors)
    vectors_per_tile: int  # at most this many vectors of output pixels per tile
    # (pixel vectors, output channels) per tile of a plane padded to whole vectors: the default
    # first, then the alternatives tuning measures. Empty: one vector of ``accumulators`` channels.
    padded_tiles: tuple[tuple[int, int], ...] = ()
    wide_tile: int = 0  # accumulators of a tile whose loop only loads whole vectors (the stem)
    dense_vectors: int = 12  # vectors of columns a classifier row piece keeps in registers
    row_multiple: int = 1  # depthwise output rows are computed rounded up to this many columns
    strided_row_from: int = 0  # a strided depthwise row is computed rounded up only from this many columns on
    depthwise_vectors: int = 0  # >0: depthwise rows in parallel pieces of at most this many vectors
    unroll_limit: int = 64  # auto_unroll_max_step for the reduction loops
    pad_per_source: bool = False  # a padding that gathers several tensors: one loop per source (cpu._planes_per_source)

    def lanes(self, dtype_bits: int = 32) -> int:
        return self.vector_bits // dtype_bits


# Keyed by the first feature the target has, in order of preference.
CPU_ISAS = (
    ("avx512f", CPUConstants("avx512", 512, accumulators=8, vectors_per_tile=2,
                               padded_tiles=((2, 8), (4, 7), (1, 8)), wide_tile=28, dense_vectors=28,
                               row_multiple=8, strided_row_from=16)),
    ("avx2", CPUConstants("avx2", 256, accumulators=4, vectors_per_tile=2)),
    ("neon", CPUConstants("neon", 128, accumulators=8, vectors_per_tile=2, dense_vectors=28, row_multiple=8,
                            depthwise_vectors=4, pad_per_source=True)),
)
GENERIC_CPU = CPUConstants("sse", 128, accumulators=4, vectors_per_tile=2)


def cpu_constants(target) -> CPUConstants:
    """The constants for an LLVM ``tvm.target.Target`` (by its CPU features)."""
    from tvm_shuffle.tvm_compat import target_has_feature

    return next((constants for feature, constants in CPU_ISAS if target_has_feature(target, feature)), GENERIC_CPU)


@dataclasses.dataclass(frozen=True)
class GPUConstants:
    """Launch shape of the direct GPU convolution schedule."""

    threads_per_block: int
    channels_per_thread: int  # at most, for 1x1 convolutions: each input load feeds that many sums
    min_blocks: int  # fewer channels per thread rather than fewer blocks than this
    unroll_limit: int = 64


# 4 warps a block; 132 blocks fill an H100 or H200 (132 SMs) once, and the
# smaller GPUs (40-108 SMs) more than once.
GPU = GPUConstants(threads_per_block=128, channels_per_thread=4, min_blocks=132)
