"""What kind of kernel is this? Analysis shared by the CPU and GPU rules.

Detection only reads a function (dlight's rules work the same way): a rule
asks :func:`conv_shape` whether a PrimFunc is one NCHW convolution, and of
which kind, before it transforms anything.
"""

from __future__ import annotations

from typing import NamedTuple

from tvm_shuffle.tvm_compat import Schedule, arith, tir


class ConvShape(NamedTuple):
    """One NCHW convolution found by :func:`conv_shape`: its blocks and its kind."""

    conv: object  # the reduction block
    producers: list  # spatial blocks before it (padding, gathers, copies)
    epilogue: list  # elementwise blocks after it (bias add, ReLU, a crop)
    kind: str  # "pointwise", "depthwise" or "windowed"


def child_blocks(sch: Schedule):
    root = sch.get_sblock("root")
    return sch.get_child_blocks(root)


def is_reduction(sch: Schedule, block) -> bool:
    return any(iv.iter_type == tir.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def iter_extents(sch: Schedule, block) -> list[int]:
    return [int(iv.dom.extent) for iv in sch.get(block).iter_vars]


def vars_in(expr) -> list:
    return list(tir.analysis.undefined_vars(expr))


def conv_shape(sch: Schedule) -> ConvShape | None:
    """The :class:`ConvShape` of ``sch``'s function, or None if it is not one NCHW convolution.

    ``kind`` is "pointwise" (1x1, stride 1: the pixels of an input plane are
    the pixels of the output), "depthwise" (each output channel reads one
    input channel) or "windowed" (anything else).
    """
    blocks = list(child_blocks(sch))
    reductions = [b for b in blocks if is_reduction(sch, b)]
    if len(reductions) != 1:
        return None
    conv = reductions[0]
    node = sch.get(conv)
    iters = node.iter_vars
    if len(iters) < 5 or any(iv.iter_type != tir.IterVar.DataPar for iv in iters[:4]) \
            or any(iv.iter_type != tir.IterVar.CommReduce for iv in iters[4:]):
        return None
    if len(node.writes) != 1 or len(node.writes[0].source.shape) != 4:
        return None
    position = blocks.index(conv)
    producers, epilogue = blocks[:position], blocks[position + 1:]
    if any(is_reduction(sch, b) for b in producers + epilogue):
        return None
    y, x = iters[2].var, iters[3].var
    analyzer = _unit_iters_bound(node)
    wide = [iv.var for iv in iters[4:] if int(iv.dom.extent) > 1]
    data_reads = []
    for read in node.reads:
        if len(read.source.shape) != 4:
            continue
        index = [analyzer.simplify(r.min) for r in read.region]
        if any(v.same_as(y) for v in vars_in(index[2])):
            data_reads.append(index)
    if not data_reads or len(data_reads) == sum(len(r.source.shape) == 4 for r in node.reads):
        return None  # no weight: a pooling, not a convolution
    pointwise = all(is_var(index[2], y) and is_var(index[3], x) for index in data_reads)
    depthwise = not pointwise and not any(v.same_as(w) for index in data_reads for v in vars_in(index[1])
                                          for w in wide)
    kind = "pointwise" if pointwise else "depthwise" if depthwise else "windowed"
    return ConvShape(conv, producers, epilogue, kind)


def _unit_iters_bound(block) -> "arith.Analyzer":
    """An analyzer that knows the block's reduction axes of extent 1 (a 1x1 kernel's ry, rx), which index nothing."""
    analyzer = arith.Analyzer()
    for iv in block.iter_vars:
        if iv.iter_type == tir.IterVar.CommReduce and int(iv.dom.extent) == 1:
            analyzer.bind(iv.var, iv.dom.min)
    return analyzer


def is_einsum(sch: Schedule, block) -> bool:
    """Whether every buffer ``block`` reads or writes is indexed by plain iterators and constants, once each.

    That is the form ``pad_einsum`` pads: a convolution that indexes its
    input channel through group or shuffle arithmetic (``(o // 8) * 8 + rc``)
    is not. Reduction axes of extent 1 count as their constant.
    """
    node = sch.get(block)
    analyzer = _unit_iters_bound(node)
    regions = [*node.reads, *node.writes]
    if len({r.source for r in regions}) != len(regions):
        return False
    for region in regions:
        for axis in region.region:
            if not (isinstance(axis.extent, tir.IntImm) and int(axis.extent) == 1):
                return False
            index = analyzer.simplify(axis.min)
            if not isinstance(index, (tir.Var, tir.IntImm)):
                return False
    return True


def is_var(expr, var) -> bool:
    return isinstance(expr, tir.Var) and expr.same_as(var)


def inline_epilogue(sch: Schedule, epilogue: list):
    """Fold the elementwise chain after the convolution into one block; that block, or None."""
    for block in reversed(epilogue[1:]):
        sch.reverse_compute_inline(block)
    return epilogue[0] if epilogue else None


def largest_divisor(extent: int, limit: int) -> int:
    """The largest divisor of ``extent`` up to ``limit`` (at least 1): a tile that leaves no partial tile."""
    return max(d for d in range(1, min(extent, max(limit, 1)) + 1) if extent % d == 0)


def power_of_two_divisor(extent: int, limit: int) -> int:
    """The largest power of two up to ``limit`` that divides ``extent`` (a vector width without a tail)."""
    width = 1
    while width * 2 <= limit and extent % (width * 2) == 0:
        width *= 2
    return width
