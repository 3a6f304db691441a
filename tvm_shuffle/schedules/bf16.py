"""bf16 1x1 convolutions: weights stored in bf16, inputs rounded to bf16 once per tile, sums in fp32.

The compute (:func:`pointwise_conv2d`) states the numerics exactly: every
input and weight is a bf16 value, every product and sum is fp32, and the
epilogue (bias, ReLU) and the output stay fp32. It flattens the pixels and
pads them to whole vectors of ``LANES`` (a 7x7 plane computes 64 pixels,
14x14 computes 208), and it stores the input as ``[K / 2, pixels, 2]``:
the two input channels of a pair side by side, which is the operand layout
of a bf16 dot-product instruction.

Stages of the kernel, in order (block names):

* ``bf16_gather`` (when the input is gathered from several tensors, or
  needs no padding): the gathered channels, fp32, flat pixels;
* ``bf16_pad`` (only when the plane is no whole number of vectors): the
  same, zero-padded to whole vectors;
* ``bf16_pairs``: the bf16 input, channel pairs interleaved;
* ``conv2d_bf16``: the sums over the padded pixels;
* ``conv2d_bf16_crop``: the real pixels, in NCHW (the fused epilogue joins it).

:class:`PointwiseBF16` schedules it. With AVX512_BF16 (``avx512bf16`` in the
target's features) each step of the inner loop is one ``vdpbf16ps``: 16
pixels x 1 output channel x 2 input channels, the weight pair an embedded
32-bit broadcast from weights packed at build time as ``[O / oc, K / 2, oc,
2]``; the input pairs are converted once per pixel tile with
``vcvtneps2bf16`` and a word interleave. Both are tensor intrinsics whose
implementation calls a small LLVM IR function (:data:`LLVM_IR`, linked into
the kernel through ``pragma_import_llvm`` and inlined): TVM's bf16
legalization turns every bf16 vector expression of TIR into fp32, so the
intrinsics move the bf16 values as 32-bit integers and only the LLVM
function sees them as ``bfloat``. On aarch64 with ``+bf16``,
:mod:`.bf16_arm` schedules the same kernels with :func:`schedule_native`
and NEON steps of its own (``bfdot``). Without either the same compute runs
with fp32 FMAs, the bf16 values widened in registers (storage only).

Strategy of the native schedule: output channels in tiles of ``oc``, each
tile's ``oc x vectors`` sums in registers while the input pairs stream past
(as the fp32 schedule of :mod:`.cpu`). When the plane divides into whole
vectors, pixel tiles of a few vectors are outermost and shared among the
threads, each converting its own pixels. Otherwise (14x14, 7x7) the whole
padded plane is one tile, and the channel tiles are cut into one slice per
thread (:func:`thread_slices`): each slice converts the plane for itself
inside the same parallel loop, so a kernel wakes the thread pool once and
its bf16 input stays in the thread's own cache. Copies and the epilogue run
over flat pixels (a channel's plane is contiguous) in whole vectors, the
pixels past the last whole vector and the padding in loops of their own, so
no vector loop carries a bounds test.
"""

from __future__ import annotations

import dataclasses
import functools

from tvm_shuffle.schedules.analysis import child_blocks, iter_extents, largest_divisor
from tvm_shuffle.tvm_compat import Schedule, dlight, target_has_feature, te, tir

LANES = 16  # pixels per vector of fp32 sums (AVX-512)
CONV = "conv2d_bf16"
CROP = "conv2d_bf16_crop"
GATHER = "bf16_gather"
PAD = "bf16_pad"
PAIRS = "bf16_pairs"
# A block so annotated is a weight layout transform, which the build runs once on the constants
# (the same annotation as schedules.cpu.LAYOUT_REWRITE_PREPROC).
LAYOUT_REWRITE_PREPROC = "meta_schedule.layout_rewrite_preproc"

DOT_INTRIN = "tvm_shuffle_dpbf16ps_16x2"
BF16_FEATURE = "avx512bf16"  # the LLVM feature of vdpbf16ps
PAIRS_INTRIN = "tvm_shuffle_bf16_pairs_2x16"
DOT_FUNCTION = "tvm_shuffle_dpbf16ps"
PAIRS_FUNCTION = "tvm_shuffle_bf16_pairs"


def interleave_mask(lanes: int) -> str:
    """The ``shufflevector`` mask that interleaves two vectors of ``lanes`` elements (even, odd, even, ...)."""
    return ", ".join(f"i32 {i // 2 + (i % 2) * lanes}" for i in range(2 * lanes))


# The bf16 steps as LLVM IR: TIR cannot hold a bf16 vector past TVM's bf16 legalization, LLVM can.
LLVM_IR = f"""
define linkonce_odr <16 x float> @{DOT_FUNCTION}(<16 x float> %acc, <16 x i32> %pairs, i32 %weights) #0 {{
  %a = bitcast <16 x i32> %pairs to <32 x bfloat>
  %w1 = insertelement <16 x i32> poison, i32 %weights, i64 0
  %w16 = shufflevector <16 x i32> %w1, <16 x i32> poison, <16 x i32> zeroinitializer
  %b = bitcast <16 x i32> %w16 to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %a, <32 x bfloat> %b)
  ret <16 x float> %r
}}
define linkonce_odr <16 x i32> @{PAIRS_FUNCTION}(<16 x float> %even, <16 x float> %odd) #0 {{
  %e = fptrunc <16 x float> %even to <16 x bfloat>
  %o = fptrunc <16 x float> %odd to <16 x bfloat>
  %i = shufflevector <16 x bfloat> %e, <16 x bfloat> %o, <32 x i32> <{interleave_mask(16)}>
  %r = bitcast <32 x bfloat> %i to <16 x i32>
  ret <16 x i32> %r
}}
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
attributes #0 = {{ alwaysinline nounwind }}
"""


# ---------------------------------------------------------------------------
# Compute


def is_pointwise(weight_shape, strides, padding, dilation, groups: int) -> bool:
    """Whether a conv2d is one :func:`pointwise_conv2d` computes: 1x1, stride 1, no padding, dense, even input channels."""
    return (tuple(int(d) for d in weight_shape[2:]) == (1, 1) and groups == 1 and int(weight_shape[1]) % 2 == 0
            and all(int(s) == 1 for s in strides) and not any(int(p) for p in padding)
            and all(int(d) == 1 for d in dilation))


def flat_input(sources, gather, channels: int, *, gather_name: str, pad_name: str):
    """The gathered NCHW input as ``read(n, c, p)`` over flat pixels padded to whole vectors, with the stages it needs.

    Returns ``(read, padded pixels)``. Several tensors get a gather stage
    (``gather_name``: the choice between them once per input element, not
    once per output channel); one tensor gets a flat copy when the plane is
    whole vectors, whose rows of :data:`LANES` pixels the conversion reads
    whole; a plane that is not gets a zero-padded stage (``pad_name``).
    """
    batch, _, height, width = (int(d) for d in sources[0].shape)
    pixels = height * width
    padded = -(-pixels // LANES) * LANES

    def read(n, c, p):
        return gather.read(sources, n, c, p // i64(width), p % i64(width))

    if len(sources) > 1 or padded == pixels:
        gathered = te.compute(shape64(batch, channels, pixels), lambda n, c, p: read(n, c, p), name=gather_name)
        read = lambda n, c, p: gathered[n, c, p]  # noqa: E731
    if padded > pixels:
        real = read
        flat = te.compute(shape64(batch, channels, padded),
                          lambda n, c, p: tir.if_then_else(p < i64(pixels), real(n, c, p), tir.const(0, "float32")),
                          name=pad_name)
        read = lambda n, c, p: flat[n, c, p]  # noqa: E731
    return read, padded


def pointwise_conv2d(*tensors: te.Tensor, gather, out_dtype: str = "float32") -> te.Tensor:
    """1x1 NCHW conv2d of the gathered input (see :mod:`.kernels`) with bf16 weights ``tensors[-1]``.

    Inputs are rounded to bf16 (round to nearest even), products and sums
    are fp32; the result has the input's dtype-independent NCHW shape.
    """
    *sources, weight = tensors
    batch, _, height, width = (int(d) for d in sources[0].shape)
    out_channels, channels = (int(d) for d in weight.shape[:2])
    read, padded = flat_input(sources, gather, channels, gather_name=GATHER, pad_name=PAD)
    pairs = te.compute(shape64(batch, channels // 2, padded, 2),
                       lambda n, k, p, j: read(n, k * i64(2) + j, p).astype("bfloat16"), name=PAIRS)
    k = te.reduce_axis((i64(0), i64(channels // 2)), "rk")
    j = te.reduce_axis((i64(0), i64(2)), "rj")
    zero = i64(0)
    conv = te.compute(shape64(batch, out_channels, padded),
                      lambda n, o, p: te.sum(pairs[n, k, p, j].astype(out_dtype)
                                             * weight[o, k * i64(2) + j, zero, zero].astype(out_dtype), axis=[k, j]),
                      name=CONV)
    return te.compute(shape64(batch, out_channels, height, width),
                      lambda n, o, h, w: conv[n, o, h * i64(width) + w], name=CROP)


def i64(value: int):
    """An int64 constant: the kernels index with int64, as TVM's TE does for these shapes."""
    return tir.IntImm("int64", value)


def shape64(*dims: int) -> tuple:
    return tuple(i64(d) for d in dims)


# ---------------------------------------------------------------------------
# Tensor intrinsics


@functools.lru_cache(maxsize=None)
def register_intrinsics() -> None:
    """Register the two tensor intrinsics with TVM (once per process)."""
    from tvm.s_tir import TensorIntrin

    TensorIntrin.register(DOT_INTRIN, *dot_step(LANES, DOT_FUNCTION), override=True)
    TensorIntrin.register(PAIRS_INTRIN, *pairs_step(LANES, PAIRS_FUNCTION), override=True)


def dot_step(lanes: int, function: str) -> tuple:
    """(description, implementation) of one dot-product step: ``lanes`` pixels x 2 input channels, one weight pair.

    The implementation passes the bf16 pairs and the weight pair as 32-bit
    words to the LLVM function ``function`` (``<lanes x float>(<lanes x
    float> sums, <lanes x i32> pairs, i32 weights)``), which sees them as bf16.
    """
    from tvm.script import tirx as T

    I64 = T.int64
    vector = f"float32x{lanes}"

    @T.prim_func(s_tir=True)
    def dot_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (I64(lanes), I64(2)), "bfloat16", offset_factor=2)
        B = T.match_buffer(b, (I64(2),), "bfloat16", offset_factor=2)
        C = T.match_buffer(c, (I64(lanes),), "float32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[I64(0):I64(lanes)], A[I64(0):I64(lanes), I64(0):I64(2)], B[I64(0):I64(2)])
            T.writes(C[I64(0):I64(lanes)])
            for i, k in T.grid(I64(lanes), I64(2)):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast("float32", A[vi, vk]) * T.Cast("float32", B[vk])

    @T.prim_func(s_tir=True)
    def dot_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (I64(lanes), I64(2)), "bfloat16", offset_factor=2)
        B = T.match_buffer(b, (I64(2),), "bfloat16", offset_factor=2)
        C = T.match_buffer(c, (I64(lanes),), "float32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[I64(0):I64(lanes)], A[I64(0):I64(lanes), I64(0):I64(2)], B[I64(0):I64(2)])
            T.writes(C[I64(0):I64(lanes)])
            A32 = T.decl_buffer((lanes,), "int32", data=A.data, elem_offset=A.elem_offset // 2)
            B32 = T.decl_buffer((1,), "int32", data=B.data, elem_offset=B.elem_offset // 2)
            C[T.ramp(0, 1, lanes)] = T.call_extern(vector, function, C[T.ramp(0, 1, lanes)],
                                                   A32[T.ramp(0, 1, lanes)], B32[0])

    return dot_desc, dot_impl


def pairs_step(lanes: int, function: str) -> tuple:
    """(description, implementation) of one conversion step: ``lanes`` pixels of 2 fp32 channels to interleaved bf16.

    The LLVM function ``function`` (``<lanes x i32>(<lanes x float> even,
    <lanes x float> odd)``) rounds both to bf16 and interleaves them.
    """
    from tvm.script import tirx as T

    I64 = T.int64
    vector = f"int32x{lanes}"

    @T.prim_func(s_tir=True)
    def pairs_desc(a: T.handle, b: T.handle) -> None:
        s = T.int64()
        A = T.match_buffer(a, (I64(2), I64(lanes)), "float32", strides=[s, 1], offset_factor=1)
        B = T.match_buffer(b, (I64(lanes), I64(2)), "bfloat16", offset_factor=2)
        with T.sblock("root"):
            T.reads(A[I64(0):I64(2), I64(0):I64(lanes)])
            T.writes(B[I64(0):I64(lanes), I64(0):I64(2)])
            for i, j in T.grid(I64(lanes), I64(2)):
                with T.sblock("convert"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    B[vi, vj] = T.Cast("bfloat16", A[vj, vi])

    @T.prim_func(s_tir=True)
    def pairs_impl(a: T.handle, b: T.handle) -> None:
        s = T.int64()
        A = T.match_buffer(a, (I64(2), I64(lanes)), "float32", strides=[s, 1], offset_factor=1)
        B = T.match_buffer(b, (I64(lanes), I64(2)), "bfloat16", offset_factor=2)
        with T.sblock("root"):
            T.reads(A[I64(0):I64(2), I64(0):I64(lanes)])
            T.writes(B[I64(0):I64(lanes), I64(0):I64(2)])
            B32 = T.decl_buffer((lanes,), "int32", data=B.data, elem_offset=B.elem_offset // 2)
            B32[T.ramp(0, 1, lanes)] = T.call_extern(vector, function, A[0, T.ramp(0, 1, lanes)],
                                                     A[1, T.ramp(0, 1, lanes)])

    return pairs_desc, pairs_impl


# ---------------------------------------------------------------------------
# Schedule


@dataclasses.dataclass(frozen=True)
class Tiles:
    """Tile sizes of the bf16 1x1 schedule (AVX-512: 32 vector registers)."""

    accumulators: int = 30  # registers of sums (output channels x pixel vectors); the input vector and spare take 2
    tile_vectors: int = 4  # pixel vectors per input tile (converted once, read by every channel tile)
    unroll_limit: int = 64


TILES = Tiles()
# Iterations below this run on one thread: waking the pool costs more.
MIN_PARALLEL_WORK = 4096
# Threads a target without ``num-cores`` is planned for (the presets leave threads to TVM_NUM_THREADS).
THREAD_SLICES = 2


def thread_slices(target) -> int:
    """Threads the schedules plan for: the target's ``num-cores`` when it has one, else :data:`THREAD_SLICES`."""
    cores = target.attrs.get("num-cores") if target.attrs is not None else None
    return int(cores) if cores else THREAD_SLICES


def has_native_bf16(target) -> bool:
    """Whether the LLVM target computes bf16 dot products (AVX512_BF16)."""
    return target_has_feature(target, BF16_FEATURE)


class PointwiseBF16(dlight.ScheduleRule):
    """The kernels of :func:`pointwise_conv2d` (a block named ``conv2d_bf16``), with their fused epilogue."""

    def __init__(self, tiles: Tiles = TILES):
        self.tiles = tiles

    def apply(self, func, target, tunable):  # noqa: ARG002 - one schedule, nothing tunable
        if target.kind.name != "llvm" or not isinstance(func, tir.PrimFunc):
            return None
        sch = Schedule(func)
        found = find_blocks(sch)
        if found is None:
            return None
        slices = thread_slices(target)
        if has_native_bf16(target):
            register_intrinsics()
            schedule_native(sch, found, self.tiles, slices, lanes=LANES, dot_intrin=DOT_INTRIN,
                            pairs_intrin=PAIRS_INTRIN, llvm_ir=LLVM_IR)
        else:
            _schedule_storage_only(sch, found, self.tiles, slices)
        return sch


@dataclasses.dataclass
class _Blocks:
    gather: object
    pad: object
    pairs: object
    conv: object
    crop: object
    epilogue: list


def find_blocks(sch: Schedule) -> _Blocks | None:
    """The stages of a :func:`pointwise_conv2d` kernel by name, or None when ``sch`` is another kernel."""
    blocks = list(child_blocks(sch))
    names = [sch.get(b).name_hint for b in blocks]
    if CONV not in names or PAIRS not in names or CROP not in names:
        return None
    position = {name: i for i, name in enumerate(names)}
    crop_at = position[CROP]
    if not position[PAIRS] < position[CONV] < crop_at:
        return None
    prologue = {GATHER, PAD, PAIRS}
    if any(name not in prologue for name in names[:position[CONV]]):
        return None
    return _Blocks(gather=blocks[position[GATHER]] if GATHER in position else None,
                   pad=blocks[position[PAD]] if PAD in position else None,
                   pairs=blocks[position[PAIRS]], conv=blocks[position[CONV]], crop=blocks[crop_at],
                   epilogue=blocks[crop_at + 1:])


def fold_epilogue(sch: Schedule, crop, epilogue: list):
    """The crop with the elementwise chain after it folded in, iterating flat pixels (n, o, h * W + w)."""
    for block in reversed(epilogue):
        sch.reverse_compute_inline(block)
    width = iter_extents(sch, crop)[3]
    sch.transform_block_layout(crop, lambda n, o, h, w: (n, o, h * width + w))
    return crop


def plan(sch: Schedule, conv, crop, tiles: Tiles) -> tuple[int, int, int, int]:
    """(out channels, padded pixels, real pixels, pixels per input tile) of a flat-pixel 1x1 kernel."""
    _, out_channels, padded = iter_extents(sch, conv)[:3]
    pixels = iter_extents(sch, crop)[2]
    if padded == pixels:
        vectors = padded // LANES
        tile = LANES * max(t for t in range(1, tiles.tile_vectors + 1) if vectors % t == 0)
    else:
        tile = padded  # one tile: the epilogue then reads whole rows of real pixels
    return out_channels, padded, pixels, tile


def schedule_native(sch: Schedule, found: _Blocks, tiles: Tiles, slices: int, *, lanes: int, dot_intrin: str,
                    pairs_intrin: str, llvm_ir: str) -> None:
    """The kernel with an ISA's bf16 steps: dot products and conversions of ``lanes`` pixels (intrinsics registered).

    ``llvm_ir`` defines the LLVM functions the intrinsics call; the kernel
    imports it (``pragma_import_llvm``) and LLVM inlines them.
    """
    outer = schedule_tiles(sch, found, tiles, lanes=lanes, dot_intrin=dot_intrin, thread_slices=slices)
    convert_pairs(sch, found.pairs, lanes, pairs_intrin)
    sch.annotate(outer, "pragma_import_llvm", llvm_ir)


def _schedule_storage_only(sch: Schedule, found: _Blocks, tiles: Tiles, slices: int) -> None:
    """fp32 FMAs on bf16 values widened in registers: the input stored [K / 2, 2, pixels], weights packed."""
    sch.transform_layout(found.pairs, ("write", 0), lambda n, k, p, j: (n, k, j, p))
    sch.transform_block_layout(found.pairs, lambda n, k, p, j: (n, k, j, p))
    schedule_tiles(sch, found, Tiles(accumulators=8, tile_vectors=tiles.tile_vectors), lanes=8, dot_intrin=None,
                   thread_slices=slices)
    *_, last = sch.get_loops(found.pairs)
    vectorize_divisor(sch, last)


def schedule_tiles(sch: Schedule, found: _Blocks, tiles: Tiles, *, lanes: int, dot_intrin: str | None,
                   thread_slices: int):
    """Sums of ``channels x vectors`` in registers per pixel chunk; the stages per tile or per plane; the epilogue per channel tile.

    ``dot_intrin`` is the tensor intrinsic of one step (``lanes`` pixels x 1
    output channel x 2 input channels: a bf16 dot product), or None for fp32
    FMAs one input channel a step. Returns the outermost (parallel) loop.
    """
    native = dot_intrin is not None
    crop = fold_epilogue(sch, found.crop, found.epilogue)
    out_channels, padded, pixels, tile = plan(sch, found.conv, crop, tiles)
    oc, vectors = register_tile(out_channels, tile // lanes, tiles.accumulators)
    conv = found.conv
    n, p_out, o_out, k, lane = tile_sums(sch, conv, crop, padded=padded, tile=tile, oc=oc, vectors=vectors,
                                         lanes=lanes, native=native)
    _vectorize_flat(sch, sch.get_loops(crop)[-1])
    _pack_weights(sch, conv, oc, pairs=native)  # before tensorize: the intrinsic reads a weight pair as one word
    if not native:
        sch.vectorize(lane)
    if padded // tile > 1:
        outer = sch.fuse(n, p_out)
    else:
        slices = largest_divisor(out_channels // oc, thread_slices)
        o_slice, o_out = sch.split(o_out, [slices, None])
        outer = sch.fuse(n, p_out, o_slice)
    _stages_at(sch, found, outer, pixels)
    _parallel(sch, outer, padded * out_channels)
    # Last: compute_at needs the reduction whole, and a tensorized block as its consumer.
    sch.decompose_reduction(conv, k)
    if native:
        sch.tensorize(lane, dot_intrin)
    return outer


def tile_sums(sch: Schedule, conv, crop, *, padded: int, tile: int, oc: int, vectors: int, lanes: int,
              native: bool) -> tuple:
    """``oc x vectors`` sums in registers per chunk of a pixel tile, written back per chunk, cropped per channel tile.

    The conv's loops (n, o, p, k, j) become n, pixel tiles, channel tiles,
    chunks, k, then (native dot products) channels, vectors, lanes, j or
    (one input channel a step) j, channels, vectors, lanes; returns
    (n, pixel tiles, channel tiles, k, lanes). ``crop`` None: the caller
    places the crop.
    """
    writeback = sch.cache_write(conv, 0, "local")
    n, o, p, k, j = sch.get_loops(conv)
    p_out, chunk, vector, lane = sch.split(p, [padded // tile, tile // (lanes * vectors), vectors, lanes])
    o_out, o_in = sch.split(o, [None, oc])
    if native:
        sch.reorder(n, p_out, o_out, chunk, k, o_in, vector, lane, j)
    else:
        sch.reorder(n, p_out, o_out, chunk, k, j, o_in, vector, lane)
    sch.reverse_compute_at(writeback, chunk)
    if crop is not None:
        sch.reverse_compute_at(crop, o_out)
    vectorize_divisor(sch, sch.get_loops(writeback)[-1])
    sch.unroll(o_in)
    sch.unroll(vector)
    return n, p_out, o_out, k, lane


def register_tile(channels: int, vectors: int, accumulators: int) -> tuple[int, int]:
    """(output channels, pixel vectors) of a tile of sums: divisors of both, as many sums as fit, more channels first.

    The channels divide the output channels because a tensorized step cannot
    carry the bounds test of a partial tile (ShuffleNet's 58, 116, 232 and
    464 channels take tiles of 29).
    """
    pairs = [(c, v) for c in range(1, min(channels, accumulators) + 1) if channels % c == 0
             for v in range(1, min(vectors, accumulators) + 1) if vectors % v == 0 and c * v <= accumulators]
    return max(pairs, key=lambda cv: (cv[0] * cv[1], cv[0]))


def _stages_at(sch: Schedule, found: _Blocks, loop, pixels: int) -> None:
    """The input stages computed inside ``loop`` (per pixel tile, or per slice of output channels)."""
    for block in (found.pairs, found.pad, found.gather):
        if block is not None:
            sch.compute_at(block, loop)
    _vectorize_stages(sch, found, pixels)


def _vectorize_stages(sch: Schedule, found: _Blocks, pixels: int) -> None:
    if found.gather is not None:
        _vectorize_flat(sch, sch.get_loops(found.gather)[-1])
    if found.pad is not None:
        _vectorize_flat(sch, sch.get_loops(found.pad)[-1], real=pixels)


def _vectorize_flat(sch: Schedule, loop, real: int | None = None) -> None:
    """Vectorize a loop over flat pixels by whole vectors of ``LANES``.

    The pixels after the last whole vector, and the padding after the
    ``real`` pixels of a padded plane, run as loops of their own, so the
    bounds test of the padding folds away in each piece and no piece
    assembles a vector from row-sized parts (a 14-pixel row is no whole
    vector, and its rows are contiguous in memory anyway).
    """
    extent = int(sch.get(loop).extent)
    end = extent if real is None else real
    bounds = sorted({b for b in (end // LANES * LANES, end) if 0 < b < extent})
    if not bounds:
        vectorize_divisor(sch, loop)
        return
    sizes = [b - a for a, b in zip([0, *bounds], bounds)]
    first, *rest = sch.loop_partition(loop, [*sizes, None])
    vectorize_divisor(sch, first)
    for part in rest:  # each less than a vector, starting past zero (split needs a zero start)
        sch.vectorize(part)


def convert_pairs(sch: Schedule, pairs, lanes: int, intrin: str) -> None:
    """The bf16 input written ``lanes`` pixels x 2 channels at a time by the conversion intrinsic ``intrin``."""
    *_, p, j = sch.get_loops(pairs)
    _, lane = sch.split(p, [None, lanes])
    sch.tensorize(lane, intrin)


def vectorize_divisor(sch: Schedule, loop) -> None:
    extent = int(sch.get(loop).extent)
    lanes = next(t for t in (LANES, 8, 14, 7, 4, 2, 1) if extent % t == 0)
    if lanes > 1:
        sch.vectorize(sch.split(loop, [None, lanes])[1] if lanes < extent else loop)


def _pack_weights(sch: Schedule, conv, oc: int, *, pairs: bool) -> None:
    """bf16 weights stored the way the tiles read them, ``[O / oc, K / 2, oc, 2]`` (a build-time copy, see cpu._pack_weights)."""
    params = list(sch.mod["main"].params)
    for index, read in enumerate(sch.get(conv).reads):
        buffer = read.source
        if len(buffer.shape) == 4 and str(buffer.dtype) == "bfloat16" \
                and any(param.same_as(buffer) for param in params):
            break
    else:
        return
    packed = sch.cache_read(conv, index, "global")
    if pairs:
        layout = lambda o, k, h, w: (o // oc, k // 2, o % oc, k % 2)  # noqa: E731
    else:
        layout = lambda o, k, h, w: (o // oc, k, o % oc)  # noqa: E731 - one weight per step
    sch.transform_layout(packed, ("write", 0), layout, assume_injective_transform=True)
    sch.annotate(packed, LAYOUT_REWRITE_PREPROC, True)



def _parallel(sch: Schedule, loop, work: int) -> None:
    if work >= MIN_PARALLEL_WORK:
        sch.parallel(loop)
    sch.annotate(loop, "pragma_auto_unroll_max_step", TILES.unroll_limit)
    sch.annotate(loop, "pragma_unroll_explicit", 1)


