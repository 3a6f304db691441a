"""Transformation: channel shuffles, and the splits and concats around them, stop being memory copies.

:mod:`.detect` finds the shuffles and describes every value around them as a
:class:`~.detect.ChannelMap` (which plane of which tensor each channel is).
Those values are then never computed. Their consumers read the planes where
they already are:

* a dense convolution (any kernel size) absorbs a permutation of one whole
  tensor exactly by permuting its weight's input channels: ``conv(P x, W) =
  conv(x, W P^-1)``. A grouped one does when every group maps to itself.
* otherwise a convolution reads its input through the gather
  (:mod:`.kernels`): a few contiguous runs of planes of a few tensors, or the
  shuffle formula itself. Its reduction order is free for a dense conv, so
  the runs are sorted by tensor and plane first (ShuffleNet v2's splits,
  shuffles and concats keep each tensor's channels in order, so every
  tensor contributes one run).
* a depthwise convolution reads a shuffled tensor through the shuffle
  index (one index per plane; ShuffleNet v1's grouped conv after it then
  reads plain planes). Other permutations it, and the per-channel
  operations after it (bias add, ReLU, pooling, a mean over H and W), run
  on the planes in the order they are stored, with their constants
  permuted; the permutation moves on to the next convolution (or the
  classifier's matrix, whose rows absorb it).
* anything else (a model output, a residual add) gets the value
  materialized once, with one ``take``: never more copies than before.

The result computes exactly what the original does (the same products,
summed in a different order).
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import numpy as np

from tvm_shuffle.schedules import detect, kernels
from tvm_shuffle.tvm_compat import Constant, relax, tvm

# A gather with more runs than this is left to one copy: each run costs a
# comparison per gathered input vector and a kernel argument.
MAX_RUNS = 16

PER_CHANNEL_UNARY = frozenset({"relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.tanh", "relax.nn.silu",
                               "relax.nn.gelu", "relax.negative", "relax.abs"})
PER_CHANNEL_BINARY = frozenset({"relax.add", "relax.subtract", "relax.multiply", "relax.divide"})
# Operators that treat every channel alone and keep it on axis 1 (pooling, spatial reductions).
PER_CHANNEL_SPATIAL = frozenset({"relax.nn.avg_pool2d", "relax.nn.max_pool2d", "relax.nn.adaptive_avg_pool2d"})
SPATIAL_REDUCTIONS = frozenset({"relax.mean", "relax.sum", "relax.max"})


@dataclasses.dataclass
class FusionReport:
    """What :func:`fuse_shuffles` did, for verbose output and tests."""

    shuffles: list = dataclasses.field(default_factory=list)  # detect.ShuffleMatch found
    stock: dict = dataclasses.field(default_factory=dict)  # ShuffleMatch -> why it still costs a copy
    absorbed: int = 0  # convolutions whose weights absorbed a permutation
    gathered: int = 0  # convolutions that read their input through a gather
    materialized: list = dataclasses.field(default_factory=list)  # "value for consumer" copies left
    note: str = ""

    @property
    def fused(self) -> int:
        return len(self.shuffles) - len(self.stock)

    def summary(self) -> str:
        """Human-readable, one fact per line."""
        if not self.shuffles:
            return f"channel shuffles: none found ({self.note or 'module unchanged'})"
        groups = sorted({m.groups for m in self.shuffles})
        lines = [f"channel shuffles: {len(self.shuffles)} found (groups {', '.join(map(str, groups))}), "
                 f"{self.fused} fused, {len(self.stock)} left as a copy"]
        if self.note:
            lines.append(f"  {self.note}")
        lines.append(f"  convolutions: {self.absorbed} absorbed a permutation in their weights, "
                     f"{self.gathered} read through a gather")
        reasons = collections.Counter(self.stock.values())
        for match, why in self.stock.items():
            if reasons[why] <= 2:
                lines.append(f"  copy kept: {match.describe()} ({why})")
        lines += [f"  copy kept: {count} shuffles ({why})" for why, count in reasons.items() if count > 2]
        return "\n".join(lines)


def _has_main(mod) -> bool:
    return any(gv.name_hint == "main" for gv in mod.get_global_vars())


def report_stock(mod: "tvm.IRModule", report: FusionReport) -> None:
    """Fill ``report`` for a module compiled with ``--shuffle stock``: shuffles found, none fused."""
    if _has_main(mod):
        report.shuffles = detect.find_shuffles(mod["main"])
    report.stock = {m: "--shuffle stock" for m in report.shuffles}


def fuse_shuffles(mod: "tvm.IRModule", report: FusionReport | None = None) -> "tvm.IRModule":
    """Remove channel shuffles (and v2's split/concat copies) from ``main``; see the module docstring.

    ``report``, when given, is filled in. A module without shuffles is
    returned as it is, and so is one whose ``main`` the rewrite does not
    handle (:func:`_not_rewritable`; the report says why).
    """
    report = report if report is not None else FusionReport()
    if not _has_main(mod):
        report.note = "no main function"
        return mod
    func = mod["main"]
    analysis = detect.analyze(func)
    report.shuffles = list(analysis.shuffles)
    if not analysis.shuffles:
        return mod
    why = _not_rewritable(func, analysis)
    if why is not None:
        report.note = f"left stock: {why}"
        report.stock = {m: why for m in analysis.shuffles}
        return mod
    functions = dict(_Rewriter(analysis, report).run(func).functions)  # main and its gathered kernels
    functions.update((gv, f) for gv, f in mod.functions.items() if gv.name_hint != "main")
    return tvm.IRModule(functions, attrs=mod.attrs)


def _not_rewritable(func: "relax.Function", analysis: detect.Analysis) -> str | None:
    """Why :class:`_Rewriter` cannot re-emit ``func``, or None when it can.

    It re-emits one dataflow block of plain bindings whose values are
    operator calls, tuples, tuple accesses and variables; anything else that
    the function still needs (control flow, a ``match_cast``, a call of
    another function, a bound constant) leaves the function stock.
    """
    blocks = func.body.blocks
    if len(blocks) != 1 or not isinstance(blocks[0], relax.DataflowBlock):
        return "main is not a single dataflow block"
    needed = _needed(func, analysis)
    for binding in blocks[0].bindings:
        if binding.var not in needed:
            continue
        value = binding.value
        if not isinstance(binding, relax.VarBinding):
            return f"main binds {binding.var.name} with a {type(binding).__name__}"
        if isinstance(value, relax.Call) and not isinstance(value.op, tvm.ir.Op):
            return f"main calls a function ({binding.var.name})"
        if not isinstance(value, (relax.Call, relax.TupleGetItem, relax.Var, relax.Tuple)):
            return f"main binds {binding.var.name} to a {type(value).__name__}"
    return None


def _needed(func: "relax.Function", analysis: detect.Analysis) -> set:
    """Bindings the rewritten function still evaluates: region values need their sources, not their ops."""
    values = {b.var: b.value for b in func.body.blocks[0].bindings}
    needed, stack = set(), list(relax.analysis.free_vars(func.body.body))
    while stack:
        var = stack.pop()
        if var in needed or var not in values:
            continue
        needed.add(var)
        if var in analysis.region:
            stack.extend(analysis.maps[var].sources)
        else:
            stack.extend(relax.analysis.free_vars(values[var]))
    return needed


class _Rewriter:
    """Re-emits ``main`` binding by binding; region values stay virtual (ChannelMaps over new vars)."""

    def __init__(self, analysis: detect.Analysis, report: FusionReport):
        self.analysis = analysis
        self.report = report
        self.bb = relax.BlockBuilder()
        self.new: dict = {}  # original var -> re-emitted var
        self.virtual: dict = {}  # original var -> ChannelMap over re-emitted vars
        self.copies: dict = {}  # original var -> its materialized var
        self.origin: dict = {}  # virtual var -> region vars it derives from (for the report)

    def run(self, func: "relax.Function") -> "tvm.IRModule":
        needed = _needed(func, self.analysis)
        attrs = {k: func.attrs[k] for k in func.attrs.keys()} if func.attrs is not None else None
        with self.bb.function("main", list(func.params), attrs=attrs):
            with self.bb.dataflow():
                for binding in func.body.blocks[0].bindings:
                    if binding.var in needed:
                        self._visit(binding)
                result = self._plain(func.body.body, "the function output")
                if isinstance(result, relax.Var) and isinstance(result, relax.DataflowVar):
                    result = self.bb.emit_output(result)
            self.bb.emit_func_output(result)
        return self.bb.get()

    # -- values ---------------------------------------------------------------

    def _visit(self, binding) -> None:
        var, value = binding.var, binding.value
        is_output = not isinstance(var, relax.DataflowVar)
        if var in self.analysis.region:
            self.virtual[var] = self._resolve(self.analysis.maps[var])
            self.origin[var] = {var}
        else:
            result = self._rewrite(var, value)
            if not isinstance(result, detect.ChannelMap):
                emit = self.bb.emit_output if is_output else self.bb.emit
                self.new[var] = emit(result, name_hint=var.name)
                return
            self.virtual[var] = result
        if is_output:
            self.new[var] = self.bb.emit_output(self._plain(var, "the function output"), name_hint=var.name)

    def _resolve(self, cmap: detect.ChannelMap) -> detect.ChannelMap:
        """A region value's map (over original values) in terms of the re-emitted ones."""
        cmap = cmap.compose(self.virtual)
        return detect.ChannelMap(tuple(self.new.get(v, v) for v in cmap.sources), cmap.source, cmap.plane)

    def _plain(self, expr, consumer: str):
        """``expr`` with every virtual value materialized (once) for ``consumer``."""
        if isinstance(expr, relax.Var):
            if expr in self.virtual:
                return self._materialize(expr, consumer)
            return self.new.get(expr, expr)
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self._plain(f, consumer) for f in expr.fields])
        return expr

    def _materialize(self, var, consumer: str):
        if var in self.copies:
            return self.copies[var]
        cmap = self.virtual[var]
        if cmap.is_identity():
            self.copies[var] = cmap.sources[0]
            return cmap.sources[0]
        if len(cmap.sources) == 1:
            data, index = cmap.sources[0], cmap.plane
        else:
            offsets = np.cumsum([0] + [cmap.source_channels(i) for i in range(len(cmap.sources) - 1)])
            data = self.bb.emit(relax.op.concat(list(cmap.sources), axis=1), name_hint=f"{var.name}_pieces")
            index = offsets[cmap.source] + cmap.plane
        copy = self.bb.emit(relax.op.take(data, relax.const(index.astype("int64")), axis=1), name_hint=var.name)
        self.copies[var] = copy
        self.report.materialized.append(f"{var.name} for {consumer}")
        for region_var in self.origin.get(var, ()):
            for match in self.analysis.shuffles_reaching(region_var):
                self.report.stock.setdefault(match, f"{var.name} is read by {consumer}")
        return copy

    # -- operators ------------------------------------------------------------

    def _rewrite(self, var, value):
        """An expression to emit for ``var``, or a ChannelMap when ``var`` stays virtual."""
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            name = value.op.name
            if name == "relax.nn.conv2d" and value.args[0] in self.virtual:
                result = self._conv2d(var, value)
                if result is not None:
                    return result
            if name in PER_CHANNEL_UNARY or name in PER_CHANNEL_BINARY:
                result = self._per_channel(var, value)
                if result is not None:
                    return result
            if name in PER_CHANNEL_SPATIAL or name in SPATIAL_REDUCTIONS:
                result = self._spatial(var, value)
                if result is not None:
                    return result
            if name == "relax.matmul" and value.args[0] in self.virtual:
                result = self._matmul(value)
                if result is not None:
                    return result
            args = [self._plain(a, name) for a in value.args]
            return relax.Call(value.op, args, value.attrs, value.ty_args)
        if isinstance(value, relax.TupleGetItem):
            return relax.TupleGetItem(self._plain(value.tuple_value, "a tuple access"), value.index)
        if isinstance(value, (relax.Var, relax.Tuple)):
            return self._plain(value, "a tuple")
        raise TypeError(f"binding of {type(value).__name__}: _not_rewritable lets none through")

    def _conv2d(self, var, call):
        attrs = call.attrs
        weight = call.args[1]
        if (not isinstance(weight, Constant) or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW"
                or attrs.out_layout != "NCHW"):
            return None
        cmap = self.virtual[call.args[0]]
        w = weight.value.numpy()
        out_channels, in_per_group = w.shape[:2]
        groups = int(attrs.groups)
        if in_per_group * groups != cmap.channels:
            return None
        if groups == 1:
            return self._dense(call, cmap, w)
        if groups == cmap.channels == out_channels:
            return self._depthwise(var, call, cmap, w)
        return self._grouped(call, cmap, w, groups)

    def _dense(self, call, cmap, w):
        order = np.lexsort((cmap.plane, cmap.source))
        return self._conv_over(call, cmap, order, w[:, order])

    def _grouped(self, call, cmap, w, groups):
        per_group = cmap.channels // groups
        out_per_group = w.shape[0] // groups
        channel = np.arange(cmap.channels)
        if cmap.is_permutation() and (cmap.plane // per_group == channel // per_group).all():
            # Each group's channels stay in the group: permute columns within it.
            new_w = np.empty_like(w)
            for g in range(groups):
                rows = slice(g * out_per_group, (g + 1) * out_per_group)
                cols = cmap.plane[g * per_group:(g + 1) * per_group] - g * per_group
                new_w[rows][:, cols] = w[rows]
            return self._emit_conv(call, cmap.sources[0], new_w, absorbed=True)
        shuffle = _as_shuffle(cmap)
        if shuffle is not None:
            return self._emit_gathered(call, cmap.sources, kernels.ShuffleIndex(0, shuffle, cmap.channels // shuffle), w)
        order = np.concatenate([g * per_group + np.lexsort((cmap.plane[block], cmap.source[block]))
                                for g, block in enumerate(np.split(channel, groups))])
        new_w = np.concatenate([w[g * out_per_group:(g + 1) * out_per_group][:, order[g * per_group:(g + 1) * per_group] - g * per_group]
                                for g in range(groups)])
        return self._conv_over(call, cmap, order, new_w)

    def _depthwise(self, var, call, cmap, w):
        shuffle = _as_shuffle(cmap)
        if shuffle is not None:
            # Undo a shuffle of one whole tensor right here: a depthwise conv
            # reads one input plane per output plane, so reading it through
            # the shuffle index costs nothing, and the (grouped) conv after it,
            # which could not absorb the permutation, reads plain planes.
            gather = kernels.ShuffleIndex(0, shuffle, cmap.channels // shuffle)
            return self._emit_gathered(call, cmap.sources, gather, w)
        order = np.lexsort((cmap.plane, cmap.source))
        result = self._conv_over(call, cmap, order, w[order])
        if result is None or (order == np.arange(len(order))).all():
            return result
        # Output plane j holds logical channel order[j]: the permutation moves on.
        out = self.bb.emit(result, name_hint=var.name)
        self.origin[var] = set().union(*(self.origin.get(v, set()) for v in self._region_inputs(call)))
        return detect.ChannelMap((out,), np.zeros(len(order), dtype=np.int64), np.argsort(order))

    def _conv_over(self, call, cmap, order, new_w):
        """Conv over channels ``order`` of ``cmap`` (weights already in that order), or None for a copy."""
        runs = _runs(cmap, order)
        if len(runs) > MAX_RUNS:
            return None
        if len(runs) == 1 and runs[0][3] == 0 and runs[0][1] == cmap.source_channels(runs[0][2]):
            return self._emit_conv(call, cmap.sources[runs[0][2]], new_w, absorbed=True)
        used = sorted({r[2] for r in runs})
        renumbered = tuple((start, stop, used.index(s), first) for start, stop, s, first in runs)
        return self._emit_gathered(call, [cmap.sources[i] for i in used], kernels.Segments(renumbered), new_w)

    def _emit_conv(self, call, data, w, *, absorbed: bool):
        self.report.absorbed += absorbed
        return relax.Call(call.op, [data, relax.const(w)], call.attrs, call.ty_args)

    def _emit_gathered(self, call, sources, gather, w):
        self.report.gathered += 1
        compute = functools.partial(kernels.gathered_conv2d, gather=gather, groups=int(call.attrs.groups),
                                    **conv_arguments(call.attrs, sources[0].ty.dtype))
        return self.bb.call_te(compute, *sources, relax.const(w), primfunc_name_hint=kernels.GATHERED_CONV)

    def _per_channel(self, var, call):
        """A per-channel op on a virtual one-tensor permutation: run it on the stored planes."""
        tensors = [a for a in call.args if isinstance(a, relax.Var)]
        if len(tensors) != 1 or tensors[0] not in self.virtual:
            return None
        cmap = self.virtual[tensors[0]]
        if not cmap.is_permutation():
            return None
        args = []
        for arg in call.args:
            if arg.same_as(tensors[0]):
                args.append(cmap.sources[0])
            elif isinstance(arg, Constant):
                permuted = _permute_constant(arg.value.numpy(), cmap.plane, len(_shape(tensors[0])))
                if permuted is None:
                    return None
                args.append(relax.const(permuted))
            else:
                args.append(arg)
        out = self.bb.emit(relax.Call(call.op, args, call.attrs, call.ty_args), name_hint=var.name)
        self.origin[var] = self.origin.get(tensors[0], set())
        return detect.ChannelMap((out,), cmap.source, cmap.plane)

    def _spatial(self, var, call):
        """Pooling or a reduction over H and W of a virtual permutation: the permutation moves on."""
        data = call.args[0]
        if data not in self.virtual or not self.virtual[data].is_permutation():
            return None
        attrs = call.attrs
        if call.op.name in SPATIAL_REDUCTIONS:
            if attrs.axis is None or any(int(a) % len(_shape(data)) < 2 for a in attrs.axis):
                return None
        elif getattr(attrs, "layout", "NCHW") != "NCHW" or getattr(attrs, "out_layout", "NCHW") != "NCHW":
            return None
        cmap = self.virtual[data]
        out = self.bb.emit(relax.Call(call.op, [cmap.sources[0], *call.args[1:]], call.attrs, call.ty_args),
                           name_hint=var.name)
        self.origin[var] = self.origin.get(data, set())
        return detect.ChannelMap((out,), cmap.source, cmap.plane)

    def _matmul(self, call):
        """``x @ W`` with ``x`` (N, C) a virtual permutation and ``W`` constant: permute W's rows."""
        cmap = self.virtual[call.args[0]]
        weight = call.args[1]
        if not cmap.is_permutation() or not isinstance(weight, Constant) or len(_shape(call.args[0])) != 2:
            return None
        w = weight.value.numpy()
        if w.ndim != 2 or w.shape[0] != cmap.channels:
            return None
        permuted = np.empty_like(w)
        permuted[cmap.plane] = w
        self.report.absorbed += 1
        return relax.Call(call.op, [cmap.sources[0], relax.const(permuted)], call.attrs, call.ty_args)

    def _region_inputs(self, call):
        return [a for a in call.args if isinstance(a, relax.Var) and a in self.origin]


def _runs(cmap: detect.ChannelMap, order: np.ndarray) -> list[tuple[int, int, int, int]]:
    """``(start, stop, source, first plane)`` of each contiguous run of ``cmap`` read in ``order``."""
    runs = []
    for j, c in enumerate(order):
        s, p = int(cmap.source[c]), int(cmap.plane[c])
        if runs and runs[-1][2] == s and runs[-1][3] + (j - runs[-1][0]) == p:
            runs[-1] = (runs[-1][0], j + 1, s, runs[-1][3])
        else:
            runs.append((j, j + 1, s, p))
    return runs


def _as_shuffle(cmap: detect.ChannelMap) -> int | None:
    """The group count if ``cmap`` is exactly a channel shuffle of one whole tensor."""
    if not cmap.is_permutation():
        return None
    for groups in range(2, cmap.channels):
        if cmap.channels % groups == 0 and (cmap.plane == detect.shuffle_permutation(cmap.channels, groups)).all():
            return groups
    return None


def _permute_constant(value: np.ndarray, plane: np.ndarray, rank: int) -> np.ndarray | None:
    """``value``, broadcast against a rank-``rank`` tensor with channels on axis 1, for channels stored
    at ``plane``; None if it does not broadcast per channel."""
    channel_from_end = rank - 1  # axis 1 counted from the end, as broadcasting aligns shapes
    if value.ndim > rank:
        return None
    if value.ndim < channel_from_end or value.shape[-channel_from_end] == 1:
        return value  # the same for every channel
    if value.shape[-channel_from_end] != len(plane):
        return None
    permuted = np.empty_like(value)
    index = [slice(None)] * value.ndim
    index[value.ndim - channel_from_end] = plane
    permuted[tuple(index)] = value
    return permuted


def _shape(expr) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape.values)


def conv_arguments(attrs, data_dtype: str) -> dict:
    """Keyword arguments of :mod:`.kernels`' convolutions from a Relax ``conv2d``'s attributes."""
    dtype = str(attrs.out_dtype) if attrs.out_dtype else ""
    return {"strides": _ints(attrs.strides), "padding": _ints(attrs.padding), "dilation": _ints(attrs.dilation),
            "out_dtype": dtype if dtype not in ("", "void") else data_dtype}


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)
