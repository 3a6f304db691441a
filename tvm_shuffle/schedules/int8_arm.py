"""int8 kernels on aarch64 with the dot-product instructions: ``sdot`` (``+dotprod``), ``usdot`` (``+i8mm``).

The int8 kernels (:mod:`.int8`'s 1x1 convolutions, :mod:`.int8_dense`'s
classifier) multiply u8 activations by s8 weights. NEON's dot products sum
four byte products into each 32-bit lane, four lanes per instruction:

* ``usdot`` (``+i8mm``: Neoverse V1 / Graviton3) is u8 x s8, the kernels'
  own arithmetic;
* ``sdot`` (``+dotprod``: Cortex-A76, Neoverse N1 / Graviton2) is s8 x s8.
  The activations are flipped to s8 with ``x ^ 0x80`` (= ``x - 128``) and
  ``128 * sum_k W[o, k]`` is added back per output:
  ``sum_k x_k W_k = sum_k (x_k - 128) W_k + 128 sum_k W_k``. Integer sums
  wrap the same way in any order, so the result is exactly the u8 x s8 sum
  the other targets compute (the tests compare logits bit for bit).

The kernels' compute is the same on every target; what is ARM's is a tensor
intrinsic that replaces the whole reduction of a block of outputs. Its
description is the compute's own ``unpack(word, j) * W`` sum with its
initial zero (so tensorize checks it against the kernel), and its
implementation a loop nest of ``llvm.aarch64.neon.sdot`` / ``usdot`` calls
generated for the block's sizes:

* 1x1 convolution (:func:`pointwise_intrin`): ``R`` output channels x ``P``
  pixels x ``K/4`` input quads per call (a tile of pixels, or of a plane that
  is no whole number of 16-pixel vectors a group of channels per thread).
  Register tiles of up to :data:`TILE_SUMS` sums (:func:`register_tile`:
  ``4 channels x 4 vectors`` of 4 pixels for 58 channels, ``8 x 2`` for 232)
  in one loop; the weights of four channels are one register whose lanes
  the indexed ``sdot v.4s, v.16b, v.4b[i]`` picks, so a step of the inner
  loop loads ``vectors + channels / 4`` registers for ``channels x vectors``
  dot products. The tiles at the block's edges overlap the tiles before them
  (up to 10 % more dot products for 58 or 29 channels) rather than being
  separate loops.
* classifier (:func:`dense_intrin`): ``R`` outputs x ``K/4`` quads per call,
  weights packed ``[O / 4, K / 4, 4, 4]`` (four outputs x four features per
  register), :data:`DENSE_ACCUMULATORS` vectors of sums, four input quads
  per register each picked by the indexed form (``usdot``'s is ``sudot``).

The description's initial zero stays in the kernel: the block's sums are
zeroed before the call (one store per four sums, ``4 / K`` of the dot
products), and the call writes them. The input stages (the gather of a
fused channel shuffle, one loop per source tensor; the quantization, four
pixels per step) run first in their own parallel loops, the weights are
packed ``[K / 4, O, 4]`` at build time.

The cost of ``sdot``'s flip and correction, against ``usdot`` (none):

* 1x1 convolution: the block's input is flipped into a scratch copy once
  (one ``eor`` per 16 bytes, ``1 / R`` of the dot products) and the
  correction of its ``R`` channels is summed once (an ``sdot`` of four
  channels' weights against ``-128`` bytes per quad: ``1 / P`` of the dot
  products); it is the accumulators' initial value.
* classifier: a second ``sdot`` per weight register (the weights against
  ``-128`` bytes, subtracted at the end): twice the dot products of a layer
  whose every weight is read once, from memory, at batch 1.

Putting the correction into the graph's zero-point offset instead would
cost nothing at run time, but the graph pass (:mod:`tvm_shuffle.quantize`)
does not know the target and the compute is shared by every target; an
``sdot`` per step plus an add of the correction would double the inner loop.

A reduction of a few quads (K <= 32) is unrolled whole by LLVM, which then
loads every operand ahead and may spill a few registers; ShuffleNet's
shortest is 24 channels and spills none (the static check, ``report
--target arm-rpi5 --quantize int8``).

Targets without ``+dotprod`` (Cortex-A72) keep :mod:`.int8`'s plain NEON
schedule, 32-bit multiply-adds on widened values (its classifier with
:data:`PLAIN_DENSE_ACCUMULATORS` vectors of sums).
"""

from __future__ import annotations

import dataclasses
import functools
import re

from tvm_shuffle.schedules.analysis import iter_extents
from tvm_shuffle.schedules.bf16 import LAYOUT_REWRITE_PREPROC, MIN_PARALLEL_WORK, thread_slices, vectorize_divisor
from tvm_shuffle.schedules.quads import QUAD, computes_batch_as_one_axis, crop_whole_batch, pack_weights_by_quad, unpack
from tvm_shuffle.schedules.quads import batch_plane, vectorize_input_stages
from tvm_shuffle.tvm_compat import Schedule, target_has_feature, tir

DOTPROD_FEATURE = "dotprod"  # sdot / udot (Armv8.2-A DotProd)
I8MM_FEATURE = "i8mm"  # usdot (Armv8.6-A Int8 matrix multiply)
SDOT = "llvm.aarch64.neon.sdot.v4i32.v16i8"
USDOT = "llvm.aarch64.neon.usdot.v4i32.v16i8"
VECTOR = 4  # 32-bit lanes per NEON register
FLIP = 0x80808080  # x ^ FLIP turns four u8 bytes into s8 bytes x - 128

# Registers of a 1x1 kernel's register tile: sums, and sums plus its inputs and weights. Six of NEON's 32
# stay free for the values the loops around it keep (the quantization's constants), which a larger tile spills.
TILE_SUMS = 20
TILE_REGISTERS = 26
# Registers of corrections summed at once (four channels each).
CORRECTION_REGISTERS = 16
# Bytes of input per pixel tile (with sdot the call's flipped copy): it stays in a 64 KB L1 beside the weights.
TILE_INPUT_BYTES = 16 * 1024
# Output channels per parallel task at least, when a small plane is split among the threads by channels.
MIN_GROUP_CHANNELS = 8
# Vectors of 4 sums of the classifier in flight (and as many corrections with sdot).
DENSE_ACCUMULATORS = 8
# The classifier without dot products (:mod:`.int8_dense`'s plain 32-bit multiply-adds, 16 outputs per vector):
# vectors of 16 sums in flight on NEON, 4 registers each (x86's 8 would take all 32 registers and spill).
PLAIN_DENSE_ACCUMULATORS = 2


def has_dotprod(target) -> bool:
    """Whether the LLVM target has the Armv8.2 dot products (``sdot``/``udot``)."""
    return target_has_feature(target, DOTPROD_FEATURE)


def has_i8mm(target) -> bool:
    """Whether the LLVM target has the Armv8.6 int8 matrix multiply (``usdot``, u8 x s8)."""
    return target_has_feature(target, I8MM_FEATURE)


def is_aarch64(target) -> bool:
    """Whether ``target`` is an LLVM aarch64 target (its vectors are NEON's 128 bits)."""
    return target.kind.name == "llvm" and "aarch64" in str(target.attrs.get("mtriple", ""))


def instruction(target) -> str:
    """``usdot`` where the target has it, else ``sdot`` (with the flip and correction)."""
    return "usdot" if has_i8mm(target) else "sdot"


# ---------------------------------------------------------------------------
# Code generation helpers (TIR expressions of the intrinsics' implementations)


def _i64(value) -> tir.PrimExpr:
    return tir.IntImm("int64", value) if isinstance(value, int) else value


def _ramp(base, lanes: int = VECTOR):
    return tir.Ramp(_i64(base), _i64(1), lanes)


def _bytes(vector) -> tir.PrimExpr:
    return tir.call_intrin("int8x16", "tirx.reinterpret", vector)


def _dot(kind: str, acc, a, b) -> tir.PrimExpr:
    """``acc + dot(a, b)`` per 32-bit lane: ``sdot`` (s8 x s8) or ``usdot`` (``a`` u8 x ``b`` s8)."""
    return tir.call_llvm_pure_intrin("int32x4", SDOT if kind == "sdot" else USDOT, acc, a, b)


def _lane(vector, lane: int):
    """All four 32-bit lanes set to lane ``lane`` of ``vector`` (the indexed form of the dot products)."""
    return tir.Shuffle([vector], [tir.IntImm("int32", lane)] * VECTOR)


def _splat(value, lanes: int = VECTOR):
    return tir.Broadcast(value, lanes) if lanes > 1 else value


def _flip_bytes():
    return _bytes(_splat(tir.const(FLIP, "uint32")))


def _int32_view(T, buffer, shape, strides):
    """``buffer`` (int8, innermost dimension 4 contiguous bytes) as int32 words: one word per quad."""
    return T.decl_buffer(shape, "int32", data=buffer.data, strides=strides,
                         elem_offset=tir.floordiv(buffer.elem_offset, QUAD))


def _flat_int32(T, buffer):
    """An int8 buffer of whole quads as a flat run of int32 words (its region is contiguous)."""
    words = functools.reduce(lambda a, b: a * b, [int(d) for d in buffer.shape]) // QUAD
    return T.decl_buffer((_i64(words),), "int32", data=buffer.data, elem_offset=tir.floordiv(buffer.elem_offset, QUAD))


# ---------------------------------------------------------------------------
# 1x1 convolution


def _pointwise_desc(channels: int, pixels: int, quads: int):
    """The whole reduction of a ``channels x pixels`` block over ``quads`` quads, its initial zero included."""
    from tvm.script import tirx as T

    I64 = T.int64
    R, P, K4 = I64(channels), I64(pixels), I64(quads)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, w: T.handle, c: T.handle) -> None:
        sa = T.int64()
        sw = T.int64()
        sc = T.int64()
        A = T.match_buffer(a, (K4, P), "uint32", strides=[sa, I64(1)], offset_factor=1)
        W = T.match_buffer(w, (K4, R, I64(4)), "int8", strides=[sw, I64(4), I64(1)], offset_factor=4)
        C = T.match_buffer(c, (R, P), "int32", strides=[sc, I64(1)], offset_factor=1)
        with T.sblock("root"):
            T.reads(A[I64(0):K4, I64(0):P], W[I64(0):K4, I64(0):R, I64(0):I64(4)])
            T.writes(C[I64(0):R, I64(0):P])
            for o, p, k, j in T.grid(R, P, K4, I64(4)):
                with T.sblock("update"):
                    vo, vp, vk, vj = T.axis.remap("SSRR", [o, p, k, j])
                    T.reads(C[vo, vp], A[vk, vp], W[vk, vo, vj])
                    T.writes(C[vo, vp])
                    with T.init():
                        C[vo, vp] = 0
                    C[vo, vp] = C[vo, vp] + unpack(A[vk, vp], vj) * T.Cast("int32", W[vk, vo, vj])

    @T.prim_func(s_tir=True)
    def desc_one_quad(a: T.handle, w: T.handle, c: T.handle) -> None:
        # A single quad of input channels: the block's binding has no quad (its loop has one iteration).
        sa = T.int64()
        sw = T.int64()
        sc = T.int64()
        A = T.match_buffer(a, (K4, P), "uint32", strides=[sa, I64(1)], offset_factor=1)
        W = T.match_buffer(w, (K4, R, I64(4)), "int8", strides=[sw, I64(4), I64(1)], offset_factor=4)
        C = T.match_buffer(c, (R, P), "int32", strides=[sc, I64(1)], offset_factor=1)
        with T.sblock("root"):
            T.reads(A[I64(0):K4, I64(0):P], W[I64(0):K4, I64(0):R, I64(0):I64(4)])
            T.writes(C[I64(0):R, I64(0):P])
            for o, p, _, j in T.grid(R, P, K4, I64(4)):
                with T.sblock("update"):
                    vo, vp, vj = T.axis.remap("SSR", [o, p, j])
                    T.reads(C[vo, vp], A[I64(0), vp], W[I64(0), vo, vj])
                    T.writes(C[vo, vp])
                    with T.init():
                        C[vo, vp] = 0
                    C[vo, vp] = C[vo, vp] + unpack(A[I64(0), vp], vj) * T.Cast("int32", W[I64(0), vo, vj])

    return desc_one_quad if quads == 1 else desc


@dataclasses.dataclass(frozen=True)
class RegisterTile:
    """Sums held in registers: ``channels x vectors`` NEON registers of 4 pixels."""

    channels: int
    vectors: int


def register_tile(channels: int, vectors: int) -> RegisterTile:
    """The register tile of a ``channels x vectors`` block: the least work counting overlap and loads.

    Tiles that do not divide the block overlap the tile before them (their
    sums are computed again and stored again, the same values), so every
    tile has the same shape and one loop runs them all. A tile holds at most
    :data:`TILE_SUMS` sums, and :data:`TILE_REGISTERS` with its input vectors and weight registers.
    """
    options = []
    for tile_channels in sorted({c for c in (4, 8, 12, 16) if c <= channels} or {channels}):
        for tile_vectors in range(1, min(vectors, 8) + 1):
            weights = -(-tile_channels // VECTOR)
            if tile_channels * tile_vectors > TILE_SUMS or \
                    tile_channels * tile_vectors + tile_vectors + weights > TILE_REGISTERS:
                continue
            tiles = -(-channels // tile_channels) * -(-vectors // tile_vectors)
            cost = tiles * (tile_channels * tile_vectors + (tile_vectors + weights) / 2)
            options.append((cost, -tile_channels, tile_vectors, RegisterTile(tile_channels, tile_vectors)))
    return min(options)[-1]


def _pointwise_impl(channels: int, pixels: int, quads: int, kind: str):
    """``C[o, p] = sum_k unpack(A[k, p]) . W[k, o]`` for the block, in register tiles of dot products (see above)."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    I64 = functools.partial(tir.IntImm, "int64")
    vectors = pixels // VECTOR
    tile = register_tile(channels, vectors)
    flipped = kind == "sdot"
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name("impl")
            a, w, c = (T.arg(name, T.handle()) for name in ("a", "w", "c"))
            sa, sw, sc = (tir.Var(name, "int64") for name in ("sa", "sw", "sc"))
            A = T.match_buffer(a, (I64(quads), I64(pixels)), "uint32", strides=[sa, I64(1)], offset_factor=1)
            W = T.match_buffer(w, (I64(quads), I64(channels), I64(4)), "int8", strides=[sw, I64(4), I64(1)],
                               offset_factor=4)
            C = T.match_buffer(c, (I64(channels), I64(pixels)), "int32", strides=[sc, I64(1)], offset_factor=1)
            with T.sblock("root"):
                T.reads(A[0:quads, 0:pixels], W[0:quads, 0:channels, 0:4])
                T.writes(C[0:channels, 0:pixels])
                words = _int32_view(T, W, (I64(quads), I64(channels)), [tir.floordiv(sw, QUAD), I64(1)])
                acc = T.alloc_buffer((tile.channels * tile.vectors * VECTOR,), "int32", scope="local")
                correction = None
                source = A
                if flipped:
                    # The block's input as s8 (x - 128), once; the correction 128 * sum_k W[k, o] per channel.
                    source = T.alloc_buffer((I64(quads), I64(pixels)), "uint32")
                    with T.serial(I64(0), I64(quads)) as k:
                        with T.serial(I64(0), I64(vectors)) as v:
                            T.buffer_store(source, A[k, _ramp(v * VECTOR)] ^ _splat(tir.const(FLIP, "uint32")),
                                           [k, _ramp(v * VECTOR)])
                    correction = T.alloc_buffer((I64(channels),), "int32")
                    _pointwise_corrections(T, words, correction, channels, quads)
                channel_tiles = -(-channels // tile.channels)
                pixel_tiles = -(-vectors // tile.vectors)
                with T.serial(I64(0), I64(channel_tiles * pixel_tiles)) as t:
                    # Tile t: the last of a row or column starts early enough to end at the block's edge.
                    o0 = tir.min(tir.floordiv(t, I64(pixel_tiles)) * I64(tile.channels),
                                 I64(channels - tile.channels))
                    p0 = tir.min(tir.floormod(t, I64(pixel_tiles)) * I64(tile.vectors * VECTOR),
                                 I64(pixels - tile.vectors * VECTOR))
                    _pointwise_tile(T, kind, source, words, C, acc, correction, o0, p0, tile, quads)
    return builder.get()


def _pointwise_corrections(T, words, correction, channels: int, quads: int) -> None:
    """``correction[o] = 128 * sum_k W[k, o]``: ``sdot`` of the weights against -128 bytes, negated.

    Four channels per register (a channel left over: its quad broadcast), up
    to :data:`CORRECTION_REGISTERS` registers summed in one pass over the
    quads, the row of weights of a quad read in order.
    """
    I64 = functools.partial(tir.IntImm, "int64")
    sums = [(o, VECTOR) for o in range(0, channels - channels % VECTOR, VECTOR)]
    sums += [(o, 1) for o in range(channels - channels % VECTOR, channels)]
    acc = T.alloc_buffer((min(len(sums), CORRECTION_REGISTERS) * VECTOR,), "int32", scope="local")
    for first in range(0, len(sums), CORRECTION_REGISTERS):
        chunk = sums[first:first + CORRECTION_REGISTERS]
        for i in range(len(chunk)):
            T.buffer_store(acc, _splat(tir.const(0, "int32")), [_ramp(i * VECTOR)])
        with T.serial(I64(0), I64(quads)) as k:
            for i, (o, width) in enumerate(chunk):
                weights = words[k, _ramp(I64(o))] if width == VECTOR else _splat(words[k, I64(o)])
                T.buffer_store(acc, _dot("sdot", acc[_ramp(i * VECTOR)], _bytes(weights), _flip_bytes()),
                               [_ramp(i * VECTOR)])
        for i, (o, width) in enumerate(chunk):
            if width == VECTOR:
                T.buffer_store(correction, _splat(tir.const(0, "int32")) - acc[_ramp(i * VECTOR)], [_ramp(I64(o))])
            else:
                T.buffer_store(correction, tir.const(0, "int32") - acc[i * VECTOR], [I64(o)])


def _pointwise_tile(T, kind, source, words, C, acc, correction, o0, p0, tile: RegisterTile, quads: int) -> None:
    """One register tile: its sums over all quads, from the correction (or zero), stored to ``C``."""
    I64 = functools.partial(tir.IntImm, "int64")
    slots = [(o, v) for o in range(tile.channels) for v in range(tile.vectors)]

    def slot(o, v):
        return _ramp((o * tile.vectors + v) * VECTOR)

    for o, v in slots:
        start = _splat(correction[o0 + I64(o)]) if correction is not None else _splat(tir.const(0, "int32"))
        T.buffer_store(acc, start, [slot(o, v)])
    groups = tile.channels // VECTOR
    with T.serial(I64(0), I64(quads)) as k:
        inputs = [_bytes(source[k, _ramp(p0 + I64(v * VECTOR))]) for v in range(tile.vectors)]
        weights = [words[k, _ramp(o0 + I64(g * VECTOR))] for g in range(groups)]
        for o, v in slots:
            if o < groups * VECTOR:
                weight = _bytes(_lane(weights[o // VECTOR], o % VECTOR))
            else:
                weight = _bytes(_splat(words[k, o0 + I64(o)]))
            T.buffer_store(acc, _dot(kind, acc[slot(o, v)], inputs[v], weight), [slot(o, v)])
    for o, v in slots:
        T.buffer_store(C, acc[slot(o, v)], [o0 + I64(o), _ramp(p0 + I64(v * VECTOR))])


_NAMED = re.compile(r"tvm_shuffle_neon_(sdot|usdot)_(pointwise|dense)_(\d+(?:x\d+)+)")


def register_named(text: str | bytes) -> None:
    """Register the intrinsics whose names occur in ``text`` (tuning records: a trace names its intrinsics).

    The intrinsics are made per block shape, which their names spell; a
    record read in a process that has not scheduled that kernel yet needs
    them registered, or its trace does not parse.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for kind, kernel, sizes in set(_NAMED.findall(text)):
        (pointwise_intrin if kernel == "pointwise" else dense_intrin)(*(int(s) for s in sizes.split("x")), kind)


@functools.lru_cache(maxsize=None)
def pointwise_intrin(channels: int, pixels: int, quads: int, kind: str) -> str:
    """Register (once) the intrinsic of a ``channels x pixels x quads`` block of the 1x1 kernel; its name."""
    from tvm.s_tir import TensorIntrin

    name = f"tvm_shuffle_neon_{kind}_pointwise_{channels}x{pixels}x{quads}"
    TensorIntrin.register(name, _pointwise_desc(channels, pixels, quads),
                          _pointwise_impl(channels, pixels, quads, kind), override=True)
    return name


@dataclasses.dataclass(frozen=True)
class PointwisePlan:
    tile: int  # pixels per tile (a divisor of the padded plane)
    groups: int  # channel groups per tile (parallel tasks of a single-tile plane)


def plan_pointwise(out_channels: int, padded: int, pixels: int, quads: int, threads: int) -> PointwisePlan:
    """Pixel tiles of at most :data:`TILE_INPUT_BYTES` of input, enough of them for the threads; else channel groups.

    A plane that is no whole number of 16-pixel vectors (7x7, 14x14) is one
    tile (the epilogue then reads whole rows of real pixels, as on x86), split
    by output channels among the threads instead.
    """
    if padded == pixels:
        fitting = [t for t in range(16, padded + 1, 16) if padded % t == 0 and t * quads * QUAD <= TILE_INPUT_BYTES]
        enough = [t for t in fitting if padded // t >= threads]
        if enough or fitting:
            tile = max(enough or fitting)
            if tile < padded:
                return PointwisePlan(tile, 1)
    divisors = [g for g in range(1, out_channels + 1) if out_channels % g == 0]
    if padded * out_channels < MIN_PARALLEL_WORK:
        return PointwisePlan(padded, 1)
    wide = [g for g in divisors if g >= threads and out_channels // g >= MIN_GROUP_CHANNELS]
    if wide:
        return PointwisePlan(padded, min(wide))
    return PointwisePlan(padded, max(g for g in divisors if g <= threads and
                                     (out_channels // g >= MIN_GROUP_CHANNELS or g == 1)))


def schedule_pointwise(sch: Schedule, found, target) -> None:
    """:mod:`.int8`'s kernel (``found``: its blocks) with a dot-product block per pixel tile (or channel group)."""
    for block in reversed(found.epilogue):
        sch.reverse_compute_inline(block)
    crop = found.crop
    width = iter_extents(sch, crop)[3]
    sch.transform_block_layout(crop, lambda n, o, h, w: (n, o, h * width + w))
    _, out_channels, padded, quads = iter_extents(sch, found.conv)[:4]
    pixels = iter_extents(sch, crop)[2]
    plan = plan_pointwise(out_channels, padded, pixels, quads, thread_slices(target))
    conv = found.conv
    n, o, p, k, j = sch.get_loops(conv)
    p_out, p_in = sch.split(p, [padded // plan.tile, plan.tile])
    o_out, o_in = sch.split(o, [plan.groups, out_channels // plan.groups])
    sch.reorder(n, p_out, o_out, o_in, p_in, k, j)
    pack_weights_by_quad(sch, found.conv, found.weights)
    outer = sch.fuse(n, p_out, o_out)
    if computes_batch_as_one_axis(sch, conv, crop):
        crop_whole_batch(sch, crop, padded * out_channels)
    else:
        sch.reverse_compute_at(crop, outer)
        vectorize_divisor(sch, sch.get_loops(crop)[-1])
    # The input stages run first, each in its own parallel loop: inside the loop of tiles the quantization's
    # constants would stay live across the dot products and spill.
    for block in (found.pad, found.quads):
        if block is not None:
            sch.parallel(sch.get_loops(block)[1])
    _vectorize_stages(sch, found)
    if found.gather is not None:
        _gather_per_source(sch, found.gather)
    if padded * out_channels >= MIN_PARALLEL_WORK and int(sch.get(outer).extent) > 1:
        sch.parallel(outer)
    sch.tensorize(o_in, pointwise_intrin(out_channels // plan.groups, plan.tile, quads, instruction(target)))


def _gather_per_source(sch: Schedule, gather) -> None:
    """The gather of several tensors (a fused channel shuffle) as one parallel loop per source tensor.

    As the fp32 NEON schedules do (:func:`.cpu._planes_per_source`): in one
    loop over the channels, every source's pointer stays live across the
    copy and LLVM reloads them from the stack; partitioned at the sources'
    boundaries, each loop reads one tensor.
    """
    from tvm_shuffle.schedules import cpu

    channel = sch.get_loops(gather)[1]
    extent = int(sch.get(channel).extent)
    bounds = [0, *cpu._source_cuts(sch, gather), extent]
    loops = [channel] if len(bounds) == 2 else \
        sch.loop_partition(channel, [b - a for a, b in zip(bounds, bounds[1:-1])] + [None])
    for loop in loops:
        sch.parallel(loop)


def _vectorize_stages(sch: Schedule, found) -> None:
    """The input stages as :mod:`.int8` does, but the quantized quads one NEON register of pixels at a time.

    Sixteen pixels at a time (AVX-512's vector) hold four channels in 16
    NEON registers, and LLVM interleaves several such steps: the constants
    of the quantization would be reloaded from the stack.
    """
    vectorize_input_stages(sch, found.gather, found.pad, found.quads, VECTOR, batch_plane(sch, found.conv, found.crop))


# ---------------------------------------------------------------------------
# Classifier


def _dense_desc(outputs: int, quads: int):
    from tvm.script import tirx as T

    I64 = T.int64
    R, K4, G = I64(outputs), I64(quads), I64(outputs // VECTOR)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, w: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (K4,), "uint32", offset_factor=1)
        W = T.match_buffer(w, (G, K4, I64(4), I64(4)), "int8", offset_factor=16)
        C = T.match_buffer(c, (R,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(A[I64(0):K4], W[I64(0):G, I64(0):K4, I64(0):I64(4), I64(0):I64(4)])
            T.writes(C[I64(0):R])
            for o, k, j in T.grid(R, K4, I64(4)):
                with T.sblock("update"):
                    vo, vk, vj = T.axis.remap("SRR", [o, k, j])
                    T.reads(C[vo], A[vk], W[vo // I64(4), vk, vo % I64(4), vj])
                    T.writes(C[vo])
                    with T.init():
                        C[vo] = 0
                    C[vo] = C[vo] + unpack(A[vk], vj) * T.Cast("int32", W[vo // I64(4), vk, vo % I64(4), vj])

    return desc


def _dense_impl(outputs: int, quads: int, kind: str):
    """``C[o] = sum_k unpack(A[k]) . W[o, k]`` for ``outputs`` outputs, :data:`DENSE_ACCUMULATORS` vectors at a time."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    I64 = functools.partial(tir.IntImm, "int64")
    flipped = kind == "sdot"
    groups = outputs // VECTOR
    size = min(DENSE_ACCUMULATORS, groups)
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name("impl")
            a, w, c = (T.arg(name, T.handle()) for name in ("a", "w", "c"))
            A = T.match_buffer(a, (I64(quads),), "uint32", offset_factor=1)
            W = T.match_buffer(w, (I64(groups), I64(quads), I64(4), I64(4)), "int8", offset_factor=16)
            C = T.match_buffer(c, (I64(outputs),), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(A[0:quads], W[0:groups, 0:quads, 0:4, 0:4])
                T.writes(C[0:outputs])
                words = _flat_int32(T, W)
                acc = T.alloc_buffer((size * VECTOR,), "int32", scope="local")
                corr = T.alloc_buffer((size * VECTOR,), "int32", scope="local") if flipped else None
                with T.serial(I64(0), I64(-(-groups // size))) as b:
                    # The last tile ends at the last group (it may compute some of the tile before it again).
                    g0 = tir.min(b * I64(size), I64(groups - size))
                    _dense_tile(T, kind, A, words, C, acc, corr, g0, size, quads)
    return builder.get()


def _dense_tile(T, kind, A, words, C, acc, corr, g0, size: int, quads: int) -> None:
    I64 = functools.partial(tir.IntImm, "int64")
    zero = _splat(tir.const(0, "int32"))
    for g in range(size):
        T.buffer_store(acc, zero, [_ramp(g * VECTOR)])
        if corr is not None:
            T.buffer_store(corr, zero, [_ramp(g * VECTOR)])
    def step(k, x):
        """Quad ``k`` of every output of the tile, ``x`` its input quad in the four lanes."""
        for g in range(size):
            # words: [O / 4, K / 4, 4] int32, one word per output and quad of features.
            weight = _bytes(words[_ramp(((g0 + I64(g)) * I64(quads) + k) * I64(VECTOR))])
            if kind == "usdot":
                T.buffer_store(acc, _dot("usdot", acc[_ramp(g * VECTOR)], x, weight), [_ramp(g * VECTOR)])
            else:
                T.buffer_store(acc, _dot("sdot", acc[_ramp(g * VECTOR)], weight, x), [_ramp(g * VECTOR)])
                T.buffer_store(corr, _dot("sdot", corr[_ramp(g * VECTOR)], weight, _flip_bytes()),
                               [_ramp(g * VECTOR)])

    def flipped(words_, lanes: int):
        return words_ ^ _splat(tir.const(FLIP, "uint32"), lanes) if corr is not None else words_

    # Four input quads in one register, each picked by the indexed form of the dot product (sdot v.4s, v.16b,
    # v.4b[i]; usdot's is sudot): a short reduction, unrolled, keeps a quarter of the registers of broadcasts.
    with T.serial(I64(0), I64(quads // VECTOR)) as kk:
        x = flipped(A[_ramp(kk * I64(VECTOR))], VECTOR)
        for lane in range(VECTOR):
            step(kk * I64(VECTOR) + I64(lane), _bytes(_lane(x, lane)))
    for k in range(quads - quads % VECTOR, quads):
        step(I64(k), _bytes(_splat(flipped(A[I64(k)], 1))))
    for g in range(size):
        total = acc[_ramp(g * VECTOR)]
        if corr is not None:
            total = total - corr[_ramp(g * VECTOR)]  # - sum (-128) W = + 128 sum W
        T.buffer_store(C, total, [_ramp((g0 + I64(g)) * I64(VECTOR))])


@functools.lru_cache(maxsize=None)
def dense_intrin(outputs: int, quads: int, kind: str) -> str:
    """Register (once) the intrinsic of ``outputs`` classifier outputs over ``quads`` quads of features; its name."""
    from tvm.s_tir import TensorIntrin

    name = f"tvm_shuffle_neon_{kind}_dense_{outputs}x{quads}"
    TensorIntrin.register(name, _dense_desc(outputs, quads), _dense_impl(outputs, quads, kind), override=True)
    return name


def schedule_dense(sch: Schedule, sums, target) -> None:
    """:mod:`.int8_dense`'s sums (epilogue already inlined): a dot-product block per group of outputs."""
    n, o, k, _ = sch.get_loops(sums)
    padded_out = int(sch.get(o).extent)
    quads = int(sch.get(k).extent)
    threads = thread_slices(target)
    vectors = padded_out // VECTOR
    groups = max((g for g in range(1, threads + 1) if vectors % g == 0), default=1) \
        if padded_out * quads * QUAD >= MIN_PARALLEL_WORK * 16 else 1
    o_out, o_in = sch.split(o, [groups, padded_out // groups])
    weight = next(index for index, read in enumerate(sch.get(sums).reads) if str(read.source.dtype) == "int8")
    packed = sch.cache_read(sums, weight, "global")
    sch.transform_layout(packed, ("write", 0), lambda o, c: (o // VECTOR, c // QUAD, o % VECTOR, c % QUAD),
                         assume_injective_transform=True)
    sch.annotate(packed, LAYOUT_REWRITE_PREPROC, True)
    outer = sch.fuse(n, o_out)
    if groups > 1:
        sch.parallel(outer)
    sch.tensorize(o_in, dense_intrin(padded_out // groups, quads, instruction(target)))


__all__ = ["DOTPROD_FEATURE", "I8MM_FEATURE", "PLAIN_DENSE_ACCUMULATORS", "has_dotprod", "has_i8mm", "is_aarch64",
           "instruction", "pointwise_intrin", "dense_intrin", "register_named", "register_tile", "RegisterTile",
           "plan_pointwise", "PointwisePlan", "schedule_pointwise", "schedule_dense"]
