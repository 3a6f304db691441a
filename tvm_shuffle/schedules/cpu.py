"""Default CPU schedules (x86 AVX2/AVX-512, ARM NEON) for the kernels a ShuffleNet lowers to.

Rules in the style of ``tvm.s_tir.dlight``: each ``apply(func, target,
tunable)`` returns a schedule, or None when the function is not its kind.
Detection (what kind of kernel is this?) comes first and only reads the
function; the transformation follows and catches nothing, so a rule that
claims a kernel and then fails raises. Tile sizes come from
:mod:`.constants`; the measurements behind each choice are listed in
``benchmarks/results/schedule_choices.md``.

* :class:`Conv2dNCHW`: a convolution in NCHW (stock ``conv2d``, grouped,
  depthwise, or one of :mod:`.kernels`' gathered convolutions) with its
  fused epilogue (bias add, ReLU). A 1x1 convolution is a matrix product
  over flattened pixels: a few output channels times up to
  ``vectors_per_tile`` vectors of pixels accumulate in registers while the
  input channels stream past; a gathered input is assembled one pixel tile
  at a time, and a plane that no whole vector divides (7x7) is padded to
  whole vectors. The weights are packed, once at build time, so that a
  tile's weights are one sequential stream. Depthwise and other
  convolutions vectorize along the output row; a depthwise one pads one
  channel plane at a time into a small buffer
  so the padding test leaves the vector loop, and a stride-2 one stores that
  plane's even and odd columns apart so its windows are contiguous. On NEON
  a padding that gathers several tensors is copied one loop per source
  tensor, so its copy holds one source's pointer, not all of them.
* :class:`Pool2d`: a windowed pooling (the stem's max-pool), one padded
  plane per channel, stride-2 columns stored apart like the depthwise conv.
* :class:`Dense`: the classifier's matrix product.
"""

from __future__ import annotations

import dataclasses

from tvm_shuffle.schedules.analysis import (ConvShape, child_blocks, conv_shape, inline_epilogue, is_einsum,
                                            is_reduction, iter_extents, largest_divisor, power_of_two_divisor)
from tvm_shuffle.schedules.constants import CPUConstants, cpu_constants
from tvm_shuffle.tvm_compat import Schedule, arith, dlight, tir, tvm

# Iterations below this run on one thread: waking the pool costs more.
MIN_PARALLEL_WORK = 4096
# A depthwise convolution's channels are shared out in this many runs of planes (see _windowed).
DEPTHWISE_CHUNKS = 8
# Blocks of weight rows the classifier's reduction is cut into: one per thread up to 4.
DENSE_SLICES = 4
# A block marked so is a weight layout transform, which the build runs once on the constant weights.
LAYOUT_REWRITE_PREPROC = "meta_schedule.layout_rewrite_preproc"


def _is_cpu(target) -> bool:
    return target.kind.name == "llvm"


class Conv2dNCHW(dlight.ScheduleRule):
    """Register-tiled, vectorized, parallel schedule for NCHW convolutions.

    Applies to a function that :func:`.analysis.conv_shape` finds to be one
    convolution, except a depthwise one with one output pixel per plane.

    Schedule strategy:
      1. Inline the producers, except the padding stages and the gathers of
         several tensors; fold the epilogue into one block.
      2. 1x1 (``pointwise``): iterate by flat pixel; tile output channels x
         pixel vectors in registers, pixel tiles outermost and shared out
         among the threads; pad a plane that no whole vector divides; pack
         the weights at build time.
      3. Others: vectorize along the output row; a depthwise convolution
         pads one channel plane at a time, in ``DEPTHWISE_CHUNKS`` parallel
         runs of channels that each allocate the plane once (with
         ``depthwise_vectors``: all planes first, then pieces of rows,
         :func:`_row_pieces`), and a stride-2 one stores the padded plane's
         even and odd columns apart.
    """

    def apply(self, func, target, tunable):  # noqa: ARG002 - one schedule, nothing tunable
        if not _is_cpu(target) or not isinstance(func, tir.PrimFunc):
            return None
        sch = Schedule(func)
        shape = conv_shape(sch)
        if shape is None or _one_pixel_per_plane(sch, shape):
            return None
        _schedule_conv(sch, shape, cpu_constants(target))
        return sch


def tile_alternatives(func, target) -> list:
    """``func`` scheduled with each of the ISA's other tiles of a padded plane (``CPUConstants.padded_tiles``).

    Which of them runs fastest depends on the core (:mod:`.constants`), so
    tuning measures them beside the default. Empty for a kernel without a
    padded plane. An alternative may equal the default (a tile clipped to
    few channels): the caller keeps the distinct ones.
    """
    if not _is_cpu(target) or not isinstance(func, tir.PrimFunc):
        return []
    shape = conv_shape(Schedule(func))
    if shape is None or shape.kind != "pointwise":
        return []
    const = cpu_constants(target)
    found = []
    for tile in const.padded_tiles[1:]:
        sch = Schedule(func)
        if not _schedule_conv(sch, conv_shape(sch), dataclasses.replace(const, padded_tiles=(tile,))):
            return []  # the plane is not padded, so no tile of a padded plane applies
        found.append(sch)
    return found


def _one_pixel_per_plane(sch: Schedule, shape: ConvShape) -> bool:
    """A depthwise convolution whose epilogue writes one pixel per channel (a 1x1 plane).

    Its schedule vectorizes each channel's row of output and computes the
    epilogue per channel; with one pixel per channel there is no row, and
    the epilogue no loop of its own. Such a kernel (the last stage of a
    network fed 32x32 images) is left to the next rule.
    """
    if shape.kind != "depthwise" or not shape.epilogue:
        return False
    out = [int(d) for d in sch.get(shape.epilogue[-1]).writes[0].source.shape]
    return len(out) == 4 and out[2] * out[3] == 1


def _schedule_conv(sch: Schedule, shape: ConvShape, const: CPUConstants) -> bool:
    """Schedule the convolution ``shape`` of ``sch``; whether its pixel plane was padded to whole vectors."""
    conv, producers, epilogue, kind = shape
    gathers = [b for b in producers if kind == "pointwise" and len(sch.get(b).reads) > 1]
    pads = _inline_producers(sch, conv, producers, keep=gathers)
    epilogue = inline_epilogue(sch, epilogue)
    if kind == "pointwise":
        return _pointwise(sch, conv, epilogue, const, gathers)
    _windowed(sch, conv, epilogue, const, depthwise=kind == "depthwise", pads=pads)
    return False


def _writes_parameter(sch: Schedule, block) -> bool:
    written = sch.get(block).writes[0].source
    return any(param.same_as(written) for param in sch.mod["main"].params)


def _pads(sch: Schedule, block) -> bool:
    """A producer that writes a larger tensor than it reads: a padding stage worth keeping."""
    node = sch.get(block)
    out = [int(d) for d in node.writes[0].source.shape]
    return any([int(d) for d in r.source.shape] != out for r in node.reads)


def _inline_producers(sch: Schedule, consumer, producers: list, keep: list = ()) -> list:
    """Inline every producer but the padding stages and ``keep``; the padding stages, stride-2 ones de-interleaved."""
    pads = [b for b in producers if _pads(sch, b)]
    for block in producers:
        if block not in pads and block not in keep:
            sch.compute_inline(block)
    for pad in pads:
        if _x_stride(sch, consumer, pad) == 2:
            _deinterleave_columns(sch, pad)
    return pads


def _pointwise(sch: Schedule, conv, epilogue, const: CPUConstants, gathers: list) -> bool:
    """Schedule a 1x1 convolution; whether its plane was padded to whole vectors (:func:`_padded_pointwise`)."""
    extents = iter_extents(sch, conv)
    lanes = const.lanes()
    width = extents[3]
    pixels = extents[2] * width
    plane_read = None if gathers else _plane_read(sch, conv, extents)
    # Padding the plane runs pad_einsum, which needs the convolution in einsum
    # form (a grouped one is not) and an epilogue to drop the padded pixels.
    padded = (epilogue is not None and _pads_plane(pixels, lanes) and is_einsum(sch, conv)
              and (gathers or plane_read is not None))
    if padded and not gathers:
        # Padding the plane needs the input read as [n, c, pixel]: stage it
        # through a flat copy, which the padding absorbs.
        gathers = [sch.cache_read(conv, plane_read, "global")]

    # Iterate (and store partial sums) by flat pixel: the input planes are
    # contiguous, so a tile of pixels is one vector load whatever the rows.
    def flat(n, c, h, w):
        return n, c, h * width + w

    flat_iters = tir.IndexMap.from_func(lambda n, o, h, w, *reduce: (n, o, h * width + w, *reduce),
                                        ndim=len(extents))

    for gather in gathers:
        sch.transform_layout(gather, ("write", 0), flat)
        sch.transform_block_layout(gather, flat)
    if not _writes_parameter(sch, conv):  # the function's own output keeps its NCHW signature
        sch.transform_layout(conv, ("write", 0), flat)
    sch.transform_block_layout(conv, flat_iters)
    if epilogue is not None:
        sch.transform_block_layout(epilogue, flat)
    if padded:
        _padded_pointwise(sch, conv, epilogue, const, gathers)
        return True
    n, o, hw, *reduce = sch.get_loops(conv)
    pixel_tile = _pixel_tile(pixels, lanes, const.vectors_per_tile)
    hw_out, hw_in = sch.split(hw, [None, pixel_tile])
    # Output channels share each input vector. Unlike the pixels they need not
    # divide evenly: the last tile's test on its unrolled channels costs less
    # than the tiles of 2 or 4 channels that would divide ShuffleNet's
    # 58 = 2 x 29 and 116 = 4 x 29.
    vectors = -(-pixel_tile // lanes)
    pieces = None
    if pixel_tile < lanes:
        # A part-filled vector (a 14-pixel row): a tile takes up to
        # vectors_per_tile of them, each its own register, so every weight
        # broadcast feeds that many sums (2 rows x 8 channels rather than
        # 1 row x 16: the same 16 registers, twice the sums per broadcast).
        vectors = largest_divisor(pixels // pixel_tile, const.vectors_per_tile)
        if vectors > 1:
            hw_out, pieces = sch.split(hw_out, [None, vectors])
    budget = const.accumulators * (2 if pixel_tile < lanes else 1)  # part-filled registers: take more
    oc_tile = min(extents[1], budget // vectors)
    o_out, o_in = sch.split(o, [None, oc_tile])
    # Pixel tiles outermost, shared out among the threads: a tile's input
    # pixels (all input channels) stay in L1 while the output-channel tiles
    # pass. In a whole network that beats channel tiles outermost, which keep
    # a weight tile in L1 instead.
    sch.reorder(n, hw_out, o_out, *reduce, o_in, *([pieces] if pieces is not None else []), hw_in)
    if pieces is not None:
        sch.unroll(pieces)
    if gathers:
        # Gather a whole pixel tile once, for all output channels, into L1,
        # rather than one vector per input channel inside every channel
        # tile, which repeats the select over the sources per tile.
        outer = sch.fuse(n, hw_out)
        tile_loop = o_out
    else:
        outer = tile_loop = sch.fuse(n, hw_out, o_out)
    sch.unroll(o_in)
    sch.vectorize(hw_in)
    for gather in gathers:
        sch.compute_at(gather, outer)
        sch.vectorize(_split_inner(sch, sch.get_loops(gather)[-1], lanes))
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, tile_loop)
        sch.vectorize(_split_inner(sch, sch.get_loops(epilogue)[-1], lanes))
    _parallel(sch, outer, extents[1] * pixels, const)
    # Last: the init block must not stop vectorize/unroll above (they need a complete reduction block).
    sch.decompose_reduction(conv, reduce[0])
    _pack_weights(sch, conv, oc_tile)
    return False


def _pack_weights(sch: Schedule, conv, oc_tile: int) -> None:
    """Store a 1x1 convolution's weights the way its tiles read them: ``oc_tile`` output channels side by side.

    A tile reads ``W[o, k]`` for its ``oc_tile`` channels at every input
    channel ``k``: in OIHW that is ``oc_tile`` streams, each advancing 4 bytes
    per step, which the hardware prefetcher follows poorly once the weights
    are out of cache, as they are in a whole network (ShuffleNetV2 1.0x
    reads 9 MB of weights per inference, several times a core's L2). Packed
    as ``[O / oc_tile, K, 1, 1, oc_tile]`` (zero-padded), a tile's weights
    are one sequential stream. The packing is a layout-rewrite preprocessing
    block, which :func:`tvm_shuffle.build.build` splits out and folds into
    the constant weights (``build.weight_packing_passes``): it runs once, at
    build time. The block copies the real channels only: MetaSchedule's
    builder and feature extractor accept nothing but a plain copy there. The
    padding of a last, partial tile is never read (the tile skips those
    channels); the build's packing (``build.run_copies``) zeroes it.
    """
    out_channels = iter_extents(sch, conv)[1]
    params = list(sch.mod["main"].params)
    for index, read in enumerate(sch.get(conv).reads):
        buffer = read.source
        shape = [int(d) for d in buffer.shape]
        if len(shape) == 4 and shape[0] == out_channels and shape[2:] == [1, 1] \
                and any(param.same_as(buffer) for param in params):
            break
    else:
        return
    packed = sch.cache_read(conv, index, "global")
    sch.transform_layout(packed, ("write", 0), lambda o, k, h, w: (o // oc_tile, k, h, w, o % oc_tile),
                         assume_injective_transform=True)
    sch.annotate(packed, LAYOUT_REWRITE_PREPROC, True)


def _pads_plane(pixels: int, lanes: int) -> bool:
    """Whether a plane is better computed padded to whole vectors than in tiles that divide it.

    A 7x7 plane (49 pixels) divides into 7-pixel tiles: 7 of AVX-512's 16
    lanes, or 1 of NEON's 4. Padded to 64 it runs in full vectors; the 15
    padded pixels cost less than the 9 lanes idle in every tile. Padded when
    the best dividing tile leaves more than a quarter of a vector idle.
    """
    return pixels > lanes and 4 * _pixel_tile(pixels, lanes, 1) < 3 * lanes


def _plane_read(sch: Schedule, conv, extents: list[int]) -> int | None:
    """Index of the convolution's data read (the one whose planes have the output's shape), if there is one."""
    for index, read in enumerate(sch.get(conv).reads):
        if [int(d) for d in read.source.shape[2:]] == extents[2:4]:
            return index
    return None


def _padded_pointwise(sch: Schedule, conv, epilogue, const: CPUConstants, gathers: list) -> None:
    """A 1x1 convolution over flat pixels padded to whole vectors.

    The (gathered) input is copied once into planes padded with zeros, so
    every tile is full vectors without a bounds test; the padded partial sums
    are dropped by the epilogue, which reads only the real pixels.
    """
    lanes = const.lanes()
    iters = len(iter_extents(sch, conv))
    sch.pad_einsum(conv, [1, 1, lanes] + [1] * (iters - 3))
    (padding,) = sch.get_producers(conv)
    for gather in gathers:
        sch.compute_inline(gather)
    for unpad in sch.get_consumers(conv):
        sch.compute_inline(unpad)
    n, o, hw, *reduce = sch.get_loops(conv)
    channels, padded_pixels = iter_extents(sch, conv)[1:3]
    wanted_vectors, wanted_channels = const.padded_tiles[0] if const.padded_tiles else (1, const.accumulators)
    vectors = largest_divisor(padded_pixels // lanes, wanted_vectors)
    oc_tile = min(channels, wanted_vectors * wanted_channels // vectors)
    hw_out, hw_in = sch.split(hw, [None, lanes * vectors])
    o_out, o_in = sch.split(o, [None, oc_tile])
    sch.reorder(n, o_out, hw_out, *reduce, o_in, hw_in)
    outer = sch.fuse(n, o_out, hw_out)
    sch.unroll(o_in)
    vector, lane = sch.split(hw_in, [vectors, lanes])
    sch.unroll(vector)
    sch.vectorize(lane)
    batch, channel, pixel = sch.get_loops(padding)
    sch.vectorize(sch.split(pixel, [None, lanes])[1])
    if const.pad_per_source and _source_cuts(sch, padding):
        _planes_per_source(sch, padding, channel, const)
    else:
        sch.parallel(sch.fuse(batch, channel))
    sch.reverse_compute_at(epilogue, outer)
    _parallel(sch, outer, channels * padded_pixels, const)
    sch.decompose_reduction(conv, reduce[0])
    _pack_weights(sch, conv, oc_tile)


def _windowed(sch: Schedule, conv, epilogue, const: CPUConstants, *, depthwise: bool, pads: list) -> None:
    n, o, y, x, *reduce = sch.get_loops(conv)
    extents = iter_extents(sch, conv)
    lanes = const.lanes()
    width = extents[3]
    pieces = depthwise and const.depthwise_vectors > 0
    x_out, x_in = sch.split(x, [None, _row_vector(width, lanes) if pieces else _pixel_tile(width, lanes, 1)])
    if pieces:
        outer = _row_pieces(sch, [n, o, y, x_out, *reduce, x_in], const)
    elif depthwise:
        sch.reorder(n, o, y, x_out, *reduce, x_in)
        # Runs of channels, not channels, are the parallel iterations: the
        # padded plane is allocated once per iteration of the parallel loop,
        # and a plane over 1 KB (14x14 and larger) is a call into the
        # runtime's workspace pool, not stack space.
        threaded, outer = sch.split(sch.fuse(n, o), [DEPTHWISE_CHUNKS, None])
    else:
        oc_tile = largest_divisor(extents[1], const.wide_tile or 2 * const.accumulators)
        o_out, o_in = sch.split(o, [None, oc_tile])
        sch.reorder(n, o_out, y, x_out, *reduce, o_in, x_in)
        # Threads share rows, not channel tiles: the stem has one tile of all
        # its 24 channels, and its epilogue then runs per row, while the sums are hot.
        outer = sch.fuse(n, o_out, y)
        sch.unroll(o_in)
    for loop in reduce[1:] if not depthwise else reduce:
        sch.unroll(loop)
    sch.vectorize(x_in)
    for pad in pads:
        if depthwise and not pieces:
            # One padded plane per output channel, while it is hot in cache.
            sch.compute_at(pad, outer)
            _vectorize_padding(sch, pad, lanes, first_loop=2)
        elif const.pad_per_source and _columns_apart(sch, pad) and _source_cuts(sch, pad):
            _planes_per_source(sch, pad, sch.get_loops(pad)[1], const)
        else:
            _vectorize_padding(sch, pad, lanes, first_loop=0)
            sch.parallel(sch.fuse(*sch.get_loops(pad)[:3]))
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, _epilogue_loop(sch, outer, y, x_out, depthwise=depthwise, pieces=pieces))
        sch.vectorize(_split_inner(sch, sch.get_loops(epilogue)[-1], lanes))
    _parallel(sch, threaded if depthwise and not pieces else outer, extents[1] * extents[2] * width, const)
    sch.decompose_reduction(conv, reduce[0])


def _epilogue_loop(sch: Schedule, outer, y, x_out, *, depthwise: bool, pieces: bool):
    """Where a windowed convolution's epilogue (crop, bias, ReLU) runs: per row, per channel or per vector.

    A depthwise row of one vector (14 or 7 columns, or 16 and 8 computed for
    them, :func:`tvm_shuffle.passes.pad_depthwise_rows`) is finished per row:
    its sums are still in a register when the epilogue adds the bias and
    stores the real columns, and the sums need a buffer of one row, not of
    the whole plane. Wider rows (28 columns, computed as 32) keep the
    epilogue per channel, after the plane: per row it is slower there.
    In pieces (``depthwise_vectors``), the epilogue runs per channel.
    """
    if not depthwise:
        return x_out
    if not pieces and int(sch.get(x_out).extent) == 1:
        return y
    return outer


def _row_pieces(sch: Schedule, loops: list, const: CPUConstants):
    """Depthwise rows in pieces of at most ``const.depthwise_vectors`` vectors, each piece a parallel iteration.

    ``loops`` are the conv's (n, o, y, vectors of the row, taps..., lanes).
    Each piece's weights feed all its vectors tap by tap. The parallel loop
    over (channel, row, piece) has runtime bounds, so LLVM cannot unroll a
    small plane's rows into one block whose sums and loads exceed the
    register file, and the padding runs before it, for all channels (its row
    fills call ``memset``, which would pin the loop's pointers to the stack).
    A row of a prime number of vectors (7, 28 columns unpadded) is one piece
    when it fits the accumulators.
    """
    n, o, y, x_out, *reduce, x_in = loops
    vectors = int(sch.get(x_out).extent)
    piece = largest_divisor(vectors, const.depthwise_vectors)
    if piece == 1 and vectors <= const.accumulators:
        piece = vectors
    x_piece, x_vector = sch.split(x_out, [None, piece])
    sch.reorder(n, o, y, x_piece, *reduce, x_vector, x_in)
    sch.unroll(x_vector)
    return sch.fuse(n, o, y, x_piece)


def _row_vector(width: int, lanes: int) -> int:
    """Columns per vector of a row in pieces: as :func:`_pixel_tile`, but a row between one and two vectors
    wide is one vector of its own width (7 columns on NEON: two registers), not lanes one by one."""
    if lanes < width < 2 * lanes and width % lanes:
        return width
    return _pixel_tile(width, lanes, 1)


def _x_stride(sch: Schedule, conv, pad) -> int:
    """How far the convolution's input column moves per output column (its horizontal stride)."""
    node = sch.get(conv)
    padded = sch.get(pad).writes[0].source
    x = node.iter_vars[3].var
    for read in node.reads:
        if read.source.same_as(padded):
            index = read.region[3].min
            at = []
            for value in (0, 1):
                analyzer = arith.Analyzer()
                for iv in node.iter_vars:
                    analyzer.bind(iv.var, tir.const(value, "int64") if iv.var.same_as(x) else iv.dom.min)
                at.append(analyzer.simplify(index))
            if all(isinstance(v, tir.IntImm) for v in at):
                return int(at[1]) - int(at[0])
    return 1


def _deinterleave_columns(sch: Schedule, pad) -> None:
    """Store even and odd padded columns apart, so a stride-2 window reads contiguous vectors."""
    width = int(sch.get(pad).writes[0].source.shape[3])
    if width % 2:
        return
    def split_columns(n, c, h, w):
        return n, c, h, w % 2, w // 2

    sch.transform_layout(pad, ("write", 0), split_columns)
    sch.transform_block_layout(pad, split_columns)


def _split_inner(sch: Schedule, loop, lanes: int):
    """The innermost vector-sized piece of ``loop`` (a divisor of its extent, so no predicate)."""
    extent = int(sch.get(loop).extent)
    tile = _pixel_tile(extent, lanes, 1)
    if tile == extent:
        return loop
    return sch.split(loop, [None, tile])[-1]


def _vectorize_padding(sch: Schedule, pad, lanes: int, *, first_loop: int) -> None:
    """Zero-fill the border, then copy the interior with vector loads (no bounds test per element).

    ``decompose_padding`` needs the interior to be a box of the block's
    iterators; a padding stored with its even and odd columns apart (stride
    2, :func:`_deinterleave_columns`) is not one, and keeps its per-element test.
    """
    if _columns_apart(sch, pad):
        return
    sch.decompose_padding(pad, sch.get_loops(pad)[first_loop])
    sch.vectorize(_split_inner(sch, sch.get_loops(pad)[-1], lanes))


def _source_cuts(sch: Schedule, block) -> list[int]:
    """The channels at which a gather stage (:class:`.kernels.Segments`) moves on to its next source, in order.

    A gather picks its source by a chain of ``channel < cut`` tests on the
    block's channel iterator (its second); a stage reading one tensor has none.
    """
    node = sch.get(block)
    if len({r.source for r in node.reads}) < 2:
        return []
    channel = node.iter_vars[1].var
    extent = int(node.iter_vars[1].dom.extent)
    cuts: set[int] = set()

    def visit(expr) -> None:
        if isinstance(expr, tir.LT) and expr.a.same_as(channel) and isinstance(expr.b, tir.IntImm):
            cuts.add(int(expr.b.value))
        for field in ("a", "b", "condition", "true_value", "false_value", "value"):
            child = getattr(expr, field, None)
            if isinstance(child, tvm.ir.expr.Expr):
                visit(child)
        if isinstance(expr, tvm.ir.Call):
            for arg in expr.args:
                visit(arg)

    visit(node.body.value if isinstance(node.body, tir.BufferStore) else node.body)
    return sorted(c for c in cuts if 0 < c < extent)


def _planes_per_source(sch: Schedule, pad, channel, const: CPUConstants) -> None:
    """A padding stage that gathers several tensors: one loop over its planes per source tensor.

    The gather picks its source by a chain of tests on the channel. In one
    loop over the planes (a stride-2 depthwise conv's, whose copy keeps a
    bounds test per element, :func:`_vectorize_padding`; a gathered 1x1
    conv's on a plane padded to whole vectors), every source's pointer and
    offsets stay live across each plane's copy: with up to 9 sources
    (ShuffleNetV2 1.0x's last stride-2 unit) that is more than the general
    registers, and LLVM reloads pointers from the stack inside the copy.
    The ``channel`` loop is partitioned at the sources' boundaries
    (:func:`_source_cuts`) instead: each partition reads one tensor, its
    tests fold away, and it is shared out among the threads when it is
    large enough. (Rows shared out, with all partitions inside, keep every
    partition's invariants live across the row loop and spill the same way.)
    """
    loops = sch.get_loops(pad)
    below = next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(channel))) + 1
    extent = int(sch.get(channel).extent)
    plane = _extent_product(sch, loops[below:])
    bounds = [0, *_source_cuts(sch, pad), extent]
    for loop in sch.loop_partition(channel, [b - a for a, b in zip(bounds, bounds[1:-1])] + [None]):
        _parallel(sch, loop, int(sch.get(loop).extent) * plane, const)


def _extent_product(sch: Schedule, loops: list) -> int:
    product = 1
    for loop in loops:
        product *= int(sch.get(loop).extent)
    return product


def _columns_apart(sch: Schedule, pad) -> bool:
    """Whether :func:`_deinterleave_columns` stored this padding as [n, c, h, column parity, column / 2]."""
    return len(sch.get(pad).writes[0].source.shape) == 5


def _pixel_tile(pixels: int, lanes: int, vectors: int) -> int:
    """Pixels per tile: whole vectors that divide the plane, else the longest row piece that fits one vector.

    A tile that does not divide the plane leaves a predicate in the vector
    loop, and a vector longer than a register but not a multiple of it (28,
    49) is split lane by lane: both make LLVM emit scalar code.
    """
    whole = [t for t in range(lanes, lanes * vectors + 1, lanes) if pixels % t == 0]
    if whole:
        return max(whole)
    return max(t for t in range(1, lanes + 1) if pixels % t == 0)


def _row_tile(width: int, lanes: int) -> int:
    """Columns per vector of a row: as :func:`_pixel_tile`, but a power of two (a smaller register) before a partial vector."""
    tile = _pixel_tile(width, lanes, 1)
    halves = [t for t in (lanes // 2, lanes // 4) if t > 1 and width % t == 0]
    return halves[0] if tile % lanes and halves else tile



def _parallel(sch: Schedule, loop, work: int, const: CPUConstants) -> None:
    if work >= MIN_PARALLEL_WORK:
        sch.parallel(loop)
    sch.annotate(loop, "pragma_auto_unroll_max_step", const.unroll_limit)
    sch.annotate(loop, "pragma_unroll_explicit", 1)


class Dense(dlight.ScheduleRule):
    """``x @ W`` with few rows (the classifier): each thread streams its own block of weight rows.

    Applies to a function whose first block is its only reduction, over
    ``[rows, columns, depth]``, followed by elementwise blocks over
    ``[rows, columns]`` (the bias add).

    The weights (4 MB in ShuffleNetV2's classifier) come from L3 or DRAM in
    a whole network, not from L2, so the schedule is about streaming them.

    Schedule strategy:
      1. Cut the reduction into ``DENSE_SLICES`` contiguous blocks of weight
         rows, one per thread (``rfactor``; summed at the end), so every
         thread reads its own rows whatever the column count: column chunks
         shared out among threads leave them unevenly loaded (5 chunks of
         1000 columns on 2 threads).
      2. Read each row in pieces of up to ``dense_vectors`` vectors of
         columns, which stay in registers while the rows stream past; a
         tile of one vector of columns would touch every row at a 4 KB stride.
      3. Sum the slices and apply the epilogue per vector of columns.
    """

    def apply(self, func, target, tunable):  # noqa: ARG002
        if not _is_cpu(target) or not isinstance(func, tir.PrimFunc):
            return None
        sch = Schedule(func)
        blocks = list(child_blocks(sch))
        reductions = [b for b in blocks if is_reduction(sch, b)]
        if len(reductions) != 1 or blocks[0] is not reductions[0]:
            return None
        dense = reductions[0]
        kinds = [iv.iter_type for iv in sch.get(dense).iter_vars]
        if kinds != [tir.IterVar.DataPar, tir.IterVar.DataPar, tir.IterVar.CommReduce]:
            return None
        rows, columns, depth = iter_extents(sch, dense)
        if not all(_elementwise_over(sch, block, [rows, columns]) for block in blocks[1:]):
            return None
        const = cpu_constants(target)
        epilogue = inline_epilogue(sch, blocks[1:])
        vector = power_of_two_divisor(columns, const.lanes())
        chunk = _even_chunk(columns // vector, const.dense_vectors)
        slices = largest_divisor(depth, DENSE_SLICES)
        k_slice, _ = sch.split(sch.get_loops(dense)[2], [slices, None])
        partial = sch.rfactor(k_slice, 0)
        i, j, k_slice, k = sch.get_loops(partial)
        j_out, j_mid, j_in = sch.split(j, [None, chunk, vector])
        sch.reorder(k_slice, i, j_out, k, j_mid, j_in)
        sch.unroll(j_mid)
        sch.vectorize(j_in)
        _parallel(sch, k_slice, columns * depth, const)
        sch.decompose_reduction(partial, k)
        i, j, k_slice = sch.get_loops(dense)
        j_out, j_in = sch.split(j, [None, vector])
        sch.reorder(i, j_out, k_slice, j_in)
        sch.vectorize(j_in)
        if epilogue is not None:
            sch.reverse_compute_at(epilogue, j_out)
        sch.decompose_reduction(dense, k_slice)
        return sch


def _elementwise_over(sch: Schedule, block, extents: list[int]) -> bool:
    """A block of spatial iterators over exactly ``extents`` that writes one buffer (a bias add, an activation)."""
    node = sch.get(block)
    return (len(node.writes) == 1 and all(iv.iter_type == tir.IterVar.DataPar for iv in node.iter_vars)
            and iter_extents(sch, block) == extents)


class Pool2d(dlight.ScheduleRule):
    """A windowed pooling in NCHW (the stem's 3x3 stride-2 max-pool): one padded plane per channel.

    Applies to a function whose last block has four spatial iterators and
    two reduced ones (the window) over one input, after spatial producers.
    As in the depthwise convolution, a stride-2 window reads even and odd
    padded columns stored apart, so each window row is one contiguous vector;
    the padding is computed per channel, while it is hot in cache.
    """

    def apply(self, func, target, tunable):  # noqa: ARG002
        if not _is_cpu(target) or not isinstance(func, tir.PrimFunc):
            return None
        sch = Schedule(func)
        blocks = list(child_blocks(sch))
        if not blocks or not _is_pool(sch, blocks[-1]) or any(is_reduction(sch, b) for b in blocks[:-1]):
            return None
        pool, producers = blocks[-1], blocks[:-1]
        pads = _inline_producers(sch, pool, producers)
        extents = iter_extents(sch, pool)
        const = cpu_constants(target)
        n, c, y, x, *window = sch.get_loops(pool)
        x_out, x_in = sch.split(x, [None, _row_tile(extents[3], const.lanes())])
        sch.reorder(n, c, y, x_out, *window, x_in)
        outer = sch.fuse(n, c)
        for loop in window:
            sch.unroll(loop)
        sch.vectorize(x_in)
        for pad in pads:
            sch.compute_at(pad, outer)
        _parallel(sch, outer, extents[1] * extents[2] * extents[3], const)
        sch.decompose_reduction(pool, window[0])
        return sch


def _is_pool(sch: Schedule, block) -> bool:
    """Four spatial iterators (NCHW) and two reduced ones (the window), reading no weights."""
    node = sch.get(block)
    kinds = [iv.iter_type for iv in node.iter_vars]
    return (kinds == [tir.IterVar.DataPar] * 4 + [tir.IterVar.CommReduce] * 2 and len(node.writes) == 1
            and all(len(r.source.shape) == 4 for r in node.reads)
            and len({r.source for r in node.reads} - {node.writes[0].source}) == 1)



def _even_chunk(vectors: int, limit: int) -> int:
    """Vectors per chunk: the fewest chunks of at most ``limit`` vectors, as even as they come (the last may be short)."""
    chunks = -(-vectors // limit)
    return -(-vectors // chunks)


def default_rules() -> tuple:
    """The CPU rules, most specific first.

    Copies and elementwise kernels get none: unscheduled, LLVM vectorizes
    their inner loop, and threads cost more than they save at these sizes.
    Average pools (ShuffleNet v1's 3x3 shortcut pools, the global pool
    before the classifier) get dlight's CPU reduction: one output per
    iteration, shared out among the threads (unscheduled, they run on one).
    """
    return (Conv2dNCHW(), Pool2d(), Dense(), dlight.cpu.Reduction())
