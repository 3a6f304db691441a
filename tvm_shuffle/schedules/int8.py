"""int8 1x1 convolutions: u8 activations x s8 weights -> s32 sums, fp32 in and out.

``--quantize int8`` (``precision="int8"``) quantizes every dense 1x1
convolution statically (:mod:`tvm_shuffle.quantize` calibrates, and rewrites
the graph): the weights become s8 constants, symmetric per output channel;
the input is quantized per tensor, asymmetric, to u8 inside the kernel:
``q = clamp(round(x / scale) + zero_point, 0, 255)``. The kernel returns the
s32 sums as fp32 (exact: below 2^24 for the channel counts of ShuffleNet);
the graph multiplies them by ``scale * weight_scale[o]``, subtracts the zero
point's share and adds the bias in the convolution's fused epilogue.
Activations between layers stay fp32 (mixed precision): depthwise
convolutions, the stem and pooling are fp32 kernels (the classifier is
:mod:`.int8_dense`).

The compute (:func:`pointwise_conv2d`) flattens the pixels and pads them to
whole vectors of ``LANES`` as the bf16 kernel does (:mod:`.bf16`), and
stores the quantized input as ``[K / 4, pixels]`` uint32 words: the u8
values of four input channels of a pixel in the bytes of one word, one
32-bit lane of ``vpdpbusd``, built with shifts and ors a vector of pixels at
a time (a byte-interleaved layout made the quantization scalar). Input
channels are padded to a multiple of 4 with u8 zeros, and the weights with
s8 zeros (the ``int8_weights`` stage).

At batch > 1 a small plane padded image by image wastes most of its
vectors (a 2x2 plane computes 16 pixels for 4, a 7x7 plane 64 for 49):
there (:func:`merges_batch`) the pixels of all images are one axis, ``n *
plane + p``, padded once (:func:`batch_input`); the stages then hold one
row for the whole batch, and the crop reads image ``n`` at ``n * plane``.

Stages of the kernel, in order (block names):

* ``int8_gather`` (several source tensors, or a plane that needs no
  padding): the gathered channels, fp32, flat pixels;
* ``int8_pad`` (only when the plane is no whole number of vectors);
* ``int8_quads``: the u8 input, a quad of channels per uint32;
* ``int8_weights`` (only when the input channels are no whole number of
  quads): the s8 weights padded to quads;
* ``conv2d_int8``: the s32 sums over the padded pixels;
* ``conv2d_int8_crop``: the real pixels as fp32, NCHW (the epilogue joins
  it); per channel tile, or after all of them when the batch is one axis
  (:func:`.quads.crop_whole_batch`).

Which convolution gets which quantization parameters: the graph pass stores
them in an :class:`InputQuantTable` keyed by :func:`fingerprint` of the s8
weights, which is unchanged when the channel-shuffle fusion permutes a
convolution's input channels; :func:`pointwise_conv2d` reads the weights'
constant through its TE placeholder (``op.value``) and looks it up in the
table :func:`using_table` made current. A fingerprint two convolutions share
with different parameters is refused when the table is made (that
convolution stays fp32).

:class:`PointwiseInt8` schedules it. With AVX-512 VNNI (``avx512vnni`` in the
target's features) each step of the inner loop is one ``vpdpbusd``: 16 pixels
x 1 output channel x 4 input channels, the weight quad a 32-bit broadcast
from weights packed at build time as ``[O / oc, K / 4, oc, 4]``. Without
VNNI the same compute runs as plain 32-bit integer multiply-adds on widened
u8 and s8 values (exact, slower; the build says so). The strategy is that of
:mod:`.bf16`: ``oc x vectors`` sums in registers while the input quads stream
past, pixel tiles outermost when the plane divides into whole vectors,
otherwise channel tiles shared among the threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hashlib

import numpy as np

from tvm_shuffle.schedules import int8_arm
from tvm_shuffle.schedules.analysis import child_blocks
from tvm_shuffle.schedules.bf16 import LANES, LAYOUT_REWRITE_PREPROC, MIN_PARALLEL_WORK, TILES, Tiles
from tvm_shuffle.schedules.bf16 import flat_input, fold_epilogue, i64, plan, register_tile, shape64, tile_sums
from tvm_shuffle.schedules.bf16 import vectorize_divisor
from tvm_shuffle.schedules.quads import QUAD, InputQuant, batch_plane, computes_batch_as_one_axis, crop_whole_batch
from tvm_shuffle.schedules.quads import pack_quad, unpack, vectorize_input_stages
from tvm_shuffle.tvm_compat import Schedule, dlight, target_has_feature, te, tir

CONV = "conv2d_int8"
CROP = "conv2d_int8_crop"
GATHER = "int8_gather"
PAD = "int8_pad"
QUADS = "int8_quads"
WEIGHTS = "int8_weights"
DOT_INTRIN = "tvm_shuffle_vpdpbusd_16x4"
# Per-image padding above this share of the padded pixels merges a batch's pixels into one axis (merges_batch).
MERGE_WASTE = 0.125
VNNI_FEATURE = "avx512vnni"


# ---------------------------------------------------------------------------
# Quantization parameters of the convolutions' inputs


InputQuantTable = dict  # fingerprint (str) -> InputQuant

_CURRENT: contextvars.ContextVar[InputQuantTable | None] = contextvars.ContextVar("int8_input_quant", default=None)


def fingerprint(weight: np.ndarray) -> str:
    """A digest of s8 weights that permuting their input channels (axis 1) leaves unchanged."""
    rows = np.sort(np.asarray(weight).reshape(weight.shape[0], -1), axis=1)
    return hashlib.sha1(repr(weight.shape).encode() + rows.tobytes()).hexdigest()


@contextlib.contextmanager
def using_table(table: InputQuantTable):
    """Make ``table`` the one :func:`pointwise_conv2d` reads while the graph is rewritten."""
    token = _CURRENT.set(table)
    try:
        yield table
    finally:
        _CURRENT.reset(token)


def input_quant(weight_constant) -> InputQuant:
    """The input quantization of the convolution with these s8 weights (a Relax constant)."""
    table = _CURRENT.get()
    key = fingerprint(weight_constant.value.numpy())
    if table is None or key not in table:
        raise LookupError("an s8 convolution weight with no input quantization: the int8 graph pass "
                          "(tvm_shuffle.quantize) records them, and passes.optimize makes its table current")
    return table[key]


# ---------------------------------------------------------------------------
# Compute


def is_pointwise(weight_shape, strides, padding, dilation, groups: int) -> bool:
    """Whether a conv2d is one :func:`pointwise_conv2d` computes: 1x1, stride 1, no padding, dense."""
    return (tuple(int(d) for d in weight_shape[2:]) == (1, 1) and groups == 1
            and all(int(s) == 1 for s in strides) and not any(int(p) for p in padding)
            and all(int(d) == 1 for d in dilation))


def pointwise_conv2d(*tensors: te.Tensor, gather, out_dtype: str = "float32") -> te.Tensor:
    """1x1 NCHW conv2d of the gathered fp32 input (see :mod:`.kernels`) with s8 weights ``tensors[-1]``.

    Returns the s32 sums as ``out_dtype`` (fp32); the input's quantization
    comes from the current table (:func:`using_table`) by the weights' values.
    """
    *sources, weight = tensors
    quant = input_quant(weight.op.value)
    batch, _, height, width = (int(d) for d in sources[0].shape)
    out_channels, channels = (int(d) for d in weight.shape[:2])
    quads = -(-channels // QUAD)
    merged = merges_batch(batch, height * width)
    if merged:
        read, padded = batch_input(sources, gather, channels, gather_name=GATHER, pad_name=PAD)
        rows = 1
    else:
        read, padded = flat_input(sources, gather, channels, gather_name=GATHER, pad_name=PAD)
        rows = batch
    # One uint32 per pixel and quad of channels (byte j: channel 4k + j), computed a vector of pixels at a time.
    quad_input = te.compute(shape64(rows, quads, padded),
                            lambda n, k, p: pack_quad(lambda c: read(n, c, p), k, channels, quant), name=QUADS)
    zero = i64(0)
    if channels % QUAD:
        # 4-D like the parameter: MetaSchedule's layout rewrite maps the parameter's indices through this stage.
        padded_weights = te.compute(shape64(out_channels, quads * QUAD, 1, 1),
                                    lambda o, c, h, w: tir.if_then_else(
                                        c < i64(channels), weight[o, tir.min(c, i64(channels - 1)), h, w],
                                        tir.const(0, "int8")), name=WEIGHTS)
        read_weight = lambda o, c: padded_weights[o, c, zero, zero]  # noqa: E731
    else:
        read_weight = lambda o, c: weight[o, c, zero, zero]  # noqa: E731
    k = te.reduce_axis((i64(0), i64(quads)), "rk")
    j = te.reduce_axis((i64(0), i64(QUAD)), "rj")
    conv = te.compute(shape64(rows, out_channels, padded),
                      lambda n, o, p: te.sum(unpack(quad_input[n, k, p], j)
                                             * read_weight(o, k * i64(QUAD) + j).astype("int32"), axis=[k, j]),
                      name=CONV)
    if merged:
        plane = height * width
        return te.compute(shape64(batch, out_channels, height, width),
                          lambda n, o, h, w: conv[zero, o, n * i64(plane) + h * i64(width) + w].astype(out_dtype),
                          name=CROP)
    return te.compute(shape64(batch, out_channels, height, width),
                      lambda n, o, h, w: conv[n, o, h * i64(width) + w].astype(out_dtype), name=CROP)


def merges_batch(batch: int, plane: int) -> bool:
    """Whether the kernel computes the pixels of all ``batch`` images as one axis rather than image by image.

    Each image's plane padded to whole vectors of :data:`LANES` computes
    ``ceil(plane / LANES)`` vectors per image: 4 for a 7x7 plane (49 of 64
    pixels real), 1 for 2x2 (4 of 16) and 1x1 (1 of 16). The batch's pixels
    as one axis, padded once, waste less than a vector in all. Merged when
    the per-image padding is more than :data:`MERGE_WASTE` of the padded
    pixels; a plane of whole vectors (8x8, 28x28) or one that wastes little
    (14x14: 12 of 208) keeps its per-image tiles, and batch 1 is unchanged.
    """
    padded = -(-plane // LANES) * LANES
    return batch > 1 and padded - plane > MERGE_WASTE * padded


def batch_input(sources, gather, channels: int, *, gather_name: str, pad_name: str):
    """The gathered input as ``read(0, c, q)`` over the batch's pixels ``q = n * plane + p``, padded once to whole vectors.

    The :func:`.bf16.flat_input` of a batch that :func:`merges_batch`, in one
    stage of ``[1, C, padded]``: the padding stage (``pad_name``) when ``N *
    plane`` is no whole number of vectors, else the gather stage
    (``gather_name``). Its reads of image ``q // plane`` are whole planes,
    contiguous in the NCHW source and in the copy, once the schedule splits
    the pixels by image (:func:`.quads.vectorize_input_stages`). Returns
    ``(read, padded pixels)``; ``read``'s first index is the single row of
    the kernel's stages, always 0.
    """
    batch, _, height, width = (int(d) for d in sources[0].shape)
    plane = height * width
    pixels = batch * plane
    padded = -(-pixels // LANES) * LANES

    def real(c, q):
        p = q % i64(plane)
        return gather.read(sources, q // i64(plane), c, p // i64(width), p % i64(width))

    if padded > pixels:
        flat = te.compute(shape64(1, channels, padded),
                          lambda r, c, q: tir.if_then_else(q < i64(pixels), real(c, q), tir.const(0, "float32")),
                          name=pad_name)
    else:
        flat = te.compute(shape64(1, channels, padded), lambda r, c, q: real(c, q), name=gather_name)
    return (lambda r, c, q: flat[r, c, q]), padded


# ---------------------------------------------------------------------------
# Tensor intrinsic


@functools.lru_cache(maxsize=None)
def register_intrinsics() -> None:
    """Register the ``vpdpbusd`` step (16 pixels x 4 channels of u8, one s8 weight quad) with TVM, once."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    I64 = T.int64

    @T.prim_func(s_tir=True)
    def dot_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (I64(16),), "uint32", offset_factor=1)
        B = T.match_buffer(b, (I64(4),), "int8", offset_factor=4)
        C = T.match_buffer(c, (I64(16),), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[I64(0):I64(16)], A[I64(0):I64(16)], B[I64(0):I64(4)])
            T.writes(C[I64(0):I64(16)])
            for i, k in T.grid(I64(16), I64(4)):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + unpack(A[vi], vk) * T.Cast("int32", B[vk])

    @T.prim_func(s_tir=True)
    def dot_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (I64(16),), "uint32", offset_factor=1)
        B = T.match_buffer(b, (I64(4),), "int8", offset_factor=4)
        C = T.match_buffer(c, (I64(16),), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[I64(0):I64(16)], A[I64(0):I64(16)], B[I64(0):I64(4)])
            T.writes(C[I64(0):I64(16)])
            # LLVM's intrinsic takes the u8 and s8 operands as <64 x i8>: 16 quads of pixels, one weight quad broadcast.
            B32 = T.decl_buffer((1,), "int32", data=B.data, elem_offset=B.elem_offset // 4)
            C[T.ramp(0, 1, 16)] = T.call_llvm_pure_intrin(
                "int32x16", "llvm.x86.avx512.vpdpbusd.512", C[T.ramp(0, 1, 16)],
                T.reinterpret(A[T.ramp(0, 1, 16)], dtype="int8x64"),
                T.reinterpret(T.broadcast(B32[0], 16), dtype="int8x64"))

    TensorIntrin.register(DOT_INTRIN, dot_desc, dot_impl, override=True)


# ---------------------------------------------------------------------------
# Schedule


def has_vnni(target) -> bool:
    """Whether the LLVM target has AVX-512 VNNI (``vpdpbusd`` on 512-bit vectors)."""
    return target_has_feature(target, VNNI_FEATURE)


# Tiles tuning measures beside the default: fewer sums per register tile, and longer pixel tiles
# (a 28x28 plane is 49 vectors: 7 of them per tile instead of 1).
TILE_ALTERNATIVES = (Tiles(accumulators=16, tile_vectors=TILES.tile_vectors), Tiles(tile_vectors=8))


class PointwiseInt8(dlight.ScheduleRule):
    """The kernels of :func:`pointwise_conv2d` (a block named ``conv2d_int8``), with their fused epilogue."""

    def __init__(self, tiles: Tiles = TILES):
        self.tiles = tiles

    def apply(self, func, target, tunable):  # noqa: ARG002 - one schedule, nothing tunable
        if target.kind.name != "llvm" or not isinstance(func, tir.PrimFunc):
            return None
        sch = Schedule(func)
        found = _find(sch)
        if found is None:
            return None
        if has_vnni(target):
            register_intrinsics()
            _tile(sch, found, self.tiles, lanes=LANES, native=True)
        elif int8_arm.has_dotprod(target):
            int8_arm.schedule_pointwise(sch, found, target)
        else:
            _tile(sch, found, Tiles(accumulators=8, tile_vectors=self.tiles.tile_vectors), lanes=8, native=False)
        return sch


def tile_alternatives(func, target) -> list:
    """``func`` scheduled with each of :data:`TILE_ALTERNATIVES`; empty when it is no int8 kernel.

    An alternative may equal the default (the same tile once clipped to the
    plane and the channels): the caller keeps the distinct ones.
    """
    return [sch for sch in (PointwiseInt8(tiles).apply(func, target, False) for tiles in TILE_ALTERNATIVES)
            if sch is not None]


@dataclasses.dataclass
class _Blocks:
    gather: object
    pad: object
    quads: object
    weights: object
    conv: object
    crop: object
    epilogue: list


def _find(sch: Schedule) -> _Blocks | None:
    """The stages of a :func:`pointwise_conv2d` kernel by name, or None when ``sch`` is another kernel."""
    blocks = list(child_blocks(sch))
    names = [sch.get(b).name_hint for b in blocks]
    if any(name not in names for name in (CONV, QUADS, CROP)):
        return None
    position = {name: i for i, name in enumerate(names)}
    if not position[QUADS] < position[CONV] < position[CROP] or position.get(WEIGHTS, 0) > position[CONV]:
        return None
    if any(name not in {GATHER, PAD, QUADS, WEIGHTS} for name in names[:position[CONV]]):
        return None
    crop_at = position[CROP]
    return _Blocks(gather=blocks[position[GATHER]] if GATHER in position else None,
                   pad=blocks[position[PAD]] if PAD in position else None,
                   quads=blocks[position[QUADS]],
                   weights=blocks[position[WEIGHTS]] if WEIGHTS in position else None, conv=blocks[position[CONV]],
                   crop=blocks[crop_at], epilogue=blocks[crop_at + 1:])


def _tile(sch: Schedule, found: _Blocks, tiles: Tiles, *, lanes: int, native: bool) -> None:
    """Sums of ``channels x vectors`` in registers per pixel chunk; the input stages per tile or per plane."""
    crop = fold_epilogue(sch, found.crop, found.epilogue)
    out_channels, padded, _, tile = plan(sch, found.conv, crop, tiles)
    conv = found.conv
    merged = computes_batch_as_one_axis(sch, conv, crop)
    oc, vectors = register_tile(out_channels, _chunk_vectors(tile // lanes, tiles, merged), tiles.accumulators)
    n, p_out, o_out, k, lane = tile_sums(sch, conv, None if merged else crop, padded=padded, tile=tile, oc=oc,
                                         vectors=vectors, lanes=lanes, native=native)
    if merged:
        crop_whole_batch(sch, crop, padded * out_channels)
    else:
        vectorize_divisor(sch, sch.get_loops(crop)[-1])
    _pack_weights(sch, found, oc, native=native)
    if not native:
        sch.vectorize(lane)
    if padded // tile > 1:
        outer = sch.fuse(n, p_out)
        for block in (found.quads, found.pad, found.gather):
            if block is not None:
                sch.compute_at(block, outer)
    else:
        outer = sch.fuse(n, p_out, o_out)
        for block in (found.pad, found.gather, found.quads):
            if block is not None:
                sch.parallel(sch.get_loops(block)[1])
    _vectorize_stages(sch, found)
    if padded * out_channels >= MIN_PARALLEL_WORK:
        sch.parallel(outer)
    sch.annotate(outer, "pragma_auto_unroll_max_step", tiles.unroll_limit)
    sch.annotate(outer, "pragma_unroll_explicit", 1)
    sch.decompose_reduction(conv, k)
    if native:
        sch.tensorize(lane, DOT_INTRIN)


def _chunk_vectors(vectors: int, tiles: Tiles, merged: bool) -> int:
    """Pixel vectors the register tile may span: all of the tile's, or at most ``tile_vectors`` when the batch is one axis.

    A batch's pixels as one tile run to many vectors, often a prime number of
    them (4 x 7x7 is 13): the register tile would take all of them for a
    couple of output channels, and each chunk's input quads (13 vectors of
    116 quads, 96 KB) would stream from L2 for every two channels. At most
    ``tile_vectors`` (a divisor) keeps a chunk's quads in L1, as a 7x7 plane's
    are at batch 1.
    """
    if not merged:
        return vectors
    return max(v for v in range(1, min(vectors, tiles.tile_vectors) + 1) if vectors % v == 0)


def _pack_weights(sch: Schedule, found: _Blocks, oc: int, *, native: bool) -> None:
    """The s8 weights stored the way the tiles read them, ``[O / oc, K / 4, oc, 4]``.

    Whole quads of input channels: a copy of the weight parameter marked as
    layout-rewrite preprocessing, which the build runs once on the constant
    and MetaSchedule's measurements strip (it must be a plain copy). Channels
    padded to quads: the padding stage itself, packed on every call (its
    reads are no plain copy; ShuffleNet's such kernels have 58 x 60 weights),
    4-D like the parameter so that MetaSchedule's own layout rewrite of the
    parameter maps all four of its indices.
    """
    if native:
        layout = lambda o, c: (o // oc, c // QUAD, o % oc, c % QUAD)  # noqa: E731
    else:
        layout = lambda o, c: (o // oc, c, o % oc)  # noqa: E731 - one weight per step
    if found.weights is not None:
        sch.transform_layout(found.weights, ("write", 0), lambda o, c, h, w: layout(o, c),
                             assume_injective_transform=True)
        return
    weight = next(index for index, read in enumerate(sch.get(found.conv).reads) if str(read.source.dtype) == "int8")
    packed = sch.cache_read(found.conv, weight, "global")
    sch.transform_layout(packed, ("write", 0), lambda o, c, h, w: layout(o, c), assume_injective_transform=True)
    sch.annotate(packed, LAYOUT_REWRITE_PREPROC, True)


def _vectorize_stages(sch: Schedule, found: _Blocks) -> None:
    # A vector of pixels' quads at a time: four fp32 rows in, one 64-byte row of uint32 out.
    vectorize_input_stages(sch, found.gather, found.pad, found.quads, LANES, batch_plane(sch, found.conv, found.crop))


__all__ = ["InputQuant", "InputQuantTable", "fingerprint", "using_table", "input_quant", "is_pointwise",
           "pointwise_conv2d", "register_intrinsics", "has_vnni", "PointwiseInt8", "TILE_ALTERNATIVES",
           "tile_alternatives", "CONV", "QUAD"]
