"""A ShuffleNet's stem, its 3x3 stride-2 convolution with bias and ReLU and the 3x3 stride-2 max-pool after it, as one CPU kernel.

Apart, the convolution writes all its planes (24 x 112 x 112 floats at
224 x 224: 1.2 MB, more than a core's L2) and the pool reads them back,
and both first copy their input into a padded plane whose stride-2
columns are stored apart, which LLVM does with gathers. Fused, each
iteration of the parallel loop computes the convolution rows that ``rows``
pooled rows need (``2 * rows + 1``: one row is computed twice, by two
neighbouring iterations) into a buffer that stays in cache, and pools them.

Layouts that keep every vector contiguous:

* The convolution computes output column ``x = 2 * j + p`` at ``[p, j]``
  (``p`` the column's parity), so the pool's three columns ``2j - 1, 2j,
  2j + 1`` are ``[1, j - 1], [0, j], [1, j]``: no stride-2 read.
* Its input column ``2 * x + kx - 1`` is then ``4 * j + 2 * p + kx - 1``:
  the padded input stores its columns four ways apart (``[m, q]`` holds
  column ``4 * q + m``), so each tap reads ``j`` contiguously. That copy
  reads a row four floats at a time, which LLVM vectorizes with wide loads
  and shuffles; the padding itself is a plain padded row before it, with
  four zero columns in front, so the interior is a box that
  ``decompose_padding`` copies with vector loads.
* Rows of ``j`` are computed rounded up to whole vectors (``width``
  columns): the convolution's vector loop has no predicate, and the pool
  writes the real columns.

The pool pads with zeros instead of minus infinity: its inputs come out of
the ReLU, so every window's maximum is at least 0 and at least one of its
elements is real. The convolution's row 0 is the padding row above the
image (computed, never pooled), which keeps every row index non-negative.
"""

from __future__ import annotations

from tvm_shuffle.schedules.analysis import largest_divisor, power_of_two_divisor
from tvm_shuffle.schedules.constants import cpu_constants
from tvm_shuffle.tvm_compat import Schedule, dlight, te, tir

STEM_PADDED = "stem_padded"
STEM_PAD = "stem_pad"
STEM_CONV = "stem_conv"
STEM_ACT = "stem_act"
STEM_POOL_WIDE = "stem_pool_wide"
STEM_POOL = "stem_pool"
# Output channels summed per pass of the taps: their sums stay in registers
# (12 x 16 floats is under the 1 KiB TVM allocates on the stack rather than the heap,
# where LLVM keeps the sums in memory), with room for the input and weight registers on AVX2.
ACCUMULATORS = 12
MAX_ROWS = 8  # pooled rows per iteration of the parallel loop, at most
# Conv attributes this kernel computes, and the max-pool's.
CONV = {"kernel": (3, 3), "strides": (2, 2), "padding": (1, 1, 1, 1), "dilation": (1, 1), "groups": 1}
POOL = {"pool_size": (3, 3), "strides": (2, 2), "padding": (1, 1, 1, 1), "dilation": (1, 1)}


def output_size(size: int) -> int:
    """Rows (or columns) after one 3x3 window with stride 2 and padding 1."""
    return (size - 1) // 2 + 1


def pooled_rows(pooled: int) -> int:
    """Pooled rows per parallel iteration: the most, up to :data:`MAX_ROWS`, that divide ``pooled`` into an even
    number of iterations (two threads share them evenly), else the most that divide it."""
    divisors = [r for r in range(1, min(pooled, MAX_ROWS) + 1) if pooled % r == 0]
    even = [r for r in divisors if (pooled // r) % 2 == 0]
    return max(even or divisors)


def conv_relu_maxpool(data: te.Tensor, weight: te.Tensor, bias: te.Tensor, *, lanes: int) -> te.Tensor:
    """``max_pool2d(relu(conv2d(data, weight) + bias), 3, 2, 1)`` of a 3x3 stride-2 convolution with padding 1 (NCHW, fp32)."""
    n, c, h, w = (int(s) for s in data.shape)
    o = int(weight.shape[0])
    oh, ow = output_size(h), output_size(w)
    ph, pw = output_size(oh), output_size(ow)
    width = -(-pw // lanes) * lanes  # columns of each parity computed per row
    zero = tir.const(0.0, data.dtype)
    # Padded row r holds input row r - 3 (convolution row y reads rows 2y .. 2y + 2, and its row 0 lies above
    # the image); padded column x holds input column x - 4.
    padded = te.compute(
        (n, c, 2 * oh + 3, 4 * (width + 1)),
        lambda b, i, r, x: tir.if_then_else(tir.all(r >= 3, r < h + 3, x >= 4, x < w + 4), data[b, i, r - 3, x - 4], zero),
        name=STEM_PADDED)
    apart = te.compute((n, c, 2 * oh + 3, 4, width + 1), lambda b, i, r, m, q: padded[b, i, r, 4 * q + m], name=STEM_PAD)
    rc, ky, kx = te.reduce_axis((0, c), "rc"), te.reduce_axis((0, 3), "ky"), te.reduce_axis((0, 3), "kx")
    # Column 2j + p reads padded column 4j + 2p + kx + 3.
    conv = te.compute(
        (n, o, oh + 1, 2, width),
        lambda b, k, y, p, j: te.sum(
            apart[b, rc, 2 * y + ky, (2 * p + kx + 3) % 4, j + (2 * p + kx + 3) // 4] * weight[k, rc, ky, kx],
            axis=[rc, ky, kx]),
        name=STEM_CONV)
    act = te.compute(conv.shape, lambda b, k, y, p, j: tir.max(conv[b, k, y, p, j] + bias[0, k, 0, 0], zero),
                     name=STEM_ACT)

    def row(b, k, y, j):
        odd = act[b, k, y, 1, j] if ow % 2 == 0 else tir.if_then_else(2 * j + 1 < ow, act[b, k, y, 1, j], zero)
        left = tir.if_then_else(j >= 1, act[b, k, y, 1, j - 1], zero)
        return tir.max(tir.max(act[b, k, y, 0, j], odd), left)

    def pool(b, k, i, j):
        top = tir.if_then_else(i >= 1, row(b, k, 2 * i, j), zero)
        bottom = row(b, k, 2 * i + 2, j) if oh % 2 == 0 else tir.if_then_else(2 * i + 2 <= oh, row(b, k, 2 * i + 2, j), zero)
        return tir.max(tir.max(row(b, k, 2 * i + 1, j), bottom), top)

    wide = te.compute((n, o, ph, width), pool, name=STEM_POOL_WIDE)
    return te.compute((n, o, ph, pw), lambda b, k, i, j: wide[b, k, i, j], name=STEM_POOL)


class StemPool(dlight.ScheduleRule):
    """Schedules :func:`conv_relu_maxpool` on a CPU: pooled rows in parallel chunks, each computing its convolution rows."""

    def apply(self, func, target, tunable):  # noqa: ARG002 - one schedule, nothing tunable
        if target.kind.name != "llvm" or not isinstance(func, tir.PrimFunc):
            return None
        sch = Schedule(func)
        names = {sch.get(block).name_hint for block in sch.get_child_blocks(sch.get_sblock("root"))}
        if STEM_POOL not in names or STEM_CONV not in names:
            return None
        _schedule(sch, cpu_constants(target).lanes())
        return sch


def _schedule(sch: Schedule, lanes: int) -> None:
    padded, apart, conv, act, wide, pool = (sch.get_sblock(name) for name in (
        STEM_PADDED, STEM_PAD, STEM_CONV, STEM_ACT, STEM_POOL_WIDE, STEM_POOL))
    b, k, i, j = sch.get_loops(wide)
    i_out, i_in = sch.split(i, [None, pooled_rows(int(sch.get(i).extent))])
    sch.reorder(b, i_out, k, i_in, j)
    chunk = sch.fuse(b, i_out)
    sch.compute_at(act, chunk)
    sch.compute_at(conv, chunk)
    channels, y, p, x, rc, ky, kx = sch.get_loops(conv)[1:]
    x_out, x_in = sch.split(x, [None, lanes])
    group, channel = sch.split(channels, [None, largest_divisor(int(sch.get(channels).extent), ACCUMULATORS)])
    sch.reorder(y, p, x_out, group, rc, ky, kx, channel, x_in)
    for loop in (channel, ky, kx):
        sch.unroll(loop)
    sch.vectorize(x_in)
    sch.reverse_compute_at(act, group)
    sch.vectorize(sch.get_loops(act)[-1])
    sch.vectorize(sch.split(sch.get_loops(wide)[-1], [None, lanes])[-1])
    sch.reverse_compute_at(pool, chunk)
    columns = sch.get_loops(pool)[-1]
    sch.vectorize(sch.split(columns, [None, power_of_two_divisor(int(sch.get(columns).extent), lanes)])[-1])
    # The padding: one padded row, then its columns four ways apart, row by row in parallel.
    sch.compute_at(padded, sch.get_loops(apart)[2])
    sch.decompose_padding(padded, sch.get_loops(padded)[3])
    sch.vectorize(sch.split(sch.get_loops(padded)[-1], [None, lanes])[-1])
    n, c, r, m, q = sch.get_loops(apart)
    sch.reorder(q, m)
    sch.unroll(m)
    sch.parallel(sch.fuse(n, c, r))
    sch.parallel(chunk)
    sch.decompose_reduction(conv, rc)


__all__ = ["StemPool", "conv_relu_maxpool", "output_size", "pooled_rows", "CONV", "POOL", "STEM_POOL"]
